// Block formats of Hierarchos v0.21 quantization (spec/quantization.md §2): portable
// scalar math shared by every path of ffi/quant_cpu.cc. Bit-exact with the NumPy
// reference in hierarchos_jax/quant/formats.py: float32 per-element arithmetic, float64
// least-squares sums in element order, C roundf (half away from zero).
//
// Layouts (packed C structs, little-endian, rows = consecutive blocks):
//   INT4  32 w / 20 B: f32 d, 16 B nibbles (element 2i low, 2i+1 high), two's complement
//   Q4_0  32 w / 20 B: f32 d, 16 B nibbles (same pairing), nibble = code + 8
//   Q8_0  32 w / 36 B: f32 d, 32 x int8
//   Q2_K 256 w / 88 B: f32 d (range), f32 dmin (block minimum), 16 scale bytes (8 used,
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

enum QType : int { kInt4 = 0, kQ4_0 = 1, kQ8_0 = 2, kQ2_K = 3 };
constexpr int kNumQTypes = 4;

constexpr int BlockWeights(int qt) { return qt == kQ2_K ? 256 : 32; }
constexpr int BlockBytes(int qt) { return qt == kQ2_K ? 88 : (qt == kQ8_0 ? 36 : 20); }
inline bool ValidQType(int64_t qt) { return qt >= 0 && qt < kNumQTypes; }

inline const char* QTypeName(int qt) {
  switch (qt) {
    case kInt4: return "INT4";
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

// --- quantize one block ------------------------------------------------------

// INT4 / Q4_0 (levels 8, codes -8..7) and Q8_0 (levels 127, codes -127..127).
inline void QuantizeBlockSymmetric(const float* x, uint8_t* out, int qt) {
  const int n = 32;
  const bool q8 = qt == kQ8_0;
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
  const int bias = qt == kQ4_0 ? 8 : 0;
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

inline void QuantizeRow(const float* x, int64_t k, uint8_t* out, int qt) {
  const int bw = BlockWeights(qt), bb = BlockBytes(qt);
  for (int64_t b = 0; b < k / bw; ++b) {
    if (qt == kQ2_K) {
      QuantizeBlockQ2K(x + b * bw, out + b * bb);
    } else {
      QuantizeBlockSymmetric(x + b * bw, out + b * bb, qt);
    }
  }
}

// --- dequantize (scalar) -----------------------------------------------------

inline void DequantizeBlock(const uint8_t* blk, int qt, float* w) {
  const float d = LoadF32(blk);
  if (qt == kQ8_0) {
    for (int j = 0; j < 32; ++j) w[j] = static_cast<float>(static_cast<int8_t>(blk[4 + j])) * d;
  } else if (qt == kQ2_K) {
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
