// Quantization block formats (scalar math shared by every path of ffi/quant_cpu.cc).
// Bit-exact with the NumPy implementations in hierarchos_jax/quant/formats.py and
// hierarchos_jax/quant/gguf_blocks.py.
//
// GGUF (ggml / llama.cpp) layouts, quantized as ggml's reference quantizers do (float32
// one operation at a time, nearest_int = round half to even, fp16 round to nearest even):
//   Q4_0  32 w / 18 B: f16 d, 16 B nibbles (element j low, j+16 high), nibble = code + 8
//   Q8_0  32 w / 34 B: f16 d, 32 x int8
//   Q2_K 256 w / 84 B: scales[16] (4-bit scale | 4-bit min << 4 per 16 weights), qs[64]
//                      (element 128h + 32s + l: byte 32h + l, bits 2s), f16 d, f16 dmin
// Reference (spec/quantization.md §2) layouts, float32 scales, float64 least-squares sums
// in element order, C roundf:
//   INT4      32 w / 20 B: f32 d, 16 B nibbles (element 2i low, 2i+1 high), two's complement
//   REF_Q4_0  32 w / 20 B: f32 d, 16 B nibbles (same pairing), nibble = code + 8
//   REF_Q8_0  32 w / 36 B: f32 d, 32 x int8
//   REF_Q2_K 256 w / 88 B: f32 d (range), f32 dmin (block minimum), 16 scale bytes (8 used,
//                      low/high nibble = 4-bit scale of the first/second 16 of a group of
//                      32), 64 B of 2-bit codes (element e: byte e/4, bits 2(e%4))
#ifndef HIERARCHOS_FFI_QUANT_FORMATS_H_
#define HIERARCHOS_FFI_QUANT_FORMATS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace hierarchos {
namespace quant {

enum QType : int { kInt4 = 0, kRefQ4_0 = 1, kRefQ8_0 = 2, kRefQ2_K = 3, kQ4_0 = 4, kQ8_0 = 5, kQ2_K = 6 };
constexpr int kNumQTypes = 7;

constexpr int BlockWeights(int qt) { return qt == kRefQ2_K || qt == kQ2_K ? 256 : 32; }
constexpr int BlockBytes(int qt) {
  return qt == kRefQ2_K ? 88 : qt == kRefQ8_0 ? 36 : qt == kQ4_0 ? 18 : qt == kQ8_0 ? 34 : qt == kQ2_K ? 84 : 20;
}
inline bool ValidQType(int64_t qt) { return qt >= 0 && qt < kNumQTypes; }

inline const char* QTypeName(int qt) {
  switch (qt) {
    case kInt4: return "INT4";
    case kRefQ4_0: return "REF_Q4_0";
    case kRefQ8_0: return "REF_Q8_0";
    case kRefQ2_K: return "REF_Q2_K";
    case kQ4_0: return "Q4_0";
    case kQ8_0: return "Q8_0";
    case kQ2_K: return "Q2_K";
    default: return "?";
  }
}

inline int QTypeFromName(const char* s) {
  for (int qt = 0; qt < kNumQTypes; ++qt) {
    if (std::strcmp(s, QTypeName(qt)) == 0) return qt;
  }
  return -1;
}

inline float LoadF32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, sizeof f);
  return f;
}

inline void StoreF32(uint8_t* p, float f) { std::memcpy(p, &f, sizeof f); }

// IEEE half <-> float, portable bit manipulation (round to nearest even, as F16C / NumPy).
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      man <<= 1;
    } while ((man & 0x400u) == 0);
    bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((man & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) return sign | (ax > 0x7F800000u ? 0x7E00u : 0x7C00u);  // nan / inf
  if (ax >= 0x477FF000u) return sign | 0x7C00u;  // rounds to >= 65520: overflow to inf
  if (ax < 0x38800000u) {                          // below the smallest normal half: subnormal
    if (ax < 0x33000000u) return sign;             // < 2^-25 rounds to zero
    const uint32_t e = ax >> 23, man = (ax & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - e;                // 14..24 bits dropped
    uint32_t h = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return sign | static_cast<uint16_t>(h);
  }
  uint32_t h = ((ax >> 13) - (112u << 10));
  const uint32_t rem = ax & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // carry may bump the exponent: correct
  return sign | static_cast<uint16_t>(h);
}

inline float LoadF16(const uint8_t* p) { return HalfToFloat(static_cast<uint16_t>(p[0] | (p[1] << 8))); }
inline void StoreF16(uint8_t* p, float f) {
  const uint16_t h = FloatToHalf(f);
  p[0] = static_cast<uint8_t>(h & 0xFF);
  p[1] = static_cast<uint8_t>(h >> 8);
}

// ggml's nearest_int: round half to even. Adding 1.5 * 2^23 rounds to an integer in the
// float addition itself (exact for |v| < 2^22, no libm call); larger values use nearbyint.
inline int NearestInt(float v) {
  if (!(std::fabs(v) < 4194304.0f)) return static_cast<int>(std::nearbyint(v));
  const float biased = v + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &biased, sizeof bits);
  return (bits & 0x007FFFFF) - 0x00400000;
}

// --- quantize one block ------------------------------------------------------

// INT4 / Q4_0 (levels 8, codes -8..7) and Q8_0 (levels 127, codes -127..127).
inline void QuantizeBlockSymmetric(const float* x, uint8_t* out, int qt) {
  const int n = 32;
  const bool q8 = qt == kRefQ8_0;
  const float levels = q8 ? 127.0f : 8.0f, lo = q8 ? -127.0f : -8.0f, hi = q8 ? 127.0f : 7.0f;
  float amax = 0.0f;
  for (int j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d0 = amax == 0.0f ? 1.0f : amax / levels;
  const float r = 1.0f / d0;
  int q[32];
  double sxq = 0.0, sqq = 0.0;
  for (int j = 0; j < n; ++j) {
    q[j] = static_cast<int>(std::roundf(std::max(lo, std::min(hi, x[j] * r))));
    sxq += static_cast<double>(x[j]) * q[j];
    sqq += static_cast<double>(q[j]) * q[j];
  }
  StoreF32(out, sqq > 1e-12 ? static_cast<float>(sxq / sqq) : d0);
  uint8_t* qs = out + 4;
  if (q8) {
    for (int j = 0; j < n; ++j) qs[j] = static_cast<uint8_t>(static_cast<int8_t>(q[j]));
    return;
  }
  const int bias = qt == kRefQ4_0 ? 8 : 0;
  for (int i = 0; i < n / 2; ++i) {
    const unsigned a = static_cast<unsigned>(q[2 * i] + bias) & 0xFu;
    const unsigned b = static_cast<unsigned>(q[2 * i + 1] + bias) & 0xFu;
    qs[i] = static_cast<uint8_t>(a | (b << 4));
  }
}

inline void QuantizeBlockQ2K(const float* x, uint8_t* out) {
  float mn = x[0], mx = x[0];
  for (int j = 1; j < 256; ++j) {
    mn = std::min(mn, x[j]);
    mx = std::max(mx, x[j]);
  }
  const float d = mx - mn;
  const float r = d != 0.0f ? 1.0f / d : 0.0f;
  std::memset(out, 0, 88);
  StoreF32(out, d);
  StoreF32(out + 4, mn);
  uint8_t* scales = out + 8;
  uint8_t* qs = out + 24;
  for (int half = 0; half < 16; ++half) {
    const float* xh = x + 16 * half;
    float m = 1e-12f;
    for (int l = 0; l < 16; ++l) m = std::max(m, std::fabs(xh[l] - mn));
    const unsigned s = static_cast<unsigned>(std::roundf(std::min(15.0f, (m / 3.0f) * r * 15.0f)));
    scales[half / 2] |= static_cast<uint8_t>(s << (4 * (half % 2)));
    const float step = (static_cast<float>(s) / 15.0f) * d;
    const float rho = step > 1e-12f ? 1.0f / step : 0.0f;
    for (int l = 0; l < 16; ++l) {
      const unsigned q = static_cast<unsigned>(std::roundf(std::max(0.0f, std::min(3.0f, (xh[l] - mn) * rho))));
      const int e = 16 * half + l;
      qs[e / 4] |= static_cast<uint8_t>(q << (2 * (e % 4)));
    }
  }
}

// --- GGUF blocks -----------------------------------------------------------------

// ggml block_q4_0: d = (element of largest magnitude, first one) / -8; nibble =
// min(15, trunc(x/d + 8.5)) with the float32 d; element j low nibble, j + 16 high.
inline void QuantizeBlockGgufQ4_0(const float* x, uint8_t* out) {
  float amax = 0.0f, vmax = 0.0f;
  for (int j = 0; j < 32; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      vmax = x[j];
    }
  }
  const float d = vmax / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  StoreF16(out, d);
  for (int j = 0; j < 16; ++j) {
    const int a = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
    const int b = std::min(15, static_cast<int>(static_cast<int8_t>(x[j + 16] * id + 8.5f)));
    out[2 + j] = static_cast<uint8_t>(a | (b << 4));
  }
}

// ggml block_q8_0: d = max|x| / 127, q = roundf(x / d).
inline void QuantizeBlockGgufQ8_0(const float* x, uint8_t* out) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  StoreF16(out, d);
  for (int j = 0; j < 32; ++j) out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(x[j] * id)));
}

// Weighted affine fit of one sub-block (ggml make_qkx2_quants; weights |x|, absolute-error
// loss): codes L in 0..nmax, returns the scale, *neg_min = -min (min <= 0).
inline float FitScaleMin(const float* x, int n, int nmax, uint8_t* L, float* neg_min) {
  constexpr float kRMin = -0.5f, kRDelta = 0.1f;
  constexpr int kSteps = 15;
  float w[16];
  uint8_t aux[16];
  float lo = x[0], hi = x[0];
  w[0] = std::fabs(x[0]);
  float sum_w = w[0], sum_x = w[0] * x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    w[i] = std::fabs(x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (lo > 0.0f) lo = 0.0f;
  if (hi == lo) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *neg_min = -lo;
    return 0.0f;
  }
  float mn = lo;
  float iscale = static_cast<float>(nmax) / (hi - mn);
  float scale = 1.0f / iscale;
  float best = 0.0f;
  for (int i = 0; i < n; ++i) {
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, NearestInt(iscale * (x[i] - mn)))));
    const float p = scale * static_cast<float>(L[i]);
    best += w[i] * std::fabs(p + mn - x[i]);
  }
  for (int step = 0; step <= kSteps; ++step) {
    const float trial = kRMin + kRDelta * static_cast<float>(step);
    iscale = (trial + static_cast<float>(nmax)) / (hi - mn);  // mn: the best fit so far
    float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(0, std::min(nmax, NearestInt(iscale * (x[i] - mn))));
      aux[i] = static_cast<uint8_t>(l);
      const float wl = w[i] * static_cast<float>(l);
      sum_l += wl;
      sum_l2 += wl * static_cast<float>(l);
      sum_xl += wl * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (!(det > 0.0f)) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (this_min > 0.0f) {
      this_min = 0.0f;
      this_scale = sum_xl / sum_l2;
    }
    float err = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float p = this_scale * static_cast<float>(aux[i]);
      err += w[i] * std::fabs(p + this_min - x[i]);
    }
    if (err < best) {
      for (int i = 0; i < n; ++i) L[i] = aux[i];
      best = err;
      scale = this_scale;
      mn = this_min;
    }
  }
  *neg_min = -mn;
  return scale;
}

// ggml block_q2_K (quantize_row_q2_K_ref): per 16-weight sub-block an affine fit, its
// scale and -min quantized to 4 bits against the block's largest (fp16 d, dmin), then the
// codes recomputed from the stored values.
inline void QuantizeBlockGgufQ2K(const float* x, uint8_t* out) {
  uint8_t L[256];
  float scales[16], mins[16];
  float max_scale = 0.0f, max_min = 0.0f;
  for (int j = 0; j < 16; ++j) {
    scales[j] = FitScaleMin(x + 16 * j, 16, 3, L + 16 * j, &mins[j]);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  uint8_t* sc = out;
  uint8_t* qs = out + 16;
  if (max_scale > 0.0f) {
    const float inv = 15.0f / max_scale;
    for (int j = 0; j < 16; ++j) sc[j] = static_cast<uint8_t>(NearestInt(inv * scales[j]));
    StoreF16(out + 80, max_scale / 15.0f);
  } else {
    for (int j = 0; j < 16; ++j) sc[j] = 0;
    StoreF16(out + 80, 0.0f);
  }
  if (max_min > 0.0f) {
    const float inv = 15.0f / max_min;
    for (int j = 0; j < 16; ++j) sc[j] = static_cast<uint8_t>(sc[j] | (NearestInt(inv * mins[j]) << 4));
    StoreF16(out + 82, max_min / 15.0f);
  } else {
    StoreF16(out + 82, 0.0f);
  }
  const float d = LoadF16(out + 80), dmin = LoadF16(out + 82);
  for (int j = 0; j < 16; ++j) {
    const float dl = d * static_cast<float>(sc[j] & 0xF);
    if (dl == 0.0f) continue;
    const float ml = dmin * static_cast<float>(sc[j] >> 4);
    for (int i = 0; i < 16; ++i) {
      L[16 * j + i] = static_cast<uint8_t>(std::max(0, std::min(3, NearestInt((x[16 * j + i] + ml) / dl))));
    }
  }
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      const uint8_t* e = L + 128 * h + l;
      qs[32 * h + l] = static_cast<uint8_t>(e[0] | (e[32] << 2) | (e[64] << 4) | (e[96] << 6));
    }
  }
}

inline void QuantizeRow(const float* x, int64_t k, uint8_t* out, int qt) {
  const int bw = BlockWeights(qt), bb = BlockBytes(qt);
  for (int64_t b = 0; b < k / bw; ++b) {
    if (qt == kRefQ2_K) {
      QuantizeBlockQ2K(x + b * bw, out + b * bb);
    } else if (qt == kQ4_0) {
      QuantizeBlockGgufQ4_0(x + b * bw, out + b * bb);
    } else if (qt == kQ8_0) {
      QuantizeBlockGgufQ8_0(x + b * bw, out + b * bb);
    } else if (qt == kQ2_K) {
      QuantizeBlockGgufQ2K(x + b * bw, out + b * bb);
    } else {
      QuantizeBlockSymmetric(x + b * bw, out + b * bb, qt);
    }
  }
}

// --- dequantize (scalar) -----------------------------------------------------

inline void DequantizeBlock(const uint8_t* blk, int qt, float* w) {
  if (qt == kQ4_0) {
    const float d = LoadF16(blk);
    for (int j = 0; j < 16; ++j) {
      w[j] = static_cast<float>((blk[2 + j] & 0xF) - 8) * d;
      w[j + 16] = static_cast<float>((blk[2 + j] >> 4) - 8) * d;
    }
    return;
  }
  if (qt == kQ8_0) {
    const float d = LoadF16(blk);
    for (int j = 0; j < 32; ++j) w[j] = static_cast<float>(static_cast<int8_t>(blk[2 + j])) * d;
    return;
  }
  if (qt == kQ2_K) {
    const float d = LoadF16(blk + 80), dmin = LoadF16(blk + 82);
    for (int j = 0; j < 16; ++j) {  // sub-block j: 16 bytes from 32*(j/8) + 16*(j%2), shift 2*((j%8)/2)
      const float dl = d * static_cast<float>(blk[j] & 0xF), ml = dmin * static_cast<float>(blk[j] >> 4);
      const uint8_t* q = blk + 16 + 32 * (j / 8) + 16 * (j % 2);
      const int shift = 2 * ((j % 8) / 2);
      for (int l = 0; l < 16; ++l) {
        const float p = dl * static_cast<float>((q[l] >> shift) & 3);  // two roundings, as ggml
        w[16 * j + l] = p - ml;
      }
    }
    return;
  }
  const float d = LoadF32(blk);
  if (qt == kRefQ8_0) {
    for (int j = 0; j < 32; ++j) w[j] = static_cast<float>(static_cast<int8_t>(blk[4 + j])) * d;
  } else if (qt == kRefQ2_K) {
    const float dmin = LoadF32(blk + 4);
    for (int half = 0; half < 16; ++half) {
      const unsigned s = (blk[8 + half / 2] >> (4 * (half % 2))) & 0xFu;
      const float step = (static_cast<float>(s) / 15.0f) * d;
      for (int l = 0; l < 16; ++l) {
        const int e = 16 * half + l;
        const unsigned q = (blk[24 + e / 4] >> (2 * (e % 4))) & 3u;
        const float qs = static_cast<float>(q) * step;  // two roundings, as the reference
        w[e] = qs + dmin;
      }
    }
  } else {
    const int flip = qt == kInt4 ? 8 : 0;  // sext4(n) = (n ^ 8) - 8; Q4_0: n - 8
    for (int i = 0; i < 16; ++i) {
      const int byte = blk[4 + i];
      w[2 * i] = static_cast<float>(((byte & 0xF) ^ flip) - 8) * d;
      w[2 * i + 1] = static_cast<float>(((byte >> 4) ^ flip) - 8) * d;
    }
  }
}

inline void DequantizeRowScalar(const uint8_t* row, int64_t k, int qt, float* out) {
  const int bw = BlockWeights(qt), bb = BlockBytes(qt);
  for (int64_t b = 0; b < k / bw; ++b) DequantizeBlock(row + b * bb, qt, out + b * bw);
}

// sum_j a_j * w_j over one packed row (weights dequantized block by block).
inline float DotRowScalar(const float* a, const uint8_t* row, int64_t k, int qt) {
  const int bw = BlockWeights(qt), bb = BlockBytes(qt);
  float w[256];
  float sum = 0.0f;
  for (int64_t b = 0; b < k / bw; ++b) {
    DequantizeBlock(row + b * bb, qt, w);
    const float* ab = a + b * bw;
    for (int j = 0; j < bw; ++j) sum += ab[j] * w[j];
  }
  return sum;
}

inline float DotF32Scalar(const float* a, const float* w, int64_t k) {
  float sum = 0.0f;
  for (int64_t j = 0; j < k; ++j) sum += a[j] * w[j];
  return sum;
}

inline void DotF32x4Scalar(const float* a, const float* w, int64_t k, float* out) {
  for (int r = 0; r < 4; ++r) out[r] = DotF32Scalar(a, w + r * k, k);
}

}  // namespace quant
}  // namespace hierarchos

#endif  // HIERARCHOS_FFI_QUANT_FORMATS_H_
