// CUDA XLA FFI handlers. Compiled by nvcc only when the CUDA module is built
// (CMake option HIERARCHOS_CUDA); bound to Python in cuda_module.cc, which is
// compiled by the host compiler so that nanobind never goes through nvcc.
//
// Stand-alone compile check (what tests/test_native_build.py runs):
//   nvcc -std=c++17 -c ffi/cuda_ops.cu -I ffi -I "$(python -c 'import jax; print(jax.ffi.include_dir())')" -o /tmp/cuda_ops.o
#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_runtime.h>

#include "hierarchos_math.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

__global__ void FiniteClampF32Kernel(const float* __restrict__ x,
                                     float* __restrict__ y, size_t n,
                                     float m) {
  const size_t stride = static_cast<size_t>(blockDim.x) * gridDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += stride) {
    y[i] = hierarchos::finite_clamp(x[i], m);
  }
}

ffi::Error FiniteClampF32CudaImpl(cudaStream_t stream,
                                  ffi::Buffer<ffi::F32> x,
                                  ffi::ResultBuffer<ffi::F32> y, float m) {
  const size_t n = x.element_count();
  if (y->element_count() != n) {
    return ffi::Error::InvalidArgument(
        "hierarchos_finite_clamp_f32: input and output sizes differ");
  }
  if (n == 0) return ffi::Error::Success();
  constexpr int kThreads = 256;
  const size_t wanted = (n + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(wanted < 65535 ? wanted : 65535);
  FiniteClampF32Kernel<<<blocks, kThreads, 0, stream>>>(x.typed_data(),
                                                       y->typed_data(), n, m);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return ffi::Error::Internal(
        std::string("hierarchos_finite_clamp_f32 (CUDA): ") +
        cudaGetErrorString(err));
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    HierarchosFiniteClampF32Cuda, FiniteClampF32CudaImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<ffi::Buffer<ffi::F32>>()  // x
        .Ret<ffi::Buffer<ffi::F32>>()  // y
        .Attr<float>("m"));
