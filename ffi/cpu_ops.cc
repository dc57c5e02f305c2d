// CPU XLA FFI handlers and the nanobind module `hierarchos_jax._native`.
//
// The module exposes `registrations()`, a dict name -> PyCapsule holding an
// XLA FFI handler, to be registered with
//   jax.ffi.register_ffi_target(name, capsule, platform="cpu")
// and called with jax.ffi.ffi_call(name, ...).
#include <cstddef>
#include <cstdint>

#include "hierarchos_math.h"
#include "ffi_capsule.h"
#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace {

// y = fc_m(x), elementwise, any shape.
ffi::Error FiniteClampF32Impl(ffi::Buffer<ffi::F32> x,
                              ffi::ResultBuffer<ffi::F32> y, float m) {
  const size_t n = x.element_count();
  if (y->element_count() != n) {
    return ffi::Error::InvalidArgument(
        "hierarchos_finite_clamp_f32: input and output sizes differ");
  }
  const float* in = x.typed_data();
  float* out = y->typed_data();
  for (size_t i = 0; i < n; ++i) {
    out[i] = hierarchos::finite_clamp(in[i], m);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HierarchosFiniteClampF32, FiniteClampF32Impl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Attr<float>("m"));

NB_MODULE(_native, m) {
  m.doc() = "Hierarchos native CPU kernels (XLA FFI handlers).";
  m.attr("PLATFORM") = "cpu";
  m.def(
      "registrations",
      []() {
        nb::dict d;
        d["hierarchos_finite_clamp_f32"] =
            hierarchos::EncapsulateFfiHandler(HierarchosFiniteClampF32);
        return d;
      },
      "Dict of XLA FFI target name -> handler capsule (platform 'cpu').");
  m.def(
      "finite_clamp",
      [](float x, float m) { return hierarchos::finite_clamp(x, m); },
      nb::arg("x"), nb::arg("m"),
      "Scalar fc_m(x) in float32, straight from ffi/hierarchos_math.h.");
}
