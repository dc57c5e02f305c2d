// nanobind module `hierarchos_jax._native_cuda`: exposes the CUDA XLA FFI
// handlers defined in cuda_ops.cu. Built only with the CUDA option on.
//   jax.ffi.register_ffi_target(name, capsule, platform="CUDA")
#include <type_traits>

#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;

XLA_FFI_DECLARE_HANDLER_SYMBOL(HierarchosFiniteClampF32Cuda);

template <typename T>
static nb::capsule EncapsulateFfiHandler(T* fn) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, T, XLA_FFI_CallFrame*>,
                "Encapsulated function must be an XLA FFI handler");
  return nb::capsule(reinterpret_cast<void*>(fn));
}

NB_MODULE(_native_cuda, m) {
  m.doc() = "Hierarchos native CUDA kernels (XLA FFI handlers).";
  m.attr("PLATFORM") = "CUDA";
  m.def(
      "registrations",
      []() {
        nb::dict d;
        d["hierarchos_finite_clamp_f32"] =
            EncapsulateFfiHandler(HierarchosFiniteClampF32Cuda);
        return d;
      },
      "Dict of XLA FFI target name -> handler capsule (platform 'CUDA').");
}
