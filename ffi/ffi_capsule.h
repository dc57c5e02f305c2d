// Wrapping an XLA FFI handler symbol in a nanobind capsule, for
// jax.ffi.register_ffi_target(name, capsule, platform=...). Shared by the CPU
// (_native) and CUDA (_native_cuda) nanobind modules; host-only.
#ifndef HIERARCHOS_FFI_FFI_CAPSULE_H_
#define HIERARCHOS_FFI_FFI_CAPSULE_H_

#include <type_traits>

#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

namespace hierarchos {

template <typename T>
inline nanobind::capsule EncapsulateFfiHandler(T* fn) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, T, XLA_FFI_CallFrame*>,
                "Encapsulated function must be an XLA FFI handler");
  return nanobind::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace hierarchos

#endif  // HIERARCHOS_FFI_FFI_CAPSULE_H_
