// The RWKV-7 WKV state step of the Hierarchos cell (spec/model.md §3, step 11),
// forward and backward, shared by the CPU (wkv_cpu.cc) and CUDA (wkv_cuda.cu)
// XLA FFI targets. Header-only; every function is HOST_DEVICE (see
// hierarchos_math.h) and free of host-only library calls.
//
// One head of size N (value index i = row, key index j = column), float32:
//   d_j   = exp(-exp(clip(w_j, -60, 30)))          decay along the key axis
//   s_i   = sum_j S_ij a_j                          in-context read (old state)
//   S'_ij = S_ij d_j + s_i b_j + v_i k_j            new state (unclamped)
//   y_i   = sum_j S'_ij r_j                         readout of the new state
// The model passes a = -kk and b = kk * a_gate, and clips the packed state to
// +-50 afterwards (outside the kernel, so the readout sees the unclamped S').
//
// Backward, given the cotangents gy (of y) and gS' (of S'):
//   G_ij  = gS'_ij + gy_i r_j                       total cotangent of S'_ij
//   gs_i  = sum_j G_ij b_j
//   gS_ij = G_ij d_j + gs_i a_j
//   gr_j  = sum_i S'_ij gy_i      gv_i = sum_j G_ij k_j
//   gk_j  = sum_i G_ij v_i        gb_j = sum_i G_ij s_i
//   ga_j  = sum_i gs_i S_ij       gw_j = (sum_i G_ij S_ij) * dd_j/dw_j
//
// Never build with fast-math flags: the clip must see NaN/Inf as IEEE values.
#ifndef HIERARCHOS_FFI_WKV_MATH_H_
#define HIERARCHOS_FFI_WKV_MATH_H_

#include "hierarchos_math.h"

#if defined(__CUDACC__)
#define WKV_EXPF(x) expf(x)
#else
#include <cmath>
#define WKV_EXPF(x) std::exp(x)
#endif

namespace hierarchos {
namespace wkv {

constexpr float kDecayClipLo = -60.0f;
constexpr float kDecayClipHi = 30.0f;

// jnp.clip(w, lo, hi) = min(max(w, lo), hi), NaN propagating.
HOST_DEVICE inline float clip_w(float w) {
  float c = (w < kDecayClipLo) ? kDecayClipLo : w;
  return (c > kDecayClipHi) ? kDecayClipHi : c;
}

// d = exp(-exp(clip(w))).
HOST_DEVICE inline float decay(float w) { return WKV_EXPF(-WKV_EXPF(clip_w(w))); }

// dd/dw at w, given d = decay(w): -d * exp(w) inside the clip range, 0 outside
// (w exactly on a bound counts as inside, as for jnp.clip's min/max pair).
HOST_DEVICE inline float decay_grad(float w, float d) {
  if (w < kDecayClipLo || w > kDecayClipHi) return 0.0f;
  return -d * WKV_EXPF(w);
}

// S'_ij = S_ij d_j + s_i b_j + v_i k_j, evaluated left to right as in the oracle.
HOST_DEVICE inline float update(float s_ij, float d_j, float s_i, float b_j, float v_i,
                                float k_j) {
  return s_ij * d_j + s_i * b_j + v_i * k_j;
}

// G_ij = gS'_ij + gy_i r_j.
HOST_DEVICE inline float total_grad(float gs_out_ij, float gy_i, float r_j) {
  return gs_out_ij + gy_i * r_j;
}

// gS_ij = G_ij d_j + gs_i a_j.
HOST_DEVICE inline float state_grad(float g_ij, float d_j, float gs_i, float a_j) {
  return g_ij * d_j + gs_i * a_j;
}

// sum_j x_j y_j over n terms with 8 interleaved partial sums (a fixed order, so
// the result is deterministic; lets a host compiler vectorise the loop).
HOST_DEVICE inline float dot(int n, const float* x, const float* y) {
  float p[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int u = 0; u < 8; ++u) p[u] += x[j + u] * y[j + u];
  }
  for (; j < n; ++j) p[j & 7] += x[j] * y[j];
  return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

// Forward of one head, serially (the CPU target; a reference for the device).
// `d` is scratch of n floats. S and S_out are [n, n] row-major and may not alias.
HOST_DEVICE inline void forward_head(int n, const float* S, const float* r, const float* w,
                                     const float* k, const float* v, const float* a,
                                     const float* b, float* d, float* S_out, float* y) {
  for (int j = 0; j < n; ++j) d[j] = decay(w[j]);
  for (int i = 0; i < n; ++i) {
    const float* row = S + static_cast<long long>(i) * n;
    float* out = S_out + static_cast<long long>(i) * n;
    const float s_i = dot(n, row, a);
    const float v_i = v[i];
    for (int j = 0; j < n; ++j) out[j] = update(row[j], d[j], s_i, b[j], v_i, k[j]);
    y[i] = dot(n, out, r);
  }
}

// Backward of one head, serially. `d` and `t` are scratch of n floats each.
// Writes every output (gS is [n, n]; the rest are [n]).
HOST_DEVICE inline void backward_head(int n, const float* S, const float* r, const float* w,
                                      const float* k, const float* v, const float* a,
                                      const float* b, const float* gy, const float* gS_out,
                                      float* d, float* t, float* gS, float* gr, float* gw,
                                      float* gk, float* gv, float* ga, float* gb) {
  for (int j = 0; j < n; ++j) {
    d[j] = decay(w[j]);
    gr[j] = gw[j] = gk[j] = ga[j] = gb[j] = 0.0f;
  }
  for (int i = 0; i < n; ++i) {
    const long long off = static_cast<long long>(i) * n;
    const float* row = S + off;
    const float* g_out = gS_out + off;
    const float s_i = dot(n, row, a);
    const float v_i = v[i];
    const float gy_i = gy[i];
    float* g_row = gS + off;
    // t_j = G_ij for this row; column sums accumulate over i in order.
    for (int j = 0; j < n; ++j) {
      const float g = total_grad(g_out[j], gy_i, r[j]);
      t[j] = g;
      gr[j] += update(row[j], d[j], s_i, b[j], v_i, k[j]) * gy_i;
      gw[j] += g * row[j];  // sum_i G_ij S_ij, times dd/dw below
      gb[j] += g * s_i;
      gk[j] += g * v_i;
    }
    const float gs_i = dot(n, t, b);
    gv[i] = dot(n, t, k);
    for (int j = 0; j < n; ++j) {
      g_row[j] = state_grad(t[j], d[j], gs_i, a[j]);
      ga[j] += gs_i * row[j];
    }
  }
  for (int j = 0; j < n; ++j) gw[j] *= decay_grad(w[j], d[j]);
}

}  // namespace wkv
}  // namespace hierarchos

#undef WKV_EXPF

#endif  // HIERARCHOS_FFI_WKV_MATH_H_
