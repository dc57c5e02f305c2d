// nanobind module `hierarchos_jax._wkv_cuda`: the CUDA WKV FFI handlers of
// wkv_cuda.cu. Built only when the CUDA module is (CMake HIERARCHOS_CUDA).
//   jax.ffi.register_ffi_target(name, capsule, platform="CUDA")
#include "ffi_capsule.h"
#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;

XLA_FFI_DECLARE_HANDLER_SYMBOL(HierarchosWkvForwardF32Cuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(HierarchosWkvBackwardF32Cuda);

NB_MODULE(_wkv_cuda, m) {
  m.doc() = "RWKV-7 WKV state step, CUDA XLA FFI targets (ffi/wkv_cuda.cu).";
  m.attr("PLATFORM") = "CUDA";
  m.def(
      "registrations",
      []() {
        nb::dict d;
        d["hierarchos_wkv_fwd_f32"] =
            hierarchos::EncapsulateFfiHandler(HierarchosWkvForwardF32Cuda);
        d["hierarchos_wkv_bwd_f32"] =
            hierarchos::EncapsulateFfiHandler(HierarchosWkvBackwardF32Cuda);
        return d;
      },
      "Dict of XLA FFI target name -> handler capsule (platform 'CUDA').");
}
