// Quantized CPU kernels (XLA FFI handlers) and the nanobind module
// `hierarchos_jax._quant`.
//
//   hierarchos_quant_matmul_f32   Y[..., N] = A[..., K] . W^T, W packed uint8 [N, bytes_per_row]
//   hierarchos_quant_embed_f32    out[..., K] = dequantize(W[ids[...]]) (row gather)
//
// Attributes: qtype (0 INT4, 1 REF_Q4_0, 2 REF_Q8_0, 3 REF_Q2_K, 4 Q4_0, 5 Q8_0, 6 Q2_K;
// 4-6 are the GGUF block layouts), threads (0 = all hardware threads),
// scalar (1 = force the portable path). Work is split over output features (matmul) or
// over ids (embed), so batch-1 decode uses every core. The AVX2+FMA+F16C path is chosen at
// run time (__builtin_cpu_supports); no global -march.
//
// Plain functions for NumPy: quantize(w, qtype), dequantize(packed, qtype, k),
// matmul(a, packed, qtype, threads=0, scalar=False), has_avx2(), hardware_threads().
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ffi_capsule.h"
#include "nanobind/nanobind.h"
#include "nanobind/ndarray.h"
#include "nanobind/stl/string.h"
#include "quant_avx2.h"
#include "quant_formats.h"
#include "quant_pool.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;
namespace hq = hierarchos::quant;

namespace {

bool CpuHasAvx2() {
#ifdef HIERARCHOS_QUANT_HAVE_AVX2_PATH
  static const bool has =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

int ResolveThreads(int64_t threads) {
  return threads > 0 ? static_cast<int>(std::min<int64_t>(threads, 256)) : hq::ThreadPool::HardwareThreads();
}

using DotRowFn = float (*)(const float*, const uint8_t*, int64_t);
using DequantRowFn = void (*)(const uint8_t*, int64_t, float*);
using DotF32Fn = float (*)(const float*, const float*, int64_t);
using DotF32x4Fn = void (*)(const float*, const float*, int64_t, float*);
using DotNibblesFn = float (*)(const float*, const float*, const uint8_t*, int64_t);

struct Kernels {
  DotRowFn dot_row;
  DequantRowFn dequant_row;
  DotF32Fn dot_f32;
  DotF32x4Fn dot_f32x4;
  DotNibblesFn dot_nibbles = nullptr;  // INT4/Q4_0 AVX2 decode path (rearranged activations)
};

template <int QT>
float ScalarDotRow(const float* a, const uint8_t* row, int64_t k) { return hq::DotRowScalar(a, row, k, QT); }
template <int QT>
void ScalarDequantRow(const uint8_t* row, int64_t k, float* out) { hq::DequantizeRowScalar(row, k, QT, out); }

template <int QT>
Kernels KernelsFor(bool scalar) {
#ifdef HIERARCHOS_QUANT_HAVE_AVX2_PATH
  if (!scalar && CpuHasAvx2()) {
    if constexpr (QT == hq::kQ2_K) {
      return {&hq::avx2::DotRowGgufQ2K, &hq::avx2::DequantizeRow<QT>, &hq::avx2::DotF32, &hq::avx2::DotF32x4};
    }
    if constexpr (QT == hq::kInt4 || QT == hq::kRefQ4_0) {
      return {&hq::avx2::DotRow<QT>, &hq::avx2::DequantizeRow<QT>, &hq::avx2::DotF32, &hq::avx2::DotF32x4,
              &hq::avx2::DotRowNibbles<QT>};
    }
    return {&hq::avx2::DotRow<QT>, &hq::avx2::DequantizeRow<QT>, &hq::avx2::DotF32, &hq::avx2::DotF32x4};
  }
#endif
  (void)scalar;
  return {&ScalarDotRow<QT>, &ScalarDequantRow<QT>, &hq::DotF32Scalar, &hq::DotF32x4Scalar};
}

Kernels SelectKernels(int qt, bool scalar) {
  switch (qt) {
    case hq::kInt4: return KernelsFor<hq::kInt4>(scalar);
    case hq::kRefQ4_0: return KernelsFor<hq::kRefQ4_0>(scalar);
    case hq::kRefQ8_0: return KernelsFor<hq::kRefQ8_0>(scalar);
    case hq::kRefQ2_K: return KernelsFor<hq::kRefQ2_K>(scalar);
    case hq::kQ4_0: return KernelsFor<hq::kQ4_0>(scalar);
    case hq::kQ8_0: return KernelsFor<hq::kQ8_0>(scalar);
    default: return KernelsFor<hq::kQ2_K>(scalar);
  }
}

// Rows of A handled with the fused decode-and-dot; more rows decode each weight row once
// into a buffer and reuse it.
constexpr int64_t kFusedMaxRows = 2;
// Minimum weights per task, so tiny matrices stay on one thread.
constexpr int64_t kMinWeightsPerTask = 1 << 15;

void MatmulRows(const Kernels& kern, const float* a, int64_t m, int64_t k, const uint8_t* w, int64_t bpr,
                int64_t n, float* y, int64_t n0, int64_t n1) {
#ifdef HIERARCHOS_QUANT_HAVE_AVX2_PATH
  if (m <= kFusedMaxRows && kern.dot_nibbles != nullptr) {
    std::vector<float> ar(static_cast<size_t>(m * k)), sums(static_cast<size_t>(m * (k / 32)));
    for (int64_t i = 0; i < m; ++i) hq::avx2::RearrangeForNibbles(a + i * k, k, &ar[i * k], &sums[i * (k / 32)]);
    for (int64_t j = n0; j < n1; ++j) {
      for (int64_t i = 0; i < m; ++i) y[i * n + j] = kern.dot_nibbles(&ar[i * k], &sums[i * (k / 32)], w + j * bpr, k);
    }
    return;
  }
#endif
  if (m <= kFusedMaxRows) {
    for (int64_t j = n0; j < n1; ++j) {
      for (int64_t i = 0; i < m; ++i) y[i * n + j] = kern.dot_row(a + i * k, w + j * bpr, k);
    }
    return;
  }
  // Dequantize four weight rows at a time (4*k floats stay in L1/L2), then four dots per
  // activation row with each activation vector loaded once.
  std::vector<float> buf(static_cast<size_t>(4 * k));
  float dots[4];
  int64_t j = n0;
  for (; j + 4 <= n1; j += 4) {
    for (int r = 0; r < 4; ++r) kern.dequant_row(w + (j + r) * bpr, k, buf.data() + r * k);
    for (int64_t i = 0; i < m; ++i) {
      kern.dot_f32x4(a + i * k, buf.data(), k, dots);
      for (int r = 0; r < 4; ++r) y[i * n + j + r] = dots[r];
    }
  }
  for (; j < n1; ++j) {
    kern.dequant_row(w + j * bpr, k, buf.data());
    for (int64_t i = 0; i < m; ++i) y[i * n + j] = kern.dot_f32(a + i * k, buf.data(), k);
  }
}

// Y[m, n] = sum_k A[m, k] W[n, k]; split over output features.
void Matmul(int qt, const float* a, int64_t m, int64_t k, const uint8_t* w, int64_t n, float* y, int threads,
            bool scalar) {
  const Kernels kern = SelectKernels(qt, scalar);
  const int64_t bpr = k / hq::BlockWeights(qt) * hq::BlockBytes(qt);
  const int64_t work = n * k * std::max<int64_t>(1, std::min<int64_t>(m, 8));
  int64_t tasks = std::min<int64_t>(n, std::max<int64_t>(1, work / kMinWeightsPerTask));
  tasks = std::min<int64_t>(tasks, 4 * static_cast<int64_t>(threads));  // a few per thread: balance
  const int64_t per = (n + tasks - 1) / tasks;
  hq::ThreadPool::Get().Run(tasks, threads, [&](int64_t t) {
    const int64_t n0 = t * per, n1 = std::min(n, n0 + per);
    if (n0 < n1) MatmulRows(kern, a, m, k, w, bpr, n, y, n0, n1);
  });
}

void Embed(int qt, const int32_t* ids, int64_t count, const uint8_t* w, int64_t vocab, int64_t k, float* out,
           int threads, bool scalar) {
  const Kernels kern = SelectKernels(qt, scalar);
  const int64_t bpr = k / hq::BlockWeights(qt) * hq::BlockBytes(qt);
  int64_t tasks = std::min<int64_t>(count, std::max<int64_t>(1, count * k / kMinWeightsPerTask));
  tasks = std::min<int64_t>(tasks, 4 * static_cast<int64_t>(threads));
  const int64_t per = (count + tasks - 1) / tasks;
  hq::ThreadPool::Get().Run(tasks, threads, [&](int64_t t) {
    for (int64_t i = t * per; i < std::min(count, (t + 1) * per); ++i) {
      const int64_t id = std::min<int64_t>(std::max<int64_t>(ids[i], 0), vocab - 1);  // as XLA's gather: clamp
      kern.dequant_row(w + id * bpr, k, out + i * k);
    }
  });
}

ffi::Error CheckPacked(const char* op, int64_t qt, ffi::AnyBuffer::Dimensions wd, int64_t k) {
  if (!hq::ValidQType(qt)) {
    return ffi::Error::InvalidArgument(std::string(op) + ": unknown qtype code " + std::to_string(qt));
  }
  const int bw = hq::BlockWeights(static_cast<int>(qt));
  if (k <= 0 || k % bw != 0) {
    return ffi::Error::InvalidArgument(std::string(op) + ": K=" + std::to_string(k) + " is not a positive multiple of " +
                                       hq::QTypeName(static_cast<int>(qt)) + "'s block size " + std::to_string(bw));
  }
  const int64_t bpr = k / bw * hq::BlockBytes(static_cast<int>(qt));
  if (wd.size() != 2 || wd[1] != bpr) {
    return ffi::Error::InvalidArgument(std::string(op) + ": packed weights must be uint8 [N, " + std::to_string(bpr) +
                                       "] for " + hq::QTypeName(static_cast<int>(qt)) + " with K=" + std::to_string(k));
  }
  return ffi::Error::Success();
}

ffi::Error QuantMatmulImpl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::U8> w, ffi::ResultBuffer<ffi::F32> y,
                           int64_t qtype, int64_t threads, int64_t scalar) {
  const auto ad = a.dimensions();
  if (ad.size() < 1) return ffi::Error::InvalidArgument("hierarchos_quant_matmul_f32: A must have rank >= 1");
  const int64_t k = ad.back();
  if (ffi::Error e = CheckPacked("hierarchos_quant_matmul_f32", qtype, w.dimensions(), k); e.failure()) return e;
  const int64_t n = w.dimensions()[0];
  const int64_t m = k == 0 ? 0 : static_cast<int64_t>(a.element_count()) / k;
  const auto yd = y->dimensions();
  if (yd.size() != ad.size() || yd.back() != n || static_cast<int64_t>(y->element_count()) != m * n) {
    return ffi::Error::InvalidArgument("hierarchos_quant_matmul_f32: output must be A's shape with the last axis = N");
  }
  Matmul(static_cast<int>(qtype), a.typed_data(), m, k, w.typed_data(), n, y->typed_data(), ResolveThreads(threads),
         scalar != 0);
  return ffi::Error::Success();
}

ffi::Error QuantEmbedImpl(ffi::Buffer<ffi::S32> ids, ffi::Buffer<ffi::U8> w, ffi::ResultBuffer<ffi::F32> out,
                          int64_t qtype, int64_t threads, int64_t scalar) {
  const auto od = out->dimensions();
  if (od.size() != ids.dimensions().size() + 1) {
    return ffi::Error::InvalidArgument("hierarchos_quant_embed_f32: output must be ids' shape + [K]");
  }
  const int64_t k = od.back();
  if (ffi::Error e = CheckPacked("hierarchos_quant_embed_f32", qtype, w.dimensions(), k); e.failure()) return e;
  const int64_t count = static_cast<int64_t>(ids.element_count());
  const int64_t vocab = w.dimensions()[0];
  if (static_cast<int64_t>(out->element_count()) != count * k || (vocab == 0 && count > 0)) {
    return ffi::Error::InvalidArgument("hierarchos_quant_embed_f32: output size or table size does not match");
  }
  Embed(static_cast<int>(qtype), ids.typed_data(), count, w.typed_data(), vocab, k, out->typed_data(),
        ResolveThreads(threads), scalar != 0);
  return ffi::Error::Success();
}

// --- NumPy-facing helpers ------------------------------------------------------

template <typename T>
nb::ndarray<nb::numpy, T, nb::ndim<2>> NewArray(size_t rows, size_t cols) {
  T* data = new T[rows * cols == 0 ? 1 : rows * cols];
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  return nb::ndarray<nb::numpy, T, nb::ndim<2>>(data, {rows, cols}, owner);
}

int ParseQType(const std::string& name) {
  const int qt = hq::QTypeFromName(name.c_str());
  if (qt < 0) throw nb::value_error(("unknown qtype '" + name + "'; choose one of Q4_0, Q8_0, Q2_K, INT4, REF_Q4_0, REF_Q8_0, REF_Q2_K").c_str());
  return qt;
}

void CheckK(int qt, int64_t k) {
  const int bw = hq::BlockWeights(qt);
  if (k <= 0 || k % bw != 0) {
    throw nb::value_error((std::string(hq::QTypeName(qt)) + ": row length K=" + std::to_string(k) +
                           " is not a positive multiple of the block size " + std::to_string(bw))
                              .c_str());
  }
}

using F32Matrix = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using U8Matrix = nb::ndarray<const uint8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

nb::ndarray<nb::numpy, uint8_t, nb::ndim<2>> PyQuantize(F32Matrix w, const std::string& qtype, int64_t threads) {
  const int qt = ParseQType(qtype);
  const int64_t rows = static_cast<int64_t>(w.shape(0)), k = static_cast<int64_t>(w.shape(1));
  CheckK(qt, k);
  const int64_t bpr = k / hq::BlockWeights(qt) * hq::BlockBytes(qt);
  auto out = NewArray<uint8_t>(static_cast<size_t>(rows), static_cast<size_t>(bpr));
  const float* src = w.data();
  uint8_t* dst = out.data();
  {
    nb::gil_scoped_release release;
    const int64_t tasks = std::min<int64_t>(rows, std::max<int64_t>(1, rows * k / (1 << 16)));
    const int64_t per = tasks == 0 ? 0 : (rows + tasks - 1) / tasks;
    hq::ThreadPool::Get().Run(tasks, ResolveThreads(threads), [&](int64_t t) {
      for (int64_t r = t * per; r < std::min(rows, (t + 1) * per); ++r) hq::QuantizeRow(src + r * k, k, dst + r * bpr, qt);
    });
  }
  return out;
}

nb::ndarray<nb::numpy, float, nb::ndim<2>> PyDequantize(U8Matrix packed, const std::string& qtype, int64_t k,
                                                        bool scalar) {
  const int qt = ParseQType(qtype);
  CheckK(qt, k);
  const int64_t bpr = k / hq::BlockWeights(qt) * hq::BlockBytes(qt);
  if (static_cast<int64_t>(packed.shape(1)) != bpr) {
    throw nb::value_error((std::string(hq::QTypeName(qt)) + " with K=" + std::to_string(k) + " needs " +
                           std::to_string(bpr) + " bytes per row, got " + std::to_string(packed.shape(1)))
                              .c_str());
  }
  const int64_t rows = static_cast<int64_t>(packed.shape(0));
  auto out = NewArray<float>(static_cast<size_t>(rows), static_cast<size_t>(k));
  const Kernels kern = SelectKernels(qt, scalar);
  const uint8_t* src = packed.data();
  float* dst = out.data();
  {
    nb::gil_scoped_release release;
    for (int64_t r = 0; r < rows; ++r) kern.dequant_row(src + r * bpr, k, dst + r * k);
  }
  return out;
}

nb::ndarray<nb::numpy, float, nb::ndim<2>> PyMatmul(F32Matrix a, U8Matrix packed, const std::string& qtype,
                                                    int64_t threads, bool scalar) {
  const int qt = ParseQType(qtype);
  const int64_t m = static_cast<int64_t>(a.shape(0)), k = static_cast<int64_t>(a.shape(1));
  CheckK(qt, k);
  const int64_t bpr = k / hq::BlockWeights(qt) * hq::BlockBytes(qt);
  if (static_cast<int64_t>(packed.shape(1)) != bpr) {
    throw nb::value_error(("packed weights must have " + std::to_string(bpr) + " bytes per row for K=" +
                           std::to_string(k) + ", got " + std::to_string(packed.shape(1)))
                              .c_str());
  }
  const int64_t n = static_cast<int64_t>(packed.shape(0));
  auto out = NewArray<float>(static_cast<size_t>(m), static_cast<size_t>(n));
  const float* ap = a.data();
  const uint8_t* wp = packed.data();
  float* yp = out.data();
  {
    nb::gil_scoped_release release;
    Matmul(qt, ap, m, k, wp, n, yp, ResolveThreads(threads), scalar);
  }
  return out;
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HierarchosQuantMatmulF32, QuantMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // A [..., K]
                                  .Arg<ffi::Buffer<ffi::U8>>()   // W packed [N, bytes_per_row]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // Y [..., N]
                                  .Attr<int64_t>("qtype")
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("scalar"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HierarchosQuantEmbedF32, QuantEmbedImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // ids [...]
                                  .Arg<ffi::Buffer<ffi::U8>>()   // table packed [V, bytes_per_row]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out [..., K]
                                  .Attr<int64_t>("qtype")
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("scalar"));

NB_MODULE(_quant, m) {
  m.doc() = "Hierarchos quantized CPU kernels: block formats, quantized matmul and embedding (XLA FFI).";
  m.attr("PLATFORM") = "cpu";
  m.def(
      "registrations",
      []() {
        nb::dict d;
        d["hierarchos_quant_matmul_f32"] = hierarchos::EncapsulateFfiHandler(HierarchosQuantMatmulF32);
        d["hierarchos_quant_embed_f32"] = hierarchos::EncapsulateFfiHandler(HierarchosQuantEmbedF32);
        return d;
      },
      "Dict of XLA FFI target name -> handler capsule (platform 'cpu').");
  m.def("has_avx2", &CpuHasAvx2, "True when the AVX2+FMA path is used on this CPU.");
  m.def("hardware_threads", &hq::ThreadPool::HardwareThreads, "Threads used when threads=0.");
  m.def("quantize", &PyQuantize, nb::arg("w"), nb::arg("qtype"), nb::arg("threads") = 0,
        "Quantize float32 [rows, K] row-wise -> packed uint8 [rows, bytes_per_row].");
  m.def("dequantize", &PyDequantize, nb::arg("packed"), nb::arg("qtype"), nb::arg("k"), nb::arg("scalar") = false,
        "Packed uint8 [rows, bytes_per_row] -> float32 [rows, K].");
  m.def("matmul", &PyMatmul, nb::arg("a"), nb::arg("packed"), nb::arg("qtype"), nb::arg("threads") = 0,
        nb::arg("scalar") = false, "Y = A . W^T for float32 A [M, K] and packed W [N, bytes_per_row].");
}
