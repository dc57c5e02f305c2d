// CUDA XLA FFI targets of the RWKV-7 WKV state step (same math and target names
// as the CPU module: ffi/wkv_math.h, hierarchos_wkv_{fwd,bwd}_f32). Bound to
// Python in wkv_cuda_module.cc, compiled by the host compiler.
//
// One block per head; each warp owns rows i = warp, warp + nwarps, ... and its
// lanes stride the columns j, so every state row is read and written coalesced
// and the row sums (s_i, y_i, gs_i, gv_i) are warp reductions. The column sums
// of the backward (gr, gw, gk, ga, gb) are accumulated per warp in shared memory
// and added in warp order, so results are deterministic. States are in the
// cell's packed layout (rows of N + 3: three slots, then S; see wkv_math.h).
// P' may overwrite P and gP may overwrite gP' (the Python side aliases them):
// every element is read by the lane that later writes it, before the write.
//
// Stand-alone compile check (what tests/test_wkv_build.py runs):
//   nvcc -std=c++17 -c ffi/wkv_cuda.cu -I ffi -I "$(python -c 'import jax; print(jax.ffi.include_dir())')" -o /tmp/wkv_cuda.o
#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_runtime.h>

#include "wkv_math.h"
#include "wkv_shapes.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
namespace wkv = hierarchos::wkv;

namespace {

constexpr int kWarp = 32;
constexpr int kMaxWarps = 8;
constexpr size_t kSharedBytes = 48 * 1024;  // default dynamic shared memory limit
constexpr int kBackwardColumnSums = 5;      // gr, gw (as sum G*S), gb, gk, ga

__device__ __forceinline__ float WarpSum(float x) {
  for (int off = kWarp / 2; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// Loads d, a, b, k, r of one head into shared memory (5 * n floats).
__device__ __forceinline__ void LoadVectors(int n, const float* w, const float* a,
                                            const float* b, const float* k, const float* r,
                                            float* sh) {
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    sh[j] = wkv::decay(w[j]);
    sh[n + j] = a[j];
    sh[2 * n + j] = b[j];
    sh[3 * n + j] = k[j];
    sh[4 * n + j] = r[j];
  }
}

__global__ void WkvForwardKernel(int n, float m, const float* P, const float* __restrict__ r,
                                 const float* __restrict__ w, const float* __restrict__ k,
                                 const float* __restrict__ v, const float* __restrict__ a,
                                 const float* __restrict__ b, float* __restrict__ y,
                                 float* P_out) {  // may be P: no __restrict__ on the pair
  extern __shared__ float sh[];
  const size_t head = blockIdx.x;
  const size_t stride = static_cast<size_t>(n) + wkv::kSlots;
  const size_t vo = head * n, mo = head * n * stride;
  LoadVectors(n, w + vo, a + vo, b + vo, k + vo, r + vo, sh);
  __syncthreads();
  const float *d = sh, *sa = sh + n, *sb = sh + 2 * n, *sk = sh + 3 * n, *sr = sh + 4 * n;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int nwarps = blockDim.x / kWarp;
  for (int i = warp; i < n; i += nwarps) {
    const float* slots = P + mo + i * stride;
    const float* row = slots + wkv::kSlots;
    float* out = P_out + mo + i * stride;
    float s = 0.f;
    for (int j = lane; j < n; j += kWarp) s += row[j] * sa[j];
    s = WarpSum(s);
    const float v_i = v[vo + i];
    float acc = 0.f;
    for (int j = lane; j < n; j += kWarp) {
      const float x = wkv::update(row[j], d[j], s, sb[j], v_i, sk[j]);
      out[wkv::kSlots + j] = wkv::clip_state(x, m);
      acc += x * sr[j];
    }
    if (lane < wkv::kSlots) out[lane] = slots[lane];
    acc = WarpSum(acc);
    if (lane == 0) y[vo + i] = acc;
  }
}

__global__ void WkvBackwardKernel(int n, float m, const float* P, const float* __restrict__ r,
                                  const float* __restrict__ w, const float* __restrict__ k,
                                  const float* __restrict__ v, const float* __restrict__ a,
                                  const float* __restrict__ b, const float* __restrict__ gy,
                                  const float* gP_out, float* gP,  // may alias: no __restrict__
                                  float* __restrict__ gr, float* __restrict__ gw,
                                  float* __restrict__ gk, float* __restrict__ gv,
                                  float* __restrict__ ga, float* __restrict__ gb) {
  extern __shared__ float sh[];
  const size_t head = blockIdx.x;
  const size_t stride = static_cast<size_t>(n) + wkv::kSlots;
  const size_t vo = head * n, mo = head * n * stride;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int nwarps = blockDim.x / kWarp;
  float* part = sh + 5 * n;  // [nwarps][kBackwardColumnSums][n]
  LoadVectors(n, w + vo, a + vo, b + vo, k + vo, r + vo, sh);
  for (int t = threadIdx.x; t < nwarps * kBackwardColumnSums * n; t += blockDim.x) part[t] = 0.f;
  __syncthreads();
  const float *d = sh, *sa = sh + n, *sb = sh + 2 * n, *sk = sh + 3 * n, *sr = sh + 4 * n;
  float* p_gr = part + static_cast<size_t>(warp) * kBackwardColumnSums * n;
  float *p_gd = p_gr + n, *p_gb = p_gr + 2 * n, *p_gk = p_gr + 3 * n, *p_ga = p_gr + 4 * n;
  for (int i = warp; i < n; i += nwarps) {
    const size_t ro = mo + i * stride;
    const float* row = P + ro + wkv::kSlots;
    const float* g_out = gP_out + ro + wkv::kSlots;
    float s = 0.f;
    for (int j = lane; j < n; j += kWarp) s += row[j] * sa[j];
    s = WarpSum(s);
    const float v_i = v[vo + i], gy_i = gy[vo + i];
    float gs = 0.f, gvi = 0.f;
    for (int j = lane; j < n; j += kWarp) {
      const float s_ij = row[j];
      const float s_new = wkv::update(s_ij, d[j], s, sb[j], v_i, sk[j]);
      const float g = wkv::total_grad(g_out[j] * wkv::clip_grad(s_new, -m, m), gy_i, sr[j]);
      gs += g * sb[j];
      gvi += g * sk[j];
      p_gr[j] += s_new * gy_i;
      p_gd[j] += g * s_ij;
      p_gb[j] += g * s;
      p_gk[j] += g * v_i;
    }
    gs = WarpSum(gs);  // also orders every lane's reads of this row before the writes
    gvi = WarpSum(gvi);
    if (lane == 0) gv[vo + i] = gvi;
    float* g_row = gP + ro;
    for (int j = lane; j < n; j += kWarp) {
      const float s_ij = row[j];
      const float s_new = wkv::update(s_ij, d[j], s, sb[j], v_i, sk[j]);
      const float g = wkv::total_grad(g_out[j] * wkv::clip_grad(s_new, -m, m), gy_i, sr[j]);
      g_row[wkv::kSlots + j] = wkv::state_grad(g, d[j], gs, sa[j]);
      p_ga[j] += gs * s_ij;
    }
    if (lane < wkv::kSlots) g_row[lane] = gP_out[ro + lane];  // the slots are copied
  }
  __syncthreads();
  const size_t sums = static_cast<size_t>(kBackwardColumnSums) * n;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    float t_r = 0.f, t_d = 0.f, t_b = 0.f, t_k = 0.f, t_a = 0.f;
    for (int q = 0; q < nwarps; ++q) {
      const float* p = part + q * sums;
      t_r += p[j];
      t_d += p[n + j];
      t_b += p[2 * n + j];
      t_k += p[3 * n + j];
      t_a += p[4 * n + j];
    }
    gr[vo + j] = t_r;
    gw[vo + j] = t_d * wkv::decay_grad(w[vo + j], d[j]);
    gb[vo + j] = t_b;
    gk[vo + j] = t_k;
    ga[vo + j] = t_a;
  }
}

// Warps per block: up to kMaxWarps, no more than rows, within the shared memory
// budget (`floats_per_warp` per warp on top of `fixed_floats`). 0 if none fits.
int WarpsFor(int64_t n, size_t fixed_floats, size_t floats_per_warp) {
  int warps = static_cast<int>(n < kMaxWarps ? n : kMaxWarps);
  while (warps > 0 && (fixed_floats + warps * floats_per_warp) * sizeof(float) > kSharedBytes) {
    --warps;
  }
  return warps;
}

ffi::Error LaunchStatus(const char* op) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return ffi::Error::Internal(std::string(op) + " (CUDA): " + cudaGetErrorString(err));
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error WkvForwardCudaImpl(cudaStream_t stream, F32 P, F32 r, F32 w, F32 k, F32 v, F32 a,
                              F32 b, F32Out y, F32Out P_out, float clip) {
  constexpr const char* kOp = "hierarchos_wkv_fwd_f32";
  wkv::Geometry g;
  if (auto err = wkv::CheckCall(kOp, {P.dimensions(), P_out->dimensions()},
                                {r.dimensions(), w.dimensions(), k.dimensions(), v.dimensions(),
                                 a.dimensions(), b.dimensions(), y->dimensions()},
                                &g);
      err.failure()) {
    return err;
  }
  if (g.heads == 0 || g.n == 0) return ffi::Error::Success();
  const int warps = WarpsFor(g.n, 5 * static_cast<size_t>(g.n), 0);
  if (warps == 0 || g.heads > 0x7fffffff) {
    return ffi::Error::InvalidArgument(std::string(kOp) + " (CUDA): head size or head count too large");
  }
  const size_t shared = 5 * static_cast<size_t>(g.n) * sizeof(float);
  WkvForwardKernel<<<static_cast<unsigned>(g.heads), warps * kWarp, shared, stream>>>(
      static_cast<int>(g.n), clip, P.typed_data(), r.typed_data(), w.typed_data(),
      k.typed_data(), v.typed_data(), a.typed_data(), b.typed_data(), y->typed_data(),
      P_out->typed_data());
  return LaunchStatus(kOp);
}

ffi::Error WkvBackwardCudaImpl(cudaStream_t stream, F32 P, F32 r, F32 w, F32 k, F32 v, F32 a,
                               F32 b, F32 gy, F32 gP_out, F32Out gP, F32Out gr, F32Out gw,
                               F32Out gk, F32Out gv, F32Out ga, F32Out gb, float clip) {
  constexpr const char* kOp = "hierarchos_wkv_bwd_f32";
  wkv::Geometry g;
  if (auto err = wkv::CheckCall(
          kOp, {P.dimensions(), gP_out.dimensions(), gP->dimensions()},
          {r.dimensions(), w.dimensions(), k.dimensions(), v.dimensions(), a.dimensions(),
           b.dimensions(), gy.dimensions(), gr->dimensions(), gw->dimensions(),
           gk->dimensions(), gv->dimensions(), ga->dimensions(), gb->dimensions()},
          &g);
      err.failure()) {
    return err;
  }
  if (g.heads == 0 || g.n == 0) return ffi::Error::Success();
  const size_t n = static_cast<size_t>(g.n);
  const int warps = WarpsFor(g.n, 5 * n, kBackwardColumnSums * n);
  if (warps == 0 || g.heads > 0x7fffffff) {
    return ffi::Error::InvalidArgument(std::string(kOp) + " (CUDA): head size or head count too large");
  }
  const size_t shared = (5 * n + warps * kBackwardColumnSums * n) * sizeof(float);
  WkvBackwardKernel<<<static_cast<unsigned>(g.heads), warps * kWarp, shared, stream>>>(
      static_cast<int>(g.n), clip, P.typed_data(), r.typed_data(), w.typed_data(),
      k.typed_data(), v.typed_data(), a.typed_data(), b.typed_data(), gy.typed_data(),
      gP_out.typed_data(), gP->typed_data(), gr->typed_data(), gw->typed_data(),
      gk->typed_data(), gv->typed_data(), ga->typed_data(), gb->typed_data());
  return LaunchStatus(kOp);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HierarchosWkvForwardF32Cuda, WkvForwardCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<F32>()  // P
                                  .Arg<F32>()  // r
                                  .Arg<F32>()  // w
                                  .Arg<F32>()  // k
                                  .Arg<F32>()  // v
                                  .Arg<F32>()  // a
                                  .Arg<F32>()  // b
                                  .Ret<F32>()  // y
                                  .Ret<F32>()  // P'
                                  .Attr<float>("clip"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HierarchosWkvBackwardF32Cuda, WkvBackwardCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<F32>()  // P
                                  .Arg<F32>()  // r
                                  .Arg<F32>()  // w
                                  .Arg<F32>()  // k
                                  .Arg<F32>()  // v
                                  .Arg<F32>()  // a
                                  .Arg<F32>()  // b
                                  .Arg<F32>()  // gy
                                  .Arg<F32>()  // gP'
                                  .Ret<F32>()  // gP
                                  .Ret<F32>()  // gr
                                  .Ret<F32>()  // gw
                                  .Ret<F32>()  // gk
                                  .Ret<F32>()  // gv
                                  .Ret<F32>()  // ga
                                  .Ret<F32>()  // gb
                                  .Attr<float>("clip"));
