// Shape checks shared by the CPU and CUDA WKV FFI handlers (host code only).
//
// Layout: packed states are [..., H, N, N + 3] and vectors [..., H, N], float32,
// row-major, with the same leading dimensions; every leading axis (batch rows,
// heads, and any axes added by vmap) is flattened into one "heads" count.
#ifndef HIERARCHOS_FFI_WKV_SHAPES_H_
#define HIERARCHOS_FFI_WKV_SHAPES_H_

#include <cstdint>
#include <initializer_list>
#include <string>

#include "wkv_math.h"
#include "xla/ffi/api/ffi.h"

namespace hierarchos {
namespace wkv {

struct Geometry {
  int64_t heads = 0;  // product of the leading dimensions of the state
  int64_t n = 0;      // head size N
};

using Dims = xla::ffi::Span<const int64_t>;

inline xla::ffi::Error ShapeError(const char* op, const std::string& what) {
  return xla::ffi::Error::InvalidArgument(std::string(op) + ": " + what);
}

// Checks every packed state (the first one sets the geometry) and every vector of
// one handler call; errors name the offending operand by its position.
inline xla::ffi::Error CheckCall(const char* op, std::initializer_list<Dims> states,
                                 std::initializer_list<Dims> vectors, Geometry* g) {
  const Dims first = *states.begin();
  const size_t rank = first.size();
  if (rank < 2 || first[rank - 1] != first[rank - 2] + kSlots) {
    return ShapeError(op, "the packed state must be [..., N, N + 3] float32");
  }
  g->n = first[rank - 2];
  g->heads = 1;
  for (size_t i = 0; i + 2 < rank; ++i) g->heads *= first[i];
  int index = 0;
  for (const Dims& dims : states) {
    bool ok = dims.size() == rank;
    for (size_t i = 0; ok && i < rank; ++i) ok = dims[i] == first[i];
    if (!ok) {
      return ShapeError(op, "packed state operand #" + std::to_string(index) +
                                " must have the first state's shape");
    }
    ++index;
  }
  index = 0;
  for (const Dims& dims : vectors) {
    bool ok = dims.size() + 1 == rank;
    for (size_t i = 0; ok && i + 1 < rank; ++i) ok = dims[i] == first[i];
    if (!ok) {
      return ShapeError(op, "vector operand #" + std::to_string(index) +
                                " must be [..., N] with the state's leading dims");
    }
    ++index;
  }
  return xla::ffi::Error::Success();
}

}  // namespace wkv
}  // namespace hierarchos

#endif  // HIERARCHOS_FFI_WKV_SHAPES_H_
