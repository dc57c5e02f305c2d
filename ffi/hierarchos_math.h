// Shared elementwise math for the Hierarchos native kernels.
//
// Everything here is header-only and usable from host C++ (the CPU XLA FFI
// handlers in cpu_ops.cc) and from CUDA device code (cuda_ops.cu): functions
// are marked HOST_DEVICE, which expands to `__host__ __device__` under nvcc and
// to nothing otherwise. Keep this header free of host-only library calls
// (std::isnan, std::numeric_limits, ...) so that it compiles unchanged on the
// device without --expt-relaxed-constexpr.
//
// Never build these sources with fast-math flags (-ffast-math,
// --use_fast_math): they let the compiler assume NaN never occurs, which breaks
// the NaN repair below.
#ifndef HIERARCHOS_FFI_HIERARCHOS_MATH_H_
#define HIERARCHOS_FFI_HIERARCHOS_MATH_H_

#if defined(__CUDACC__)
#define HOST_DEVICE __host__ __device__
#else
#define HOST_DEVICE
#endif

namespace hierarchos {

// Finite clamp fc_m(x) (spec/model.md, "Helper operations"): replace NaN by 0,
// +inf by +m and -inf by -m, then clip to [-m, m]. This is exactly
//   torch.nan_to_num(x, nan=0, posinf=m, neginf=-m).clamp(-m, m)
// and numpy's clip(nan_to_num(x, nan=0, posinf=m, neginf=-m), -m, m) for every
// m, including m = +inf (infinities are then kept) and the degenerate m < 0
// (every output is m, as with torch.clamp when min > max).
//
// Mapping +-inf to +-m and then clipping gives the same result as clipping the
// infinities directly, so only NaN needs a special case; `x != x` is the
// portable NaN test on host and device.
template <typename T>
HOST_DEVICE inline T finite_clamp(T x, T m) {
  T y = (x != x) ? T(0) : x;
  y = (y < -m) ? -m : y;
  y = (y > m) ? m : y;
  return y;
}

}  // namespace hierarchos

#endif  // HIERARCHOS_FFI_HIERARCHOS_MATH_H_
