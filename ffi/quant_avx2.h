// AVX2 + FMA paths of the quantized kernels (same math as ffi/quant_formats.h, 8 lanes).
//
// Compiled without any global -march: every function carries
// __attribute__((target("avx2,fma,f16c"))) and ffi/quant_cpu.cc only calls them after
// __builtin_cpu_supports("avx2"), ("fma") and ("f16c") at run time.
// Dequantized weights are bit-identical to the scalar path (same float32 products;
// Q2_K's q*step + dmin is kept as two roundings); dot products differ from the scalar
// path only in summation order.
#ifndef HIERARCHOS_FFI_QUANT_AVX2_H_
#define HIERARCHOS_FFI_QUANT_AVX2_H_

#if defined(__x86_64__) || defined(__i386__)
#define HIERARCHOS_QUANT_HAVE_AVX2_PATH 1

#include <immintrin.h>

#include <cstdint>

#include "quant_formats.h"

#define HQ_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace hierarchos {
namespace quant {
namespace avx2 {

// Scale of a 32-weight block and the offset of its codes (GGUF: fp16 d; reference: f32 d).
// fp16 -> fp32 with the F16C instruction (exact, same value as the portable LoadF16).
HQ_AVX2 inline float LoadF16Fast(const uint8_t* p) {
  return _cvtsh_ss(static_cast<unsigned short>(p[0] | (p[1] << 8)));
}

template <int QT>
HQ_AVX2 inline float BlockScale(const uint8_t* blk) {
  if constexpr (QT == kQ4_0 || QT == kQ8_0) {
    return LoadF16Fast(blk);
  } else {
    return LoadF32(blk);
  }
}
template <int QT>
constexpr int CodesOffset() { return QT == kQ4_0 || QT == kQ8_0 ? 2 : 4; }

template <int QT>
HQ_AVX2 inline void DecodeCodes32(const uint8_t* blk, __m256* q);

// Decode one block into float vectors: 4 (32-weight formats) or 32 (Q2_K) __m256.
template <int QT>
HQ_AVX2 inline void DecodeBlock(const uint8_t* blk, __m256* w) {
  if constexpr (QT == kQ2_K) {  // GGUF: w = (d*sc) * q - dmin*m per 16-weight sub-block
    const float d = LoadF16Fast(blk + 80), dmin = LoadF16Fast(blk + 82);
    const __m256i three = _mm256_set1_epi32(3);
    for (int j = 0; j < 16; ++j) {
      const __m256 dl = _mm256_set1_ps(d * static_cast<float>(blk[j] & 0xF));
      const __m256 ml = _mm256_set1_ps(dmin * static_cast<float>(blk[j] >> 4));
      const uint8_t* q = blk + 16 + 32 * (j / 8) + 16 * (j % 2);
      const __m128i shift = _mm_cvtsi32_si128(2 * ((j % 8) / 2));
      for (int h = 0; h < 2; ++h) {
        const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * h)));
        __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(v, shift), three)), dl);
        __asm__("" : "+x"(p));  // two roundings (no FMA contraction), as the scalar path and ggml
        w[2 * j + h] = _mm256_sub_ps(p, ml);
      }
    }
    return;
  } else if constexpr (QT == kQ4_0 || QT == kQ8_0) {
    const __m256 d = _mm256_set1_ps(LoadF16Fast(blk));
    DecodeCodes32<QT>(blk, w);
    for (int i = 0; i < 4; ++i) w[i] = _mm256_mul_ps(w[i], d);
    return;
  }
  const __m256 d = _mm256_set1_ps(LoadF32(blk));
  if constexpr (QT == kRefQ8_0) {
    for (int i = 0; i < 4; ++i) {
      const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 4 + 8 * i));
      w[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)), d);
    }
  } else if constexpr (QT == kRefQ2_K) {
    const __m256 dmin = _mm256_set1_ps(LoadF32(blk + 4));
    // Element l of a 16-weight half sits in the half's 32-bit word at bit 8*(l/4) + 2*(l%4).
    const __m256i shift_lo = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i shift_hi = _mm256_setr_epi32(16, 18, 20, 22, 24, 26, 28, 30);
    const __m256i three = _mm256_set1_epi32(3);
    for (int half = 0; half < 16; ++half) {
      const unsigned s = (blk[8 + half / 2] >> (4 * (half % 2))) & 0xFu;
      const __m256 step = _mm256_mul_ps(_mm256_set1_ps(static_cast<float>(s) / 15.0f), d);
      uint32_t word;
      std::memcpy(&word, blk + 24 + 4 * half, 4);
      const __m256i v = _mm256_set1_epi32(static_cast<int>(word));
      const __m256i q0 = _mm256_and_si256(_mm256_srlv_epi32(v, shift_lo), three);
      const __m256i q1 = _mm256_and_si256(_mm256_srlv_epi32(v, shift_hi), three);
      __m256 p0 = _mm256_mul_ps(_mm256_cvtepi32_ps(q0), step);
      __m256 p1 = _mm256_mul_ps(_mm256_cvtepi32_ps(q1), step);
      // Keep q*step + dmin as two roundings (bit-equal to the scalar and NumPy paths):
      // the empty asm stops the compiler from contracting mul+add into an FMA.
      __asm__("" : "+x"(p0), "+x"(p1));
      w[2 * half] = _mm256_add_ps(p0, dmin);
      w[2 * half + 1] = _mm256_add_ps(p1, dmin);
    }
  } else {  // INT4 / Q4_0: code = (nibble ^ flip) - 8
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 4));
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(bytes, mask);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    const __m128i flip = _mm_set1_epi8(QT == kInt4 ? 8 : 0);
    const __m128i eight = _mm_set1_epi8(8);
    // unpack lo/hi back into element order 0..15 and 16..31
    const __m128i e0 = _mm_sub_epi8(_mm_xor_si128(_mm_unpacklo_epi8(lo, hi), flip), eight);
    const __m128i e1 = _mm_sub_epi8(_mm_xor_si128(_mm_unpackhi_epi8(lo, hi), flip), eight);
    w[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(e0)), d);
    w[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(e0, 8))), d);
    w[2] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(e1)), d);
    w[3] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(e1, 8))), d);
  }
}

HQ_AVX2 inline float HorizontalSum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// Codes of a 32-weight block as floats (4 vectors); the block scale is applied by the caller.
template <int QT>
HQ_AVX2 inline void DecodeCodes32(const uint8_t* blk, __m256* q) {
  constexpr int off = CodesOffset<QT>();
  if constexpr (QT == kRefQ8_0 || QT == kQ8_0) {
    for (int i = 0; i < 4; ++i) {
      const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + off + 8 * i));
      q[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
    }
  } else if constexpr (QT == kQ4_0) {  // GGUF: low nibbles are elements 0..15, high 16..31
    const __m256i mask = _mm256_set1_epi32(0xF), eight = _mm256_set1_epi32(8);
    const __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + off)));
    const __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + off + 8)));
    q[0] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v0, mask), eight));
    q[1] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v1, mask), eight));
    q[2] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(v0, 4), eight));
    q[3] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(v1, 4), eight));
  } else {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 4));
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(bytes, mask);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    const __m128i flip = _mm_set1_epi8(QT == kInt4 ? 8 : 0);
    const __m128i eight = _mm_set1_epi8(8);
    const __m128i e0 = _mm_sub_epi8(_mm_xor_si128(_mm_unpacklo_epi8(lo, hi), flip), eight);
    const __m128i e1 = _mm_sub_epi8(_mm_xor_si128(_mm_unpackhi_epi8(lo, hi), flip), eight);
    q[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(e0));
    q[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(e0, 8)));
    q[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(e1));
    q[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(e1, 8)));
  }
}

// Fused decode-and-dot of one packed row with one activation row. The 32-weight formats
// accumulate sum(a*q) per block and scale by d once per block (fewer multiplies than
// dequantize-then-dot; equal up to float32 rounding).
template <int QT>
HQ_AVX2 float DotRow(const float* a, const uint8_t* row, int64_t k) {
  constexpr int bw = BlockWeights(QT), bb = BlockBytes(QT), nv = bw / 8;
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  __m256 w[nv];
  if constexpr (QT != kRefQ2_K && QT != kQ2_K) {
    int64_t b = 0;
    for (; b < k / bw; ++b) {
      const uint8_t* blk = row + b * bb;
      DecodeCodes32<QT>(blk, w);
      const float* ab = a + b * bw;
      __m256 s = _mm256_mul_ps(_mm256_loadu_ps(ab), w[0]);
      s = _mm256_fmadd_ps(_mm256_loadu_ps(ab + 8), w[1], s);
      s = _mm256_fmadd_ps(_mm256_loadu_ps(ab + 16), w[2], s);
      s = _mm256_fmadd_ps(_mm256_loadu_ps(ab + 24), w[3], s);
      acc[b & 3] = _mm256_fmadd_ps(s, _mm256_set1_ps(BlockScale<QT>(blk)), acc[b & 3]);
    }
  } else {
    for (int64_t b = 0; b < k / bw; ++b) {
      DecodeBlock<QT>(row + b * bb, w);
      const float* ab = a + b * bw;
      for (int i = 0; i < nv; ++i) acc[i % 4] = _mm256_fmadd_ps(_mm256_loadu_ps(ab + 8 * i), w[i], acc[i % 4]);
    }
  }
  return HorizontalSum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}

// GGUF Q2_K fused dot: per 16-weight sub-block j, sum(a*w) = dl_j*sum(a*q) - ml_j*sum(a), so
// the codes are never scaled one by one (equal to dequantize-then-dot up to float32 rounding).
HQ_AVX2 inline float DotRowGgufQ2K(const float* a, const uint8_t* row, int64_t k) {
  const __m256i three = _mm256_set1_epi32(3);
  __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  __m256 accm[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t b = 0; b < k / 256; ++b) {
    const uint8_t* blk = row + 84 * b;
    const float* ab = a + 256 * b;
    const float d = LoadF16Fast(blk + 80), dmin = LoadF16Fast(blk + 82);
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        const __m128i shift = _mm_cvtsi32_si128(2 * s);
        for (int half = 0; half < 2; ++half) {  // sub-block j = 8h + 2s + half: elements 16j..16j+15
          const int j = 8 * h + 2 * s + half;
          const uint8_t* q = blk + 16 + 32 * h + 16 * half;
          const float* aj = ab + 16 * j;
          const __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)));
          const __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8)));
          const __m256 q0 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(v0, shift), three));
          const __m256 q1 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(v1, shift), three));
          const __m256 a0 = _mm256_loadu_ps(aj), a1 = _mm256_loadu_ps(aj + 8);
          const __m256 sq = _mm256_fmadd_ps(a1, q1, _mm256_mul_ps(a0, q0));
          const __m256 sa = _mm256_add_ps(a0, a1);
          acc[half] = _mm256_fmadd_ps(sq, _mm256_set1_ps(d * static_cast<float>(blk[j] & 0xF)), acc[half]);
          accm[half] = _mm256_fmadd_ps(sa, _mm256_set1_ps(dmin * static_cast<float>(blk[j] >> 4)), accm[half]);
        }
      }
    }
  }
  return HorizontalSum(_mm256_add_ps(acc[0], acc[1])) - HorizontalSum(_mm256_add_ps(accm[0], accm[1]));
}

// --- INT4 / Q4_0 decode dot on rearranged activations ----------------------------
//
// Byte i of a block holds elements 2i (low nibble) and 2i+1 (high). With the activations
// of each 32-block rearranged as [even elements of bytes 0..7, odd of bytes 0..7, even of
// bytes 8..15, odd of bytes 8..15], the nibbles need no shuffling: zero-extend 8 bytes to
// int32, mask / shift. Codes are (n ^ flip) - 8, so sum(a*code) = sum(a*(n ^ flip)) -
// 8*sum(a): the per-block activation sums are computed once per row.
inline void RearrangeForNibbles(const float* a, int64_t k, float* out, float* block_sums) {
  for (int64_t b = 0; b < k / 32; ++b) {
    const float* ab = a + 32 * b;
    float* ob = out + 32 * b;
    float sum = 0.0f;
    for (int half = 0; half < 2; ++half) {
      for (int i = 0; i < 8; ++i) {
        ob[16 * half + i] = ab[16 * half + 2 * i];
        ob[16 * half + 8 + i] = ab[16 * half + 2 * i + 1];
      }
    }
    for (int j = 0; j < 32; ++j) sum += ab[j];
    block_sums[b] = sum;
  }
}

template <int QT>
HQ_AVX2 float DotRowNibbles(const float* ar, const float* block_sums, const uint8_t* row, int64_t k) {
  static_assert(QT == kInt4 || QT == kRefQ4_0, "nibble formats only");
  const __m256i mask = _mm256_set1_epi32(0xF);
  const __m256i flip = _mm256_set1_epi32(8);
  __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  float corr = 0.0f;
  for (int64_t b = 0; b < k / 32; ++b) {
    const uint8_t* blk = row + 20 * b;
    const float d = LoadF32(blk);
    const __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 4)));
    const __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 12)));
    __m256i n[4] = {_mm256_and_si256(v0, mask), _mm256_srli_epi32(v0, 4), _mm256_and_si256(v1, mask),
                    _mm256_srli_epi32(v1, 4)};
    if constexpr (QT == kInt4) {
      for (int i = 0; i < 4; ++i) n[i] = _mm256_xor_si256(n[i], flip);
    }
    const float* ab = ar + 32 * b;
    __m256 s = _mm256_mul_ps(_mm256_loadu_ps(ab), _mm256_cvtepi32_ps(n[0]));
    s = _mm256_fmadd_ps(_mm256_loadu_ps(ab + 8), _mm256_cvtepi32_ps(n[1]), s);
    s = _mm256_fmadd_ps(_mm256_loadu_ps(ab + 16), _mm256_cvtepi32_ps(n[2]), s);
    s = _mm256_fmadd_ps(_mm256_loadu_ps(ab + 24), _mm256_cvtepi32_ps(n[3]), s);
    acc[b & 1] = _mm256_fmadd_ps(s, _mm256_set1_ps(d), acc[b & 1]);
    corr += d * block_sums[b];
  }
  return HorizontalSum(_mm256_add_ps(acc[0], acc[1])) - 8.0f * corr;
}

template <int QT>
HQ_AVX2 void DequantizeRow(const uint8_t* row, int64_t k, float* out) {
  constexpr int bw = BlockWeights(QT), bb = BlockBytes(QT), nv = bw / 8;
  __m256 w[nv];
  for (int64_t b = 0; b < k / bw; ++b) {
    DecodeBlock<QT>(row + b * bb, w);
    for (int i = 0; i < nv; ++i) _mm256_storeu_ps(out + b * bw + 8 * i, w[i]);
  }
}

// k is a multiple of 8 here (a padded row width). Same summation order as one lane of
// DotF32x4, so a row's result does not depend on how rows were grouped (thread count).
HQ_AVX2 inline float DotF32(const float* a, const float* w, int64_t k) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t j = 0; j < k; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(w + j), acc);
  return HorizontalSum(acc);
}

// Four dot products of one activation row with four consecutive dequantized rows
// (w + r*k): each activation vector is loaded once for four FMAs.
HQ_AVX2 inline void DotF32x4(const float* a, const float* w, int64_t k, float* out) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
         acc3 = _mm256_setzero_ps();
  for (int64_t j = 0; j < k; j += 8) {
    const __m256 av = _mm256_loadu_ps(a + j);
    acc0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(w + j), acc0);
    acc1 = _mm256_fmadd_ps(av, _mm256_loadu_ps(w + k + j), acc1);
    acc2 = _mm256_fmadd_ps(av, _mm256_loadu_ps(w + 2 * k + j), acc2);
    acc3 = _mm256_fmadd_ps(av, _mm256_loadu_ps(w + 3 * k + j), acc3);
  }
  out[0] = HorizontalSum(acc0);
  out[1] = HorizontalSum(acc1);
  out[2] = HorizontalSum(acc2);
  out[3] = HorizontalSum(acc3);
}

}  // namespace avx2
}  // namespace quant
}  // namespace hierarchos

#undef HQ_AVX2
#endif  // x86

#endif  // HIERARCHOS_FFI_QUANT_AVX2_H_
