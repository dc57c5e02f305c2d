// Shape checks shared by the CPU and CUDA WKV FFI handlers (host code only).
//
// Layout: state buffers are [..., H, N, N] and vectors [..., H, N], float32,
// row-major, with the same leading dimensions; every leading axis (batch rows,
// heads, and any axes added by vmap) is flattened into one "heads" count.
#ifndef HIERARCHOS_FFI_WKV_SHAPES_H_
#define HIERARCHOS_FFI_WKV_SHAPES_H_

#include <cstdint>
#include <initializer_list>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace hierarchos {
namespace wkv {

struct Geometry {
  int64_t heads = 0;  // product of the leading dimensions of the state
  int64_t n = 0;      // head size N
};

// Checks one state buffer against the geometry taken from the first state.
inline xla::ffi::Error CheckState(const char* op, const char* what,
                                  xla::ffi::Span<const int64_t> dims, const Geometry& g) {
  const int64_t rank = static_cast<int64_t>(dims.size());
  int64_t count = 1;
  for (int64_t i = 0; i + 2 < rank; ++i) count *= dims[i];
  if (rank < 2 || dims[rank - 1] != g.n || dims[rank - 2] != g.n || count != g.heads) {
    return xla::ffi::Error::InvalidArgument(std::string(op) + ": " + what +
                                            " must be [..., N, N] like the state");
  }
  return xla::ffi::Error::Success();
}

// Checks one [..., N] vector: same leading dimensions as the state `state_dims`.
inline xla::ffi::Error CheckVector(const char* op, const char* what,
                                   xla::ffi::Span<const int64_t> dims,
                                   xla::ffi::Span<const int64_t> state_dims) {
  const size_t rank = dims.size();
  bool ok = rank + 1 == state_dims.size() && rank >= 1 && dims[rank - 1] == state_dims[rank];
  for (size_t i = 0; ok && i + 1 < rank; ++i) ok = dims[i] == state_dims[i];
  if (!ok) {
    return xla::ffi::Error::InvalidArgument(std::string(op) + ": " + what +
                                            " must be [..., N] with the state's leading dims");
  }
  return xla::ffi::Error::Success();
}

// Geometry of a state [..., N, N] (an error if the last two dims differ).
inline xla::ffi::Error StateGeometry(const char* op, xla::ffi::Span<const int64_t> dims,
                                     Geometry* g) {
  const int64_t rank = static_cast<int64_t>(dims.size());
  if (rank < 2 || dims[rank - 1] != dims[rank - 2]) {
    return xla::ffi::Error::InvalidArgument(std::string(op) +
                                            ": state must be [..., N, N] float32");
  }
  g->n = dims[rank - 1];
  g->heads = 1;
  for (int64_t i = 0; i + 2 < rank; ++i) g->heads *= dims[i];
  return xla::ffi::Error::Success();
}

// Checks every state buffer (the first one sets the geometry) and every vector of
// one handler call; errors name the offending operand by its position.
inline xla::ffi::Error CheckCall(const char* op,
                                 std::initializer_list<xla::ffi::Span<const int64_t>> states,
                                 std::initializer_list<xla::ffi::Span<const int64_t>> vectors,
                                 Geometry* g) {
  const auto& first = *states.begin();
  if (auto err = StateGeometry(op, first, g); err.failure()) return err;
  int index = 0;
  for (const auto& dims : states) {
    const std::string what = "state argument/result #" + std::to_string(index++);
    if (auto err = CheckState(op, what.c_str(), dims, *g); err.failure()) return err;
  }
  index = 0;
  for (const auto& dims : vectors) {
    const std::string what = "vector argument/result #" + std::to_string(index++);
    if (auto err = CheckVector(op, what.c_str(), dims, first); err.failure()) return err;
  }
  return xla::ffi::Error::Success();
}

}  // namespace wkv
}  // namespace hierarchos

#endif  // HIERARCHOS_FFI_WKV_SHAPES_H_
