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
// The model passes a = -kk and b = kk * a_gate. The state lives in the cell's
// packed layout: row i of a head is [slot0, slot1, slot2, S_i0 .. S_i(N-1)]
// (stride N + 3); the kernel reads S from columns 3.., writes clip(S', +-m) there
// (the readout uses the unclamped S') and copies the three slots unchanged (the
// cell overwrites them afterwards with its new token-shift values).
//
// Backward, given the cotangents gy (of y) and gS' (of S'):
//   G_ij  = gS'_ij + gy_i r_j                       total cotangent of S'_ij
//   gs_i  = sum_j G_ij b_j
//   gS_ij = G_ij d_j + gs_i a_j
//   gr_j  = sum_i S'_ij gy_i      gv_i = sum_j G_ij k_j
//   gk_j  = sum_i G_ij v_i        gb_j = sum_i G_ij s_i
//   ga_j  = sum_i gs_i S_ij       gw_j = (sum_i G_ij S_ij) * dd_j/dw_j
// where gS' is the cotangent of the clipped state times the clip's derivative
// (clip_grad below). The cotangent of the packed slots 0..2 is 0 (not read).
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

// d(clip(x, lo, hi))/dx as jax computes it for jnp.clip (max then min): 1 inside,
// 1/2 exactly on a bound, 0 outside and for NaN.
HOST_DEVICE inline float clip_grad(float x, float lo, float hi) {
  if (x > lo && x < hi) return 1.0f;
  return (x == lo || x == hi) ? 0.5f : 0.0f;
}

// clip(x, -m, m) as jnp.clip: NaN stays NaN.
HOST_DEVICE inline float clip_state(float x, float m) {
  float c = (x < -m) ? -m : x;
  return (c > m) ? m : c;
}

// d = exp(-exp(clip(w))).
HOST_DEVICE inline float decay(float w) { return WKV_EXPF(-WKV_EXPF(clip_w(w))); }

// dd/dw at w, given d = decay(w): -d * exp(clip(w)) * clip'(w).
HOST_DEVICE inline float decay_grad(float w, float d) {
  const float c = clip_grad(w, kDecayClipLo, kDecayClipHi);
  return c == 0.0f ? 0.0f : -d * WKV_EXPF(clip_w(w)) * c;
}

// Packed row stride: three slots, then the N state columns.
constexpr int kSlots = 3;

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

// Forward of one head, serially (the CPU target). `d` and `t` are scratch of n
// floats each. P and P_out are packed [n, n + 3] and may be the same buffer
// (each row is read completely before it is written).
HOST_DEVICE inline void forward_head(int n, const float* P, const float* r, const float* w,
                                     const float* k, const float* v, const float* a,
                                     const float* b, float m, float* d, float* t,
                                     float* P_out, float* y) {
  const long long stride = n + kSlots;
  for (int j = 0; j < n; ++j) d[j] = decay(w[j]);
  for (int i = 0; i < n; ++i) {
    const float* slots = P + i * stride;
    const float* row = slots + kSlots;
    const float s_i = dot(n, row, a);
    const float v_i = v[i];
    // The new row goes through `t` so that this loop vectorises even when P_out == P.
    for (int j = 0; j < n; ++j) t[j] = update(row[j], d[j], s_i, b[j], v_i, k[j]);
    y[i] = dot(n, t, r);
    float* out = P_out + i * stride;
    for (int c = 0; c < kSlots; ++c) out[c] = slots[c];
    for (int j = 0; j < n; ++j) out[kSlots + j] = clip_state(t[j], m);
  }
}

// Backward of one head, serially. `d` and `t` are scratch of n floats each.
// gP is packed [n, n + 3] (slots get gP_out's) and may be the same buffer as gP_out
// (each row of gP_out is read completely before that row of gP is written).
HOST_DEVICE inline void backward_head(int n, const float* P, const float* r, const float* w,
                                      const float* k, const float* v, const float* a,
                                      const float* b, const float* gy, const float* gP_out,
                                      float m, float* d, float* t, float* gP, float* gr,
                                      float* gw, float* gk, float* gv, float* ga, float* gb) {
  const long long stride = n + kSlots;
  for (int j = 0; j < n; ++j) {
    d[j] = decay(w[j]);
    gr[j] = gw[j] = gk[j] = ga[j] = gb[j] = 0.0f;
  }
  for (int i = 0; i < n; ++i) {
    const float* row = P + i * stride + kSlots;
    const float* g_out = gP_out + i * stride + kSlots;
    const float s_i = dot(n, row, a);
    const float v_i = v[i];
    const float gy_i = gy[i];
    // t_j = G_ij for this row; column sums accumulate over i in order.
    for (int j = 0; j < n; ++j) {
      const float s_new = update(row[j], d[j], s_i, b[j], v_i, k[j]);
      const float g = total_grad(g_out[j] * clip_grad(s_new, -m, m), gy_i, r[j]);
      t[j] = g;
      gr[j] += s_new * gy_i;
      gw[j] += g * row[j];  // sum_i G_ij S_ij, times dd/dw below
      gb[j] += g * s_i;
      gk[j] += g * v_i;
    }
    const float gs_i = dot(n, t, b);
    gv[i] = dot(n, t, k);
    float* g_row = gP + i * stride;
    for (int c = 0; c < kSlots; ++c) g_row[c] = gP_out[i * stride + c];
    for (int j = 0; j < n; ++j) {
      g_row[kSlots + j] = state_grad(t[j], d[j], gs_i, a[j]);
      ga[j] += gs_i * row[j];
    }
  }
  for (int j = 0; j < n; ++j) gw[j] *= decay_grad(w[j], d[j]);
}

}  // namespace wkv
}  // namespace hierarchos

#undef WKV_EXPF

#endif  // HIERARCHOS_FFI_WKV_MATH_H_
