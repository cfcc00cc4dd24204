// The one binding file of lowbit._C. Kernels take raw device pointers, sizes, strides and a
// stream handle; the Python layer validates every argument before it gets here, so this file
// only converts types and turns a failed launch into a Python RuntimeError.
//
// API (torch-free; pointers are data_ptr() ints, 0 = none; strides in elements; `stream` is a
// cudaStream_t as an int; scale tiles as lowbit.scale_layout gives them, 0 = whole extent):
//   build_info() -> dict; device_count() -> int; device_info(index) -> dict;
//   driver_version() -> int; set_programmatic_launch(on); programmatic_launch() -> bool
//   enums() -> {"dtype": {name: code}, "fp8_format": {name: code}}
//   kernels() -> [(name, op kind, min arch, kernel id)], every kernel in this build
//   GemmLaunch(kernel_id, M, N, K, lda, ldb, a_scale_tile_rows, a_scale_tile_cols,
//              a_scale_ld, b_scale_tile_rows, b_scale_tile_cols, b_scale_ld, bias_dtype,
//              out_dtype, ldo, fast_accum)
//     .launch(a, b, a_scale, b_scale, bias, out, stream)
//     .native() -> (address, launch function's address) for lowbit._torch_ops
//   Int8GemmLaunch(kernel_id, M, N, K, lda, ldb, a_scale_per_row, b_scale_per_row,
//                  a_zero_mode, bias_dtype, out_dtype, ldo)
//     .launch(a, b, a_scale, b_scale, bias, a_zero, b_sum, out, stream)
//     .native() (int8_gemm without zero points), .native_mm() (int8_mm) -> as GemmLaunch's
//   QuantizeLaunch(kernel_id, x_dtype, rows, cols, row_stride, col_stride, fmt, saturate,
//                  tile_rows, tile_cols, hw_cvt)
//     .launch(x, q, scale_in, scale_out, workspace, stream)
//     .native() -> as GemmLaunch's
//   DequantizeLaunch(kernel_id, rows, cols, row_stride, col_stride, fmt, scale_tile_rows,
//                    scale_tile_cols, scale_ld, out_dtype)
//     .launch(q, scale, out, stream)
//     .native() -> as GemmLaunch's
//   Int8QuantizeLaunch(kernel_id, x_dtype, rows, cols, row_stride, col_stride, symmetric,
//                      tile_rows, tile_cols)
//     .launch(x, q, scale_in, zero_in, scale_out, zero_out, workspace, stream)
//     .native() -> as GemmLaunch's
//   Int8DequantizeLaunch(kernel_id, rows, cols, row_stride, col_stride, scale_tile_rows,
//                        scale_tile_cols, scale_ld, out_dtype)
//     .launch(q, scale, zero, out, stream)
//     .native() -> as GemmLaunch's
//   Fp8LinearLaunch(quantize_launch, gemm_launch, scale_offset, amax_offset,
//                   fused_kernel_id=-1, weight_early=False)
//     .launch(x, x_scale, b, b_scale, bias, workspace, out, stream)
//     .native() -> as GemmLaunch's
//   Int8LinearLaunch(quantize_launch, gemm_launch, scale_offset, zero_offset, amax_offset,
//                    fused_kernel_id=-1, weight_early=False)
//     .launch(x, x_scale, x_zero, b, b_scale, b_sum, bias, workspace, out, stream)
//     .native() -> as Fp8LinearLaunch's
//   WXA16GemmLaunch(kernel_id, bits, M, N, K, group, ldx, x_dtype, ldw, scale_dtype,
//                   scale_ld, has_zeros, zero_ld, bias_dtype, ldo)
//     .counter_bytes, .partial_bytes (planned on the current device), .splits, .split_from,
//     .parts
//     .launch(x, w, scales, zeros, bias, counters, partials, out, stream)
//     .native() -> as GemmLaunch's (its split counters its own, per stream)
//   Int4QuantizeLaunch(kernel_id, w_dtype, rows, cols, row_stride, col_stride, group,
//                      symmetric)
//     .launch(w, q, scales, zeros, stream)
//     .native() -> as GemmLaunch's
// A Launch object is built once per call signature (it checks and converts everything but
// the pointers); its launch() is the per-call path. A constructor given values no kernel
// takes raises ValueError; a failed launch raises RuntimeError with the CUDA error string.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtypes.h"
#include "common/kernel_table.h"

#ifdef LOWBIT_WITH_CUDA
#include <cuda_runtime.h>

#include <utility>

#include "common/launch.h"
#include "common/runtime.h"
#include "fp8/fp8_gemm.h"
#include "fp8/fp8_kernels.h"
#include "fp8/fp8_quant.h"
#include "int8/int8_kernels.h"
#include "int8/int8_quant.h"
#include "wxa16/int4_quant.h"
#include "wxa16/wxa16_gemm.h"
#include "wxa16/wxa16_kernels.h"
#endif

#ifndef LOWBIT_CUDA_ARCHS_SOURCE
#define LOWBIT_CUDA_ARCHS_SOURCE "LOWBIT_CUDA_ARCHS"
#endif

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict d;
#ifdef LOWBIT_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = std::string(LOWBIT_CUDA_ARCHS);
  d["cuda_version"] = std::string(LOWBIT_CUDA_VERSION);
  d["cuda_runtime"] = lowbit::runtime_version();
  d["cudart_static"] = true;
#else
  d["cuda"] = false;
  d["cuda_archs"] = std::string();
  d["cuda_version"] = std::string();
  d["cuda_runtime"] = 0;
  d["cudart_static"] = false;
#endif
  d["cuda_archs_source"] = std::string(LOWBIT_CUDA_ARCHS_SOURCE);
  return d;
}

int device_count() {
#ifdef LOWBIT_WITH_CUDA
  return lowbit::device_count();
#else
  return 0;
#endif
}

py::dict device_info(int index) {
#ifdef LOWBIT_WITH_CUDA
  lowbit::DeviceInfo info = lowbit::device_info(index);
  py::dict d;
  d["name"] = info.name;
  d["capability"] = py::make_tuple(info.major, info.minor);
  d["multiprocessors"] = info.multiprocessors;
  d["l2_bytes"] = info.l2_bytes;
  d["global_bytes"] = info.global_bytes;
  return d;
#else
  (void)index;
  throw py::value_error("lowbit._C was built without CUDA: no device info");
#endif
}

int driver_version() {
#ifdef LOWBIT_WITH_CUDA
  return lowbit::driver_version();
#else
  return 0;
#endif
}

template <size_t N>
py::dict enum_dict(const lowbit::EnumName (&names)[N]) {
  py::dict d;
  for (const auto& e : names) d[e.name] = e.value;
  return d;
}

py::dict enums() {
  py::dict d;
  d["dtype"] = enum_dict(lowbit::kFloatTypeNames);
  d["fp8_format"] = enum_dict(lowbit::kFp8FormatNames);
  return d;
}

// Every family's table, one after another: a kernel's id is its index here.
const std::vector<lowbit::KernelEntry>& all_kernels() {
  static const std::vector<lowbit::KernelEntry> rows = [] {
    std::vector<lowbit::KernelEntry> v;
#ifdef LOWBIT_WITH_CUDA
    for (const lowbit::KernelTable& t : {lowbit::fp8_kernel_table(), lowbit::int8_kernel_table(),
                                         lowbit::wxa16_kernel_table()})
      for (size_t i = 0; i < t.size; ++i) v.push_back(t.rows[i]);
#endif
    return v;
  }();
  return rows;
}

py::list kernels() {
  py::list out;
  const auto& rows = all_kernels();
  for (size_t i = 0; i < rows.size(); ++i)
    out.append(py::make_tuple(rows[i].name, lowbit::op_kind_name(rows[i].kind), rows[i].min_arch,
                              static_cast<int>(i)));
  return out;
}

#ifdef LOWBIT_WITH_CUDA
const lowbit::KernelEntry& kernel_of(int id, lowbit::OpKind kind) {
  const auto& rows = all_kernels();
  if (id < 0 || static_cast<size_t>(id) >= rows.size() || rows[id].kind != kind)
    throw py::value_error("kernel id " + std::to_string(id) + " is no " +
                          lowbit::op_kind_name(kind) + " kernel of this build");
  return rows[id];
}

template <class E>
E enum_arg(int v, const char* what) {
  const E e = static_cast<E>(v);
  if (!lowbit::valid(e)) throw py::value_error(std::string("invalid ") + what + " code " +
                                               std::to_string(v));
  return e;
}

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void check_launch(cudaError_t err, const char* kernel) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(kernel) + ": " + lowbit::error_string(err));
}

// One call at a time per launch object. The Python path (holding the GIL) and a plan of
// lowbit._torch_ops (holding the plan table's lock; torch.ops releases the GIL) may call the
// same object at once, and a call writes the object's arguments and its kept TMA maps: both
// entries (the bindings' launch methods, native_launch) take this lock (uncontended, a few
// nanoseconds). A copy (a linear launch's quantizer and GEMM) gets its own.
class Serialized {
 public:
  Serialized() = default;
  Serialized(const Serialized&) {}
  Serialized& operator=(const Serialized&) { return *this; }
  std::mutex& call_mutex() const { return mutex_; }

 private:
  mutable std::mutex mutex_;
};

// A launch method as the bindings expose it: under the object's call lock.
template <class L, class R, class... A>
auto serialized(R (L::*fn)(A...)) {
  return [fn](L& l, A... a) -> R {
    std::lock_guard<std::mutex> hold(l.call_mutex());
    return (l.*fn)(a...);
  };
}

// What every launch binding holds: its kernel's name (for errors), launcher and arguments.
template <class Fn, class Args, lowbit::OpKind kKind>
class Launch : public Serialized {
 public:
  // The signature's arguments (pointers aside) and the kernel's name, for a launch object
  // built from this one (QuantGemmLaunch's checks of its quantizer).
  const Args& view() const { return args_; }
  const char* kernel() const { return name_; }

 protected:
  explicit Launch(int kernel_id) {
    const auto& k = kernel_of(kernel_id, kKind);
    name_ = k.name;
    fn_ = lowbit::entry_as<Fn>(k);
  }
  void run(uintptr_t stream) { check_launch(fn_(args_, ptr<CUstream_st>(stream)), name_); }

  const char* name_;
  Fn* fn_;
  Args args_{};
};

void set_gemm_shape(lowbit::GemmArgs& a, int M, int N, int K, int64_t lda, int64_t ldb,
                    int64_t ldo) {
  a.M = M;
  a.N = N;
  a.K = K;
  a.lda = lda;
  a.ldb = ldb;
  a.ldo = ldo;
}

// A GEMM operand's scale tile -> the kernels' mode: (0, 0) one scale, (1, 0) one per row,
// else one per 128-wide block of K (`block_rows` x 128: 1 for a, 128 for b).
lowbit::ScaleMode gemm_scale_mode(int64_t tile_rows, int64_t tile_cols, int64_t block_rows,
                                  const char* operand) {
  if (tile_rows == 0 && tile_cols == 0) return lowbit::ScaleMode::kTensor;
  if (tile_rows == 1 && tile_cols == 0) return lowbit::ScaleMode::kRow;
  if (tile_rows == block_rows && tile_cols == 128) return lowbit::ScaleMode::kBlock;
  throw py::value_error(std::string(operand) + " scale tile (" + std::to_string(tile_rows) +
                        ", " + std::to_string(tile_cols) + ") is not one the GEMMs take");
}

// The arguments of a GEMM launch of signature `base` whose a operand a fused quantizer makes
// (a, its scale and zero points unset), with the launch object's map cache.
lowbit::GemmArgs fused_gemm_args(const lowbit::GemmArgs& base, lowbit::TensorMapCache* maps,
                                 uintptr_t b, uintptr_t b_scale, uintptr_t bias, uintptr_t out) {
  lowbit::GemmArgs a = base;
  a.map_cache = maps;
  a.a = nullptr;
  a.a_scale = nullptr;
  a.a_zero = nullptr;
  a.b_sum = nullptr;
  a.b = ptr<const uint8_t>(b);
  a.b_scale = ptr<const float>(b_scale);
  a.bias = ptr<const void>(bias);
  a.out = ptr<void>(out);
  return a;
}

class GemmLaunch
    : public Launch<lowbit::GemmFn, lowbit::GemmArgs, lowbit::OpKind::kFp8Gemm> {
 public:
  GemmLaunch(int kernel_id, int M, int N, int K, int64_t lda, int64_t ldb,
             int64_t a_scale_tile_rows, int64_t a_scale_tile_cols, int64_t a_scale_ld,
             int64_t b_scale_tile_rows, int64_t b_scale_tile_cols, int64_t b_scale_ld,
             int bias_dtype, int out_dtype, int64_t ldo, bool fast_accum)
      : Launch(kernel_id) {
    set_gemm_shape(args_, M, N, K, lda, ldb, ldo);
    args_.a_mode = gemm_scale_mode(a_scale_tile_rows, a_scale_tile_cols, 1, "a");
    args_.b_mode = gemm_scale_mode(b_scale_tile_rows, b_scale_tile_cols, 128, "b");
    args_.a_scale_ld = a_scale_ld;
    args_.b_scale_ld = b_scale_ld;
    args_.bias_dtype = enum_arg<lowbit::FloatType>(bias_dtype, "bias dtype");
    args_.out_dtype = enum_arg<lowbit::FloatType>(out_dtype, "out dtype");
    args_.fast_accum = fast_accum;
  }

  void launch(uintptr_t a, uintptr_t b, uintptr_t a_scale, uintptr_t b_scale, uintptr_t bias,
              uintptr_t out, uintptr_t stream) {
    args_.map_cache = &maps_;  // set per call: a copied launch keeps its own maps
    args_.a = ptr<const uint8_t>(a);
    args_.b = ptr<const uint8_t>(b);
    args_.a_scale = ptr<const float>(a_scale);
    args_.b_scale = ptr<const float>(b_scale);
    args_.bias = ptr<const void>(bias);
    args_.out = ptr<void>(out);
    run(stream);
  }

  lowbit::GemmArgs fused_args(uintptr_t b, uintptr_t b_scale, uintptr_t bias, uintptr_t out) {
    return fused_gemm_args(args_, &maps_, b, b_scale, bias, out);
  }
  void set_b_static(bool on) { args_.b_static = on; }  // GemmArgs::b_static

 private:
  lowbit::TensorMapCache maps_;  // the sm_90a kernels' TMA maps of the last call, by operand
};

// An INT8 GEMM's launch for one call signature. Scales are per tensor or per row; a_zero_mode
// 0: symmetric a, 1: one zero point, 2: one per row (then b_sum, b's row sums, is read);
// out_dtype -1: the int32 accumulator itself (int8_mm: no scales, no bias).
class Int8GemmLaunch
    : public Launch<lowbit::GemmFn, lowbit::GemmArgs, lowbit::OpKind::kInt8Gemm> {
 public:
  Int8GemmLaunch(int kernel_id, int M, int N, int K, int64_t lda, int64_t ldb,
                 bool a_scale_per_row, bool b_scale_per_row, int a_zero_mode, int bias_dtype,
                 int out_dtype, int64_t ldo)
      : Launch(kernel_id) {
    if (a_zero_mode < 0 || a_zero_mode > 2)
      throw py::value_error("a_zero_mode must be 0, 1 or 2; got " + std::to_string(a_zero_mode));
    set_gemm_shape(args_, M, N, K, lda, ldb, ldo);
    args_.a_mode = a_scale_per_row ? lowbit::ScaleMode::kRow : lowbit::ScaleMode::kTensor;
    args_.b_mode = b_scale_per_row ? lowbit::ScaleMode::kRow : lowbit::ScaleMode::kTensor;
    args_.bias_dtype = enum_arg<lowbit::FloatType>(bias_dtype, "bias dtype");
    args_.out_int32 = out_dtype == -1;
    // An int32 output is stored as 4-byte elements, as fp32's are (alignment, pair stores).
    args_.out_dtype = args_.out_int32 ? lowbit::FloatType::kF32
                                      : enum_arg<lowbit::FloatType>(out_dtype, "out dtype");
    has_zero_ = a_zero_mode != 0;
    args_.a_zero_row = a_zero_mode == 2;
  }

  void launch(uintptr_t a, uintptr_t b, uintptr_t a_scale, uintptr_t b_scale, uintptr_t bias,
              uintptr_t a_zero, uintptr_t b_sum, uintptr_t out, uintptr_t stream) {
    if (has_zero_ && (a_zero == 0 || b_sum == 0))
      throw py::value_error("a launch with zero points needs a_zero and b_sum");
    args_.map_cache = &maps_;  // set per call: a copied launch keeps its own maps
    args_.a = ptr<const uint8_t>(a);
    args_.b = ptr<const uint8_t>(b);
    args_.a_scale = ptr<const float>(a_scale);
    args_.b_scale = ptr<const float>(b_scale);
    args_.bias = ptr<const void>(bias);
    args_.a_zero = has_zero_ ? ptr<const int32_t>(a_zero) : nullptr;
    args_.b_sum = has_zero_ ? ptr<const int32_t>(b_sum) : nullptr;
    args_.out = ptr<void>(out);
    run(stream);
  }

  // (Int8LinearLaunch takes no launch with zero points for a fused kernel: see has_zero.)
  lowbit::GemmArgs fused_args(uintptr_t b, uintptr_t b_scale, uintptr_t bias, uintptr_t out) {
    return fused_gemm_args(args_, &maps_, b, b_scale, bias, out);
  }
  bool has_zero() const { return has_zero_; }
  void set_b_static(bool on) { args_.b_static = on; }  // GemmArgs::b_static

 private:
  bool has_zero_ = false;
  lowbit::TensorMapCache maps_;
};

// Split counters of WXA16GemmLaunch objects that died, by device and stream. They are never
// freed: cudaFree synchronizes the device, which a CUDA graph capture under way in any thread
// forbids, and a launch object may die at any point (the garbage collector). A later launch
// object takes one back for the same device and stream only: stream order then puts its
// memset after the last kernel that used the buffer. Small (4 bytes a row tile of one
// signature) and bounded by the largest number of signatures alive per stream at once.
struct Counters {
  int device;
  uintptr_t stream;
  void* p;
  size_t bytes;
};
std::mutex g_retired_mutex;
std::vector<Counters>* g_retired = new std::vector<Counters>;  // never destroyed

void retire_counters(const Counters& c) noexcept {
  try {
    std::lock_guard<std::mutex> lock(g_retired_mutex);
    g_retired->push_back(c);
  } catch (...) {  // (no memory for the list: the buffer is lost, a few bytes)
  }
}

void* take_retired_counters(int device, uintptr_t stream, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_retired_mutex);
  for (size_t i = 0; i < g_retired->size(); ++i) {
    const Counters& c = (*g_retired)[i];
    if (c.device == device && c.stream == stream && c.bytes >= bytes) {
      void* p = c.p;
      (*g_retired)[i] = g_retired->back();
      g_retired->pop_back();
      return p;
    }
  }
  return nullptr;
}

// A mixed-input (W4A16 / W8A16) GEMM's launch for one call signature. The constructor plans
// the kernel's split of K on the current device (the launch then needs counter_bytes of
// counters, zero on entry and left zero, and partial_bytes of scratch, both 16-byte aligned;
// 0: none); group 0 means one scale per row of w.
// (Its launcher also plans, so it calls fn_ itself rather than through Launch::run.)
class WXA16GemmLaunch
    : public Launch<lowbit::WXA16GemmFn, lowbit::WXA16GemmArgs, lowbit::OpKind::kWxa16Gemm> {
 public:
  WXA16GemmLaunch(int kernel_id, int bits, int M, int N, int K, int group, int64_t ldx,
                  int x_dtype, int64_t ldw, int scale_dtype, int64_t scale_ld, bool has_zeros,
                  int64_t zero_ld, int bias_dtype, int64_t ldo)
      : Launch(kernel_id) {
    if (bits != 4 && bits != 8)
      throw py::value_error("bits must be 4 or 8; got " + std::to_string(bits));
    if (group != 0 && group != 32 && group != 64 && group != 128)
      throw py::value_error("group must be 0, 32, 64 or 128; got " + std::to_string(group));
    if (M < 0 || N < 0 || K < 0)
      throw py::value_error("M, N and K must be >= 0");
    args_.bits = bits;
    args_.M = M;
    args_.N = N;
    args_.K = K;
    args_.group = group;
    args_.ldx = ldx;
    args_.x_dtype = enum_arg<lowbit::FloatType>(x_dtype, "x dtype");
    if (args_.x_dtype == lowbit::FloatType::kF32)
      throw py::value_error("x dtype must be bfloat16 or float16");
    args_.ldw = ldw;
    args_.scale_dtype = enum_arg<lowbit::FloatType>(scale_dtype, "scale dtype");
    args_.scale_ld = scale_ld;
    has_zeros_ = has_zeros;
    // The plan picks the kernel a launch will run, which depends on whether zero points come:
    // a non-null placeholder says they will (the plan never reads it; launch sets the real one).
    static const uint8_t kZerosPlaceholder = 0;
    args_.zeros = has_zeros ? &kZerosPlaceholder : nullptr;
    args_.zero_ld = zero_ld;
    args_.bias_dtype = enum_arg<lowbit::FloatType>(bias_dtype, "bias dtype");
    args_.ldo = ldo;
    check_launch(fn_(args_, nullptr, true), name_);
  }

  size_t counter_bytes() const { return args_.counter_bytes; }
  size_t partial_bytes() const { return args_.partial_bytes; }
  int splits() const { return args_.splits; }
  int split_from() const { return args_.split_from; }
  int parts() const { return args_.parts > 1 ? args_.parts : 1; }

  void launch(uintptr_t x, uintptr_t w, uintptr_t scales, uintptr_t zeros, uintptr_t bias,
              uintptr_t counters, uintptr_t partials, uintptr_t out, uintptr_t stream) {
    if (has_zeros_ && zeros == 0) throw py::value_error("this launch needs zeros");
    if (args_.counter_bytes > 0 && (counters == 0 || counters % 16))
      throw py::value_error("this launch needs 16-byte aligned zeroed counters of " +
                            std::to_string(args_.counter_bytes) + " bytes");
    if (args_.partial_bytes > 0 && (partials == 0 || partials % 16))
      throw py::value_error("this launch needs 16-byte aligned partials of " +
                            std::to_string(args_.partial_bytes) + " bytes");
    // The pointers go into a copy, so that args_ stays the signature's (calls are one at a
    // time: Serialized).
    lowbit::WXA16GemmArgs a = args_;
    a.map_cache = &maps_;
    a.x = ptr<const void>(x);
    a.w = ptr<const void>(w);
    a.scales = ptr<const void>(scales);
    a.zeros = has_zeros_ ? ptr<const uint8_t>(zeros) : nullptr;
    a.bias = ptr<const void>(bias);
    a.counters = ptr<unsigned>(counters);
    a.partials = ptr<void>(partials);
    a.out = ptr<void>(out);
    check_launch(fn_(a, ptr<CUstream_st>(stream), false), name_);
  }

  // The launch of a plan (lowbit._torch_ops), whose workspace holds the partials only: a
  // split's arrival counters must be zero when a launch starts, and each launch leaves them
  // zero, so they are this object's own, one zeroed buffer per stream (launches on one
  // stream run in order; two streams must not share counters). False, launching nothing, on
  // a capturing stream: every launch in a graph needs counters of its own (two graphs
  // captured on one stream may replay concurrently), which the Python path gives it; and
  // when no counters could be had (the Python path's come from torch's allocator).
  bool launch_native(uintptr_t x, uintptr_t w, uintptr_t scales, uintptr_t zeros,
                     uintptr_t bias, uintptr_t partials, uintptr_t out, uintptr_t stream) {
    uintptr_t counters = 0;
    if (args_.counter_bytes > 0) {
      cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(ptr<CUstream_st>(stream), &status) != cudaSuccess) {
        (void)cudaGetLastError();  // e.g. the legacy stream while another one captures
        return false;
      }
      if (status != cudaStreamCaptureStatusNone) return false;
      counters = counters_for(stream);
      if (counters == 0) return false;
    }
    launch(x, w, scales, zeros, bias, counters, partials, out, stream);
    return true;
  }

  bool is_dequant() const { return std::strstr(name_, "_dequant") != nullptr; }

  WXA16GemmLaunch(const WXA16GemmLaunch&) = delete;
  WXA16GemmLaunch& operator=(const WXA16GemmLaunch&) = delete;
  ~WXA16GemmLaunch() {
    for (const Counters& c : counters_) retire_counters(c);
  }

 private:
  lowbit::TensorMapCache maps_;  // the sm_90a kernel's TMA maps of the last call
  // A zeroed buffer of counter_bytes on this device for `stream` (kept for the object's
  // life), or 0 when none could be had (the CUDA error is cleared: the call then takes the
  // Python path).
  uintptr_t counters_for(uintptr_t stream) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    for (const Counters& c : counters_)
      if (c.device == device && c.stream == stream) return reinterpret_cast<uintptr_t>(c.p);
    Counters c{device, stream, nullptr, args_.counter_bytes};
    try {
      counters_.reserve(counters_.size() + 1);
    } catch (const std::bad_alloc&) {
      return 0;
    }
    c.p = take_retired_counters(device, stream, c.bytes);
    if (c.p == nullptr && cudaMalloc(&c.p, c.bytes) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    if (cudaMemsetAsync(c.p, 0, c.bytes, ptr<CUstream_st>(stream)) != cudaSuccess) {
      (void)cudaGetLastError();
      retire_counters(c);
      return 0;
    }
    counters_.push_back(c);  // (room reserved above)
    return reinterpret_cast<uintptr_t>(c.p);
  }

  bool has_zeros_ = false;
  std::vector<Counters> counters_;  // per device and stream
};

// A quantizer's scale tile -> the launchers' granularity (and group).
lowbit::quant::Granularity quant_granularity(int64_t tile_rows, int64_t tile_cols,
                                             int64_t& group) {
  using G = lowbit::quant::Granularity;
  if (tile_rows == 0 && tile_cols == 0) return G::kTensor;
  if (tile_rows == 1 && tile_cols == 0) return G::kRow;
  if (tile_rows == 1 && (tile_cols == 32 || tile_cols == 64 || tile_cols == 128)) {
    group = tile_cols;
    return G::kGroup;
  }
  if (tile_rows == 128 && tile_cols == 128) return G::kBlock128;
  throw py::value_error("quantize scale tile (" + std::to_string(tile_rows) + ", " +
                        std::to_string(tile_cols) + ") is not one the kernels take");
}

// The fields of a quantize launch that every family shares.
void set_view(lowbit::quant::QuantizeView& v, int x_dtype, int64_t rows, int64_t cols,
              int64_t row_stride, int64_t col_stride, int64_t tile_rows, int64_t tile_cols) {
  v.x_type = enum_arg<lowbit::FloatType>(x_dtype, "x dtype");
  v.rows = rows;
  v.cols = cols;
  v.row_stride = row_stride;
  v.col_stride = col_stride;
  v.granularity = quant_granularity(tile_rows, tile_cols, v.group);
}

void set_view(lowbit::quant::DequantizeView& v, int64_t rows, int64_t cols, int64_t row_stride,
              int64_t col_stride, int64_t scale_tile_rows, int64_t scale_tile_cols,
              int64_t scale_ld, int out_dtype) {
  v.rows = rows;
  v.cols = cols;
  v.row_stride = row_stride;
  v.col_stride = col_stride;
  v.scale_tile_rows = scale_tile_rows;
  v.scale_tile_cols = scale_tile_cols;
  v.scale_ld = scale_ld;
  v.out_type = enum_arg<lowbit::FloatType>(out_dtype, "out dtype");
}

class QuantizeLaunch : public Launch<lowbit::fp8::QuantizeFn, lowbit::fp8::QuantizeArgs,
                                     lowbit::OpKind::kFp8Quantize> {
 public:
  QuantizeLaunch(int kernel_id, int x_dtype, int64_t rows, int64_t cols, int64_t row_stride,
                 int64_t col_stride, int fmt, bool saturate, int64_t tile_rows,
                 int64_t tile_cols, bool hw_cvt)
      : Launch(kernel_id) {
    set_view(args_, x_dtype, rows, cols, row_stride, col_stride, tile_rows, tile_cols);
    args_.fmt = enum_arg<lowbit::Fp8Format>(fmt, "fp8 format");
    args_.saturate = saturate;
    args_.hw_cvt = hw_cvt;
  }

  void launch(uintptr_t x, uintptr_t q, uintptr_t scale_in, uintptr_t scale_out,
              uintptr_t workspace, uintptr_t stream) {
    args_.x = ptr<const void>(x);
    args_.q = ptr<void>(q);
    args_.scale_in = ptr<const float>(scale_in);
    args_.scale_out = ptr<float>(scale_out);
    args_.workspace = ptr<uint32_t>(workspace);
    run(stream);
  }
};

class DequantizeLaunch : public Launch<lowbit::fp8::DequantizeFn, lowbit::fp8::DequantizeArgs,
                                       lowbit::OpKind::kFp8Dequantize> {
 public:
  DequantizeLaunch(int kernel_id, int64_t rows, int64_t cols, int64_t row_stride,
                   int64_t col_stride, int fmt, int64_t scale_tile_rows, int64_t scale_tile_cols,
                   int64_t scale_ld, int out_dtype)
      : Launch(kernel_id) {
    args_.fmt = enum_arg<lowbit::Fp8Format>(fmt, "fp8 format");
    set_view(args_, rows, cols, row_stride, col_stride, scale_tile_rows, scale_tile_cols,
             scale_ld, out_dtype);
  }

  void launch(uintptr_t q, uintptr_t scale, uintptr_t out, uintptr_t stream) {
    args_.q = ptr<const void>(q);
    args_.scale = ptr<const float>(scale);
    args_.out = ptr<void>(out);
    run(stream);
  }
};

class Int8QuantizeLaunch : public Launch<lowbit::int8::QuantizeFn, lowbit::int8::QuantizeArgs,
                                         lowbit::OpKind::kInt8Quantize> {
 public:
  Int8QuantizeLaunch(int kernel_id, int x_dtype, int64_t rows, int64_t cols,
                     int64_t row_stride, int64_t col_stride, bool symmetric, int64_t tile_rows,
                     int64_t tile_cols)
      : Launch(kernel_id) {
    set_view(args_, x_dtype, rows, cols, row_stride, col_stride, tile_rows, tile_cols);
    args_.symmetric = symmetric;
  }

  bool symmetric() const { return args_.symmetric; }

  void launch(uintptr_t x, uintptr_t q, uintptr_t scale_in, uintptr_t zero_in,
              uintptr_t scale_out, uintptr_t zero_out, uintptr_t workspace, uintptr_t stream) {
    args_.x = ptr<const void>(x);
    args_.q = ptr<void>(q);
    args_.scale_in = ptr<const float>(scale_in);
    args_.zero_in = ptr<const int32_t>(zero_in);
    args_.scale_out = ptr<float>(scale_out);
    args_.zero_out = ptr<int32_t>(zero_out);
    args_.workspace = ptr<uint32_t>(workspace);
    run(stream);
  }
};

class Int8DequantizeLaunch
    : public Launch<lowbit::int8::DequantizeFn, lowbit::int8::DequantizeArgs,
                    lowbit::OpKind::kInt8Dequantize> {
 public:
  Int8DequantizeLaunch(int kernel_id, int64_t rows, int64_t cols, int64_t row_stride,
                       int64_t col_stride, int64_t scale_tile_rows, int64_t scale_tile_cols,
                       int64_t scale_ld, int out_dtype)
      : Launch(kernel_id) {
    set_view(args_, rows, cols, row_stride, col_stride, scale_tile_rows, scale_tile_cols,
             scale_ld, out_dtype);
  }

  void launch(uintptr_t q, uintptr_t scale, uintptr_t zero, uintptr_t out, uintptr_t stream) {
    args_.q = ptr<const void>(q);
    args_.scale = ptr<const float>(scale);
    args_.zero = ptr<const int32_t>(zero);
    args_.out = ptr<void>(out);
    run(stream);
  }
};

class Int4QuantizeLaunch : public Launch<lowbit::Int4QuantizeFn, lowbit::Int4QuantizeArgs,
                                         lowbit::OpKind::kInt4Quantize> {
 public:
  Int4QuantizeLaunch(int kernel_id, int w_dtype, int64_t rows, int64_t cols, int64_t row_stride,
                     int64_t col_stride, int group, bool symmetric)
      : Launch(kernel_id) {
    if (group != 32 && group != 64 && group != 128)
      throw py::value_error("group must be 32, 64 or 128; got " + std::to_string(group));
    if (rows < 0 || cols < 0 || cols % group)
      throw py::value_error("rows and cols must be >= 0, cols a multiple of the group");
    args_.w_type = enum_arg<lowbit::FloatType>(w_dtype, "w dtype");
    args_.rows = rows;
    args_.cols = cols;
    args_.row_stride = row_stride;
    args_.col_stride = col_stride;
    args_.group = group;
    args_.symmetric = symmetric;
  }

  void launch(uintptr_t w, uintptr_t q, uintptr_t scales, uintptr_t zeros, uintptr_t stream) {
    args_.w = ptr<const void>(w);
    args_.q = ptr<uint8_t>(q);
    args_.scales = ptr<void>(scales);
    args_.zeros = ptr<uint8_t>(zeros);
    run(stream);
  }
  bool symmetric() const { return args_.symmetric; }
};

// A quantized linear layer's forward as one host call: the activation quantizer writes q and
// its scales (and zero points) into a workspace the caller allocates per call, and the GEMM
// reads them from there. Workspace layout (bytes): q at 0, the scales at scale_offset, the
// zero points of asymmetric INT8 activations at zero_offset, the dynamic per-tensor
// quantizer's words at amax_offset (-1: none). Each launch keeps its own copy of the two
// launch objects, so the GEMM's weight map is encoded once per layer.
//
// weight_early: the GEMM launched after the quantizer may load its first stages of the
// weight before its grid-dependency wait (GemmArgs::b_static): the quantizer does not write
// the weight, and it lets the GEMM start only after its own wait, when every earlier kernel
// of the stream has completed.
//
// fused_kernel_id >= 0: the family's quantizer-in-the-GEMM kernel (a LinearFn) runs the
// forward instead, one launch that reads x and writes out (the workspace is not touched): for
// the per-token quantizer (the launch is then given no x_scale) or the static one with a
// per-tensor scale (given it), on bf16 / fp16 rows with unit column stride.
template <class QuantLaunch, class GemmLaunchT, lowbit::OpKind kLinearKind>
class QuantGemmLaunch : public Serialized {
 public:
  QuantGemmLaunch(const QuantLaunch& quant, const GemmLaunchT& gemm, int64_t scale_offset,
                  int64_t zero_offset, int64_t amax_offset, int fused_kernel_id,
                  bool weight_early)
      : quant_(quant), gemm_(gemm), scale_offset_(scale_offset), zero_offset_(zero_offset),
        amax_offset_(amax_offset), weight_early_(weight_early) {
    gemm_.set_b_static(weight_early);
    auto optional_ok = [](int64_t off) { return off == -1 || (off >= 0 && off % 4 == 0); };
    if (scale_offset <= 0 || scale_offset % 16 || !optional_ok(zero_offset) ||
        !optional_ok(amax_offset))
      throw py::value_error("workspace offsets: scale_offset must be a positive multiple of "
                            "16, zero_offset and amax_offset -1 or a multiple of 4");
    if (fused_kernel_id >= 0) {
      const auto& k = kernel_of(fused_kernel_id, kLinearKind);
      const auto& v = quant.view();
      const bool per_token = v.granularity == lowbit::quant::Granularity::kRow &&
                             std::strstr(quant.kernel(), "_quant_per_token") != nullptr;
      const bool static_tensor = v.granularity == lowbit::quant::Granularity::kTensor &&
                                 std::strstr(quant.kernel(), "_quant_static") != nullptr;
      if (!(per_token || static_tensor) || v.col_stride != 1 ||
          v.x_type == lowbit::FloatType::kF32)
        throw py::value_error(std::string(k.name) + " takes the per-token quantizer or the "
                              "static per-tensor one, on bf16 / fp16 rows with unit column "
                              "stride");
      fused_ = lowbit::entry_as<lowbit::LinearFn>(k);
      fused_name_ = k.name;
      act_.x_type = v.x_type;
      act_.ldx = v.rows > 1 ? v.row_stride : v.cols;
      per_row_ = per_token;
    }
  }

  // The kernel that runs the forward when fused, else None.
  py::object fused() const { return fused_ ? py::object(py::str(fused_name_)) : py::none(); }
  bool weight_early() const { return weight_early_; }

 protected:
  // The fused forward, when there is one: true once launched. A per-row quantizer computes
  // its scales (no x_scale); a per-tensor one is given its scale.
  bool launch_fused(uintptr_t x, uintptr_t x_scale, uintptr_t b, uintptr_t b_scale,
                    uintptr_t bias, uintptr_t out, uintptr_t stream) {
    if (fused_ == nullptr) return false;
    if ((x_scale == 0) != per_row_)
      throw py::value_error(std::string(fused_name_) + (per_row_ ? " computes per-row scales: "
                                                                   "no x_scale"
                                                                 : " needs a static x_scale"));
    lowbit::ActQuantArgs act = act_;
    act.x = ptr<const void>(x);
    act.x_scale = ptr<const float>(x_scale);
    check_launch(fused_(gemm_.fused_args(b, b_scale, bias, out), act, ptr<CUstream_st>(stream)),
                 fused_name_);
    return true;
  }

  // The workspace's regions: q, scales, zero points (0: none), the amax words (0: none).
  struct Regions {
    uintptr_t q, scales, zeros, amax;
  };
  Regions regions(uintptr_t workspace) const {
    if (workspace == 0 || workspace % 16) throw py::value_error("workspace must be 16-byte aligned");
    auto at = [&](int64_t off) { return off >= 0 ? workspace + off : uintptr_t(0); };
    return {workspace, workspace + scale_offset_, at(zero_offset_), at(amax_offset_)};
  }

  QuantLaunch quant_;
  GemmLaunchT gemm_;
  int64_t scale_offset_, zero_offset_, amax_offset_;
  bool weight_early_;
  lowbit::LinearFn* fused_ = nullptr;
  const char* fused_name_ = nullptr;
  lowbit::ActQuantArgs act_{};
  bool per_row_ = false;
};

class Fp8LinearLaunch
    : public QuantGemmLaunch<QuantizeLaunch, GemmLaunch, lowbit::OpKind::kFp8Linear> {
 public:
  Fp8LinearLaunch(const QuantizeLaunch& quant, const GemmLaunch& gemm, int64_t scale_offset,
                  int64_t amax_offset, int fused_kernel_id, bool weight_early)
      : QuantGemmLaunch(quant, gemm, scale_offset, -1, amax_offset, fused_kernel_id,
                        weight_early) {
    const auto& v = quant.view();
    if (fused_ && (v.fmt != lowbit::Fp8Format::kE4M3FN || !v.saturate))
      throw py::value_error(std::string(fused_name_) + " quantizes to saturating e4m3fn only");
  }

  void launch(uintptr_t x, uintptr_t x_scale, uintptr_t b, uintptr_t b_scale, uintptr_t bias,
              uintptr_t workspace, uintptr_t out, uintptr_t stream) {
    if (launch_fused(x, x_scale, b, b_scale, bias, out, stream)) return;
    const Regions r = regions(workspace);
    quant_.launch(x, r.q, x_scale, r.scales, r.amax, stream);
    gemm_.launch(r.q, b, r.scales, b_scale, bias, out, stream);
  }
};

// INT8: asymmetric activations' zero points go from the quantizer (computed, or a copy of the
// static x_zero) to the GEMM through the workspace; b_sum holds the weight's row sums.
class Int8LinearLaunch
    : public QuantGemmLaunch<Int8QuantizeLaunch, Int8GemmLaunch, lowbit::OpKind::kInt8Linear> {
 public:
  Int8LinearLaunch(const Int8QuantizeLaunch& quant, const Int8GemmLaunch& gemm,
                   int64_t scale_offset, int64_t zero_offset, int64_t amax_offset,
                   int fused_kernel_id, bool weight_early)
      : QuantGemmLaunch(quant, gemm, scale_offset, zero_offset, amax_offset, fused_kernel_id,
                        weight_early) {
    if (fused_ && (!quant.symmetric() || gemm.has_zero()))
      throw py::value_error(std::string(fused_name_) + " quantizes symmetric activations only");
  }

  void launch(uintptr_t x, uintptr_t x_scale, uintptr_t x_zero, uintptr_t b, uintptr_t b_scale,
              uintptr_t b_sum, uintptr_t bias, uintptr_t workspace, uintptr_t out,
              uintptr_t stream) {
    if (launch_fused(x, x_scale, b, b_scale, bias, out, stream)) return;
    const Regions r = regions(workspace);
    quant_.launch(x, r.q, x_scale, x_zero, r.scales, r.zeros, r.amax, stream);
    gemm_.launch(r.q, b, r.scales, b_scale, bias, r.zeros, b_sum, out, stream);
  }
};

// The C++ registered ops (csrc/torch/plans.cpp, built into lowbit._torch_ops against
// torch) call a launch object they were handed as an int through one of these plain
// functions, since the two libraries share no C++ types: launch(self, pointers, stream, error,
// error_size) -> 0, else 1 with the error text in `error` (native_launch).
template <class L, class Launch>
int native_launch(void* self, char* error, size_t error_size, Launch&& launch) {
  try {
    L& l = *static_cast<L*>(self);
    std::lock_guard<std::mutex> hold(l.call_mutex());
    launch(l);
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(error, error_size, "%s", e.what());
    return 1;
  }
}

// The pointers of a plan are the op's tensors in its argument order, then the workspace and
// the outputs (csrc/torch/plans.cpp).
int gemm_native(void* self, const uintptr_t* p, uintptr_t stream, char* error,
                size_t error_size) {
  return native_launch<GemmLaunch>(self, error, error_size, [&](GemmLaunch& l) {
    l.launch(p[0], p[1], p[2], p[3], p[4], p[6], stream);  // a, b, a_scale, b_scale, bias, out
  });
}

int quantize_native(void* self, const uintptr_t* p, uintptr_t stream, char* error,
                    size_t error_size) {
  return native_launch<QuantizeLaunch>(self, error, error_size, [&](QuantizeLaunch& l) {
    l.launch(p[0], p[3], p[1], p[4], p[2], stream);  // x, q, scale_in, scale_out, workspace
  });
}

// int8_mm(a, b): a, b, workspace, out.
int int8_mm_native(void* self, const uintptr_t* p, uintptr_t stream, char* error,
                   size_t error_size) {
  return native_launch<Int8GemmLaunch>(self, error, error_size, [&](Int8GemmLaunch& l) {
    l.launch(p[0], p[1], 0, 0, 0, 0, 0, p[3], stream);
  });
}

// int8_gemm(a, b, a_scale, b_scale, bias, out_dtype, a_zero): a, b, a_scale, b_scale, bias,
// a_zero, workspace, out. Plans are made without zero points only (their row sums of b are
// one more kernel per call): a_zero is 0 and no row sums are read.
int int8_gemm_native(void* self, const uintptr_t* p, uintptr_t stream, char* error,
                     size_t error_size) {
  return native_launch<Int8GemmLaunch>(self, error, error_size, [&](Int8GemmLaunch& l) {
    l.launch(p[0], p[1], p[2], p[3], p[4], p[5], 0, p[7], stream);
  });
}

// quantize_int8(x, scale, zero, ...): x, scale, zero, workspace, q, scale_out, zero_out (an
// empty tensor when symmetric, which the kernels must be given as 0).
int int8_quantize_native(void* self, const uintptr_t* p, uintptr_t stream, char* error,
                         size_t error_size) {
  return native_launch<Int8QuantizeLaunch>(self, error, error_size, [&](Int8QuantizeLaunch& l) {
    l.launch(p[0], p[4], p[1], p[2], p[5], l.symmetric() ? 0 : p[6], p[3], stream);
  });
}

int fp8_linear_native(void* self, const uintptr_t* p, uintptr_t stream, char* error,
                      size_t error_size) {
  return native_launch<Fp8LinearLaunch>(self, error, error_size, [&](Fp8LinearLaunch& l) {
    l.launch(p[0], p[1], p[2], p[3], p[4], p[5], p[6], stream);
  });
}

int int8_linear_native(void* self, const uintptr_t* p, uintptr_t stream, char* error,
                       size_t error_size) {
  return native_launch<Int8LinearLaunch>(self, error, error_size, [&](Int8LinearLaunch& l) {
    l.launch(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], stream);
  });
}

// w4a16_gemm(x, qweight, scales, zeros, group_size, perm, bias) and w8a16_gemm(x, w,
// w_scale, bias): x, w, scales, zeros (0 for w8a16), bias, workspace (the partials), out.
// Plans are made without perm (its gather is a second kernel). 2: declined (a capturing
// stream), the caller takes the Python path.
int wxa16_gemm_native(void* self, const uintptr_t* p, uintptr_t stream, char* error,
                      size_t error_size) {
  bool launched = false;
  const int rc = native_launch<WXA16GemmLaunch>(self, error, error_size, [&](WXA16GemmLaunch& l) {
    launched = l.launch_native(p[0], p[1], p[2], p[3], p[4], p[5], p[6], stream);
  });
  return rc == 0 && !launched ? 2 : rc;
}

// int4_quantize(w, group_size, symmetric): w, workspace, q, scales, zeros (an empty tensor
// when symmetric, which the kernel must be given as 0).
int int4_quantize_native(void* self, const uintptr_t* p, uintptr_t stream, char* error,
                         size_t error_size) {
  return native_launch<Int4QuantizeLaunch>(self, error, error_size, [&](Int4QuantizeLaunch& l) {
    l.launch(p[0], p[2], p[3], l.symmetric() ? 0 : p[4], stream);
  });
}

// dequantize_fp8(q, scale, out_dtype): q, scale, workspace (none), out.
int dequantize_native(void* self, const uintptr_t* p, uintptr_t stream, char* error,
                      size_t error_size) {
  return native_launch<DequantizeLaunch>(self, error, error_size, [&](DequantizeLaunch& l) {
    l.launch(p[0], p[1], p[3], stream);
  });
}

// dequantize_int8(q, scale, zero, out_dtype): q, scale, zero (0 without one), workspace
// (none), out.
int int8_dequantize_native(void* self, const uintptr_t* p, uintptr_t stream, char* error,
                           size_t error_size) {
  return native_launch<Int8DequantizeLaunch>(self, error, error_size,
                                             [&](Int8DequantizeLaunch& l) {
                                               l.launch(p[0], p[1], p[2], p[4], stream);
                                             });
}

// (object address, entry address) for the Python side to hand to lowbit._torch_ops; the
// Python object must outlive every use.
template <class L>
py::tuple native_handle(L& launch,
                        int (*entry)(void*, const uintptr_t*, uintptr_t, char*, size_t)) {
  return py::make_tuple(reinterpret_cast<uintptr_t>(&launch), reinterpret_cast<uintptr_t>(entry));
}
#endif  // LOWBIT_WITH_CUDA

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lowbit compiled kernels (torch-free: raw pointers, sizes, strides, stream)";
  m.def("build_info", &build_info, "How this module was built: CUDA yes/no, archs, versions");
  m.def("device_count", &device_count, "CUDA devices visible to the runtime (0 without a driver)");
  m.def("device_info", &device_info, py::arg("index"), "Name, capability, SMs, L2 of a device");
  m.def("driver_version", &driver_version, "CUDA driver version, 0 without a driver");
  m.def("enums", &enums, "The codes of the enums the launch bindings take, by name");
  m.def("kernels", &kernels,
        "(name, op kind, min arch, kernel id) of every kernel compiled into this build");
#ifdef LOWBIT_WITH_CUDA
  m.def("set_programmatic_launch", &lowbit::set_programmatic_launch, py::arg("on"),
        "Launch the sm_90 GEMMs and quantizers as programmatic dependent launches (on by default)");
  m.def("programmatic_launch", &lowbit::programmatic_launch,
        "Whether the sm_90 GEMMs and quantizers launch as programmatic dependent launches");
  py::class_<GemmLaunch>(m, "GemmLaunch",
                         "An FP8 GEMM kernel's launch for one call signature: "
                         "out[m, n] = sum_k a[m, k] b[n, k] * scales (+ bias[n])")
      .def(py::init<int, int, int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                    int64_t, int64_t, int, int, int64_t, bool>(),
           py::arg("kernel_id"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("lda"),
           py::arg("ldb"), py::arg("a_scale_tile_rows"), py::arg("a_scale_tile_cols"),
           py::arg("a_scale_ld"), py::arg("b_scale_tile_rows"), py::arg("b_scale_tile_cols"),
           py::arg("b_scale_ld"), py::arg("bias_dtype"), py::arg("out_dtype"), py::arg("ldo"),
           py::arg("fast_accum"))
      .def("launch", serialized(&GemmLaunch::launch),
           py::arg("a"), py::arg("b"), py::arg("a_scale"), py::arg("b_scale"), py::arg("bias"),
           py::arg("out"), py::arg("stream"))
      .def("native", [](GemmLaunch& l) { return native_handle(l, &gemm_native); },
           "(address, launch function) for lowbit._torch_ops; the object must outlive its use");
  py::class_<Int8GemmLaunch>(m, "Int8GemmLaunch",
                             "An INT8 GEMM kernel's launch for one call signature: the exact "
                             "int32 product, or (acc - a_zero * b_sum) * scales (+ bias)")
      .def(py::init<int, int, int, int, int64_t, int64_t, bool, bool, int, int, int, int64_t>(),
           py::arg("kernel_id"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("lda"),
           py::arg("ldb"), py::arg("a_scale_per_row"), py::arg("b_scale_per_row"),
           py::arg("a_zero_mode"), py::arg("bias_dtype"), py::arg("out_dtype"), py::arg("ldo"))
      .def("launch", serialized(&Int8GemmLaunch::launch),
           py::arg("a"), py::arg("b"), py::arg("a_scale"), py::arg("b_scale"), py::arg("bias"),
           py::arg("a_zero"), py::arg("b_sum"), py::arg("out"), py::arg("stream"))
      .def("native_mm", [](Int8GemmLaunch& l) { return native_handle(l, &int8_mm_native); },
           "as GemmLaunch.native, for int8_mm's plans")
      .def("native", [](Int8GemmLaunch& l) { return native_handle(l, &int8_gemm_native); },
           "as GemmLaunch.native, for int8_gemm's plans (no zero points)");
  py::class_<WXA16GemmLaunch>(m, "WXA16GemmLaunch",
                              "A mixed-input (W4A16 / W8A16) GEMM kernel's launch for one call "
                              "signature: out = x @ ((w - zeros) * scales).T (+ bias)")
      .def(py::init<int, int, int, int, int, int, int64_t, int, int64_t, int, int64_t, bool,
                    int64_t, int, int64_t>(),
           py::arg("kernel_id"), py::arg("bits"), py::arg("M"), py::arg("N"), py::arg("K"),
           py::arg("group"), py::arg("ldx"), py::arg("x_dtype"), py::arg("ldw"),
           py::arg("scale_dtype"), py::arg("scale_ld"), py::arg("has_zeros"), py::arg("zero_ld"),
           py::arg("bias_dtype"), py::arg("ldo"))
      .def_property_readonly("counter_bytes", &WXA16GemmLaunch::counter_bytes)
      .def_property_readonly("partial_bytes", &WXA16GemmLaunch::partial_bytes)
      .def_property_readonly("splits", &WXA16GemmLaunch::splits)
      .def_property_readonly("split_from", &WXA16GemmLaunch::split_from,
                             "the first tile split `splits` ways where only a grid's last "
                             "partial wave is split (sm_90a wgmma kernel), else 0")
      .def_property_readonly("parts", &WXA16GemmLaunch::parts,
                             "the decode kernel's K parts per CTA (summed in shared memory; "
                             "1: none)")
      .def("launch", serialized(&WXA16GemmLaunch::launch),
           py::arg("x"), py::arg("w"), py::arg("scales"), py::arg("zeros"), py::arg("bias"),
           py::arg("counters"), py::arg("partials"), py::arg("out"), py::arg("stream"))
      .def("native",
           [](WXA16GemmLaunch& l) {
             // The dequantizer writes an [N, K] weight, not the product: no plan launches it.
             if (l.is_dequant()) throw py::value_error("the dequantize kernel has no plan");
             return native_handle(l, &wxa16_gemm_native);
           },
           "as GemmLaunch.native, for w4a16_gemm's and w8a16_gemm's plans");
  py::class_<QuantizeLaunch>(m, "QuantizeLaunch",
                             "An FP8 quantize kernel's launch for one call signature: "
                             "q = encode(x * (1 / scale)), static or dynamic scales")
      .def(py::init<int, int, int64_t, int64_t, int64_t, int64_t, int, bool, int64_t, int64_t,
                    bool>(),
           py::arg("kernel_id"), py::arg("x_dtype"), py::arg("rows"), py::arg("cols"),
           py::arg("row_stride"), py::arg("col_stride"), py::arg("fmt"), py::arg("saturate"),
           py::arg("tile_rows"), py::arg("tile_cols"), py::arg("hw_cvt"))
      .def("launch", serialized(&QuantizeLaunch::launch),
           py::arg("x"), py::arg("q"), py::arg("scale_in"), py::arg("scale_out"),
           py::arg("workspace"), py::arg("stream"))
      .def("native", [](QuantizeLaunch& l) { return native_handle(l, &quantize_native); },
           "as GemmLaunch.native");
  py::class_<DequantizeLaunch>(m, "DequantizeLaunch",
                               "An FP8 dequantize kernel's launch for one call signature: "
                               "out = decode(q) * scale")
      .def(py::init<int, int64_t, int64_t, int64_t, int64_t, int, int64_t, int64_t, int64_t,
                    int>(),
           py::arg("kernel_id"), py::arg("rows"), py::arg("cols"), py::arg("row_stride"),
           py::arg("col_stride"), py::arg("fmt"), py::arg("scale_tile_rows"),
           py::arg("scale_tile_cols"), py::arg("scale_ld"), py::arg("out_dtype"))
      .def("launch", serialized(&DequantizeLaunch::launch),
           py::arg("q"), py::arg("scale"), py::arg("out"), py::arg("stream"))
      .def("native", [](DequantizeLaunch& l) { return native_handle(l, &dequantize_native); },
           "as GemmLaunch.native");
  py::class_<Int8QuantizeLaunch>(m, "Int8QuantizeLaunch",
                                 "An INT8 quantize kernel's launch for one call signature: "
                                 "q = clamp(rint(x * (1 / scale)) + zero), static or dynamic "
                                 "scales, symmetric or asymmetric")
      .def(py::init<int, int, int64_t, int64_t, int64_t, int64_t, bool, int64_t, int64_t>(),
           py::arg("kernel_id"), py::arg("x_dtype"), py::arg("rows"), py::arg("cols"),
           py::arg("row_stride"), py::arg("col_stride"), py::arg("symmetric"),
           py::arg("tile_rows"), py::arg("tile_cols"))
      .def("launch", serialized(&Int8QuantizeLaunch::launch), py::arg("x"), py::arg("q"),
           py::arg("scale_in"), py::arg("zero_in"), py::arg("scale_out"), py::arg("zero_out"),
           py::arg("workspace"), py::arg("stream"))
      .def("native",
           [](Int8QuantizeLaunch& l) { return native_handle(l, &int8_quantize_native); },
           "as GemmLaunch.native");
  py::class_<Int8DequantizeLaunch>(m, "Int8DequantizeLaunch",
                                   "An INT8 dequantize kernel's launch for one call signature: "
                                   "out = (q - zero) * scale")
      .def(py::init<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int>(),
           py::arg("kernel_id"), py::arg("rows"), py::arg("cols"), py::arg("row_stride"),
           py::arg("col_stride"), py::arg("scale_tile_rows"), py::arg("scale_tile_cols"),
           py::arg("scale_ld"), py::arg("out_dtype"))
      .def("launch", serialized(&Int8DequantizeLaunch::launch), py::arg("q"), py::arg("scale"),
           py::arg("zero"), py::arg("out"), py::arg("stream"))
      .def("native",
           [](Int8DequantizeLaunch& l) { return native_handle(l, &int8_dequantize_native); },
           "as GemmLaunch.native");
  py::class_<Int4QuantizeLaunch>(m, "Int4QuantizeLaunch",
                                 "int4_quantize of one signature (csrc/wxa16/int4_quant.h)")
      .def(py::init<int, int, int64_t, int64_t, int64_t, int64_t, int, bool>(),
           py::arg("kernel_id"), py::arg("w_dtype"), py::arg("rows"), py::arg("cols"),
           py::arg("row_stride"), py::arg("col_stride"), py::arg("group"), py::arg("symmetric"))
      .def("launch", serialized(&Int4QuantizeLaunch::launch),
           py::arg("w"), py::arg("q"), py::arg("scales"), py::arg("zeros"), py::arg("stream"))
      .def("native",
           [](Int4QuantizeLaunch& l) { return native_handle(l, &int4_quantize_native); },
           "as GemmLaunch.native");
  py::class_<Fp8LinearLaunch>(m, "Fp8LinearLaunch",
                              "An FP8 linear layer's forward for one call signature: quantize "
                              "the activations into a workspace, then the GEMM, in one call")
      .def(py::init<const QuantizeLaunch&, const GemmLaunch&, int64_t, int64_t, int, bool>(),
           py::arg("quantize"), py::arg("gemm"), py::arg("scale_offset"), py::arg("amax_offset"),
           py::arg("fused_kernel_id") = -1, py::arg("weight_early") = false)
      .def_property_readonly("fused", &Fp8LinearLaunch::fused,
                             "the kernel that runs the whole forward, or None: two launches")
      .def_property_readonly("weight_early", &Fp8LinearLaunch::weight_early,
                             "whether the GEMM loads its first weight stages before waiting "
                             "for the quantizer (sm_90a swap-AB)")
      .def("launch", serialized(&Fp8LinearLaunch::launch),
           py::arg("x"), py::arg("x_scale"), py::arg("b"), py::arg("b_scale"), py::arg("bias"),
           py::arg("workspace"), py::arg("out"), py::arg("stream"))
      .def("native", [](Fp8LinearLaunch& l) { return native_handle(l, &fp8_linear_native); },
           "(this object's address, the address of its plain-function launch) for "
           "lowbit._torch_ops; the object must outlive their use");
  py::class_<Int8LinearLaunch>(m, "Int8LinearLaunch",
                               "An INT8 linear layer's forward for one call signature: quantize "
                               "the activations into a workspace, then the GEMM, in one call")
      .def(py::init<const Int8QuantizeLaunch&, const Int8GemmLaunch&, int64_t, int64_t,
                    int64_t, int, bool>(),
           py::arg("quantize"), py::arg("gemm"), py::arg("scale_offset"), py::arg("zero_offset"),
           py::arg("amax_offset"), py::arg("fused_kernel_id") = -1,
           py::arg("weight_early") = false)
      .def_property_readonly("fused", &Int8LinearLaunch::fused,
                             "the kernel that runs the whole forward, or None: two launches")
      .def_property_readonly("weight_early", &Int8LinearLaunch::weight_early,
                             "as Fp8LinearLaunch.weight_early")
      .def("launch", serialized(&Int8LinearLaunch::launch), py::arg("x"), py::arg("x_scale"),
           py::arg("x_zero"), py::arg("b"), py::arg("b_scale"), py::arg("b_sum"), py::arg("bias"),
           py::arg("workspace"), py::arg("out"), py::arg("stream"))
      .def("native", [](Int8LinearLaunch& l) { return native_handle(l, &int8_linear_native); },
           "(this object's address, the address of its plain-function launch) for "
           "lowbit._torch_ops; the object must outlive their use");
#endif
}
