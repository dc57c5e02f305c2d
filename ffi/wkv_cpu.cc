// CPU XLA FFI targets of the RWKV-7 WKV state step and the nanobind module
// `hierarchos_jax._wkv`. The math is ffi/wkv_math.h (shared with the CUDA target).
//
//   hierarchos_wkv_fwd_f32: P [..,N,N+3], r, w, k, v, a, b [..,N]; attr clip
//                           -> y [..,N], P' [..,N,N+3]
//   hierarchos_wkv_bwd_f32: P, r, w, k, v, a, b, gy, gP'; attr clip
//                           -> gP, gr, gw, gk, gv, ga, gb
// (P = the cell's packed state, see wkv_math.h.)
//
// Heads are processed one after another on the calling thread (XLA's CPU
// runtime already runs independent ops of the graph concurrently).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ffi_capsule.h"
#include "nanobind/nanobind.h"
#include "wkv_math.h"
#include "wkv_shapes.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;
namespace wkv = hierarchos::wkv;

namespace {

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

float* Scratch(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

ffi::Error WkvForwardImpl(F32 P, F32 r, F32 w, F32 k, F32 v, F32 a, F32 b, F32Out y,
                          F32Out P_out, float clip) {
  wkv::Geometry g;
  if (auto err = wkv::CheckCall("hierarchos_wkv_fwd_f32", {P.dimensions(), P_out->dimensions()},
                                {r.dimensions(), w.dimensions(), k.dimensions(), v.dimensions(),
                                 a.dimensions(), b.dimensions(), y->dimensions()},
                                &g);
      err.failure()) {
    return err;
  }
  const int n = static_cast<int>(g.n);
  const size_t per_head = static_cast<size_t>(n) * (n + wkv::kSlots);
  float* d = Scratch(2 * static_cast<size_t>(n));
  float* t = d + n;
  for (int64_t h = 0; h < g.heads; ++h) {
    const size_t m = static_cast<size_t>(h) * per_head, o = static_cast<size_t>(h) * n;
    wkv::forward_head(n, P.typed_data() + m, r.typed_data() + o, w.typed_data() + o,
                      k.typed_data() + o, v.typed_data() + o, a.typed_data() + o,
                      b.typed_data() + o, clip, d, t, P_out->typed_data() + m, y->typed_data() + o);
  }
  return ffi::Error::Success();
}

ffi::Error WkvBackwardImpl(F32 P, F32 r, F32 w, F32 k, F32 v, F32 a, F32 b, F32 gy, F32 gP_out,
                           F32Out gP, F32Out gr, F32Out gw, F32Out gk, F32Out gv, F32Out ga,
                           F32Out gb, float clip) {
  wkv::Geometry g;
  if (auto err = wkv::CheckCall(
          "hierarchos_wkv_bwd_f32", {P.dimensions(), gP_out.dimensions(), gP->dimensions()},
          {r.dimensions(), w.dimensions(), k.dimensions(), v.dimensions(), a.dimensions(),
           b.dimensions(), gy.dimensions(), gr->dimensions(), gw->dimensions(),
           gk->dimensions(), gv->dimensions(), ga->dimensions(), gb->dimensions()},
          &g);
      err.failure()) {
    return err;
  }
  const int n = static_cast<int>(g.n);
  const size_t per_head = static_cast<size_t>(n) * (n + wkv::kSlots);
  float* d = Scratch(2 * static_cast<size_t>(n));
  float* t = d + n;
  for (int64_t h = 0; h < g.heads; ++h) {
    const size_t m = static_cast<size_t>(h) * per_head, o = static_cast<size_t>(h) * n;
    wkv::backward_head(n, P.typed_data() + m, r.typed_data() + o, w.typed_data() + o,
                       k.typed_data() + o, v.typed_data() + o, a.typed_data() + o,
                       b.typed_data() + o, gy.typed_data() + o, gP_out.typed_data() + m, clip, d, t,
                       gP->typed_data() + m, gr->typed_data() + o, gw->typed_data() + o,
                       gk->typed_data() + o, gv->typed_data() + o, ga->typed_data() + o,
                       gb->typed_data() + o);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HierarchosWkvForwardF32, WkvForwardImpl,
                              ffi::Ffi::Bind()
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(HierarchosWkvBackwardF32, WkvBackwardImpl,
                              ffi::Ffi::Bind()
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

NB_MODULE(_wkv, m) {
  m.doc() = "RWKV-7 WKV state step, CPU XLA FFI targets (ffi/wkv_cpu.cc).";
  m.attr("PLATFORM") = "cpu";
  m.def(
      "registrations",
      []() {
        nb::dict d;
        d["hierarchos_wkv_fwd_f32"] = hierarchos::EncapsulateFfiHandler(HierarchosWkvForwardF32);
        d["hierarchos_wkv_bwd_f32"] = hierarchos::EncapsulateFfiHandler(HierarchosWkvBackwardF32);
        return d;
      },
      "Dict of XLA FFI target name -> handler capsule (platform 'cpu').");
}
