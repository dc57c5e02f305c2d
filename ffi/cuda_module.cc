// nanobind module `hierarchos_jax._native_cuda`: exposes the CUDA XLA FFI
// handlers defined in cuda_ops.cu. Built only with the CUDA option on.
//   jax.ffi.register_ffi_target(name, capsule, platform="CUDA")
#include "ffi_capsule.h"
#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;

XLA_FFI_DECLARE_HANDLER_SYMBOL(HierarchosFiniteClampF32Cuda);

NB_MODULE(_native_cuda, m) {
  m.doc() = "Hierarchos native CUDA kernels (XLA FFI handlers).";
  m.attr("PLATFORM") = "CUDA";
  m.def(
      "registrations",
      []() {
        nb::dict d;
        d["hierarchos_finite_clamp_f32"] =
            hierarchos::EncapsulateFfiHandler(HierarchosFiniteClampF32Cuda);
        return d;
      },
      "Dict of XLA FFI target name -> handler capsule (platform 'CUDA').");
}
