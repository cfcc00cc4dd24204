// The quantizer families' shared launchers: argument validation, the choice of kernel and
// [rows, cols] view, and the launches through the family's per-dtype dispatch (kernels in
// common/quant_kernels.cuh, launch shapes in common/quant_heuristics.h). Host code only;
// nothing here synchronizes the host.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "common/launch.h"
#include "common/quant_launch.h"
#include "common/quant_heuristics.h"

namespace lowbit {
namespace quant {
namespace detail {

namespace {

bool valid(Granularity g) {
  return g == Granularity::kTensor || g == Granularity::kRow || g == Granularity::kGroup ||
         g == Granularity::kBlock128;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// log2 of a tile extent (1, 32, 64, 128), kShiftAll for 0 (the whole extent), -1 otherwise.
int tile_shift(int64_t extent) {
  switch (extent) {
    case 0: return kShiftAll;
    case 1: return 0;
    case 32: return 5;
    case 64: return 6;
    case 128: return 7;
    default: return -1;
  }
}

// Strides of size-1 dimensions carry no meaning; give them the contiguous value.
void normalize_strides(int64_t rows, int64_t cols, int64_t& row_stride, int64_t& col_stride) {
  if (cols <= 1) col_stride = 1;
  if (rows <= 1) row_stride = cols;
}

// Vector-access flags for the [rows, cols] view in p: 16-byte loads need an aligned base,
// unit column stride and aligned row starts; 16-byte stores need aligned output rows.
void set_vector_flags(KernelParams& p, int in_bytes, int out_bytes) {
  p.vec_load = aligned16(p.x) && p.col_stride == 1 &&
               (p.rows <= 1 || (p.row_stride * in_bytes) % 16 == 0);
  p.vec_store = aligned16(p.out) && (p.rows <= 1 || (p.cols * out_bytes) % 16 == 0);
}

// An empty kernel of the quantizers' library: built from the same arch list as every
// quantize kernel, so the code that runs it on a device is what they run there.
__global__ void quant_arch_probe() {}

// The arch (80, 89, 90...) the quantize kernels' code that runs on `device` was compiled
// for (kernel_code_arch of a kernel built from the same arch list).
std::atomic<int> quant_arch_known[kMaxDevices] = {};
int quant_code_arch(int device) {
  return kernel_code_arch(quant_arch_probe, device, quant_arch_known);
}

// Every quantize kernel launches through here. Where its code holds the PDL wait (sm_90, and
// while programmatic_launch() is on, as for the GEMMs) it is a programmatic dependent launch:
// its CTAs wait for the kernel before reading anything and then let the next kernel (a GEMM
// reading q) set up.
cudaError_t launch_quant(const QuantFamily& f, FloatType t, const QuantLaunch& l,
                         cudaStream_t stream) {
  if (!lowbit::valid(t)) return cudaErrorInvalidValue;
  int dev = 0;
  const bool programmatic = programmatic_launch() && current_device(dev) == cudaSuccess &&
                            holds_pdl_wait(quant_arch_probe, dev, quant_arch_known);
  if (programmatic == l.programmatic) return f.by_dtype[static_cast<int>(t)](l, stream);
  QuantLaunch pl = l;
  pl.programmatic = programmatic;
  return f.by_dtype[static_cast<int>(t)](pl, stream);
}

// A launch of the row kernels (quantize or dequantize) shaped by `plan`.
template <class Launch>
void use_plan(Launch& l, const RowsLaunch& plan) {
  l.p.team = plan.team;
  l.p.seg_chunks = plan.seg_chunks;
  l.p.nsegs = plan.nsegs;
  l.grid = plan.grid;
  l.threads = plan.threads;
}

// A streaming row-kernel launch (static or pass-2 scales, per-group dynamic scales).
cudaError_t launch_streaming(const QuantFamily& f, FloatType t, QuantLaunch l, int min_team,
                             cudaStream_t stream) {
  use_plan(l, plan_streaming(l.p.rows, ceil_div(l.p.cols, 16), cache_chunks(t),
                                          min_team));
  return launch_quant(f, t, l, stream);
}

// A quantize launch as every kernel sets it up: the argument checks, the [rows, cols] view
// (strides normalized), the codec's fields; n: the element count, nscales: the number of
// scales written (and read, when static).
struct Setup {
  cudaError_t err = cudaSuccess;
  QuantLaunch l;
  int64_t n = 0, nscales = 0;
};

Setup setup(const QuantizeView& a, const QuantLaunch& codec) {
  Setup s;
  s.err = cudaErrorInvalidValue;
  if (!lowbit::valid(a.x_type) || !valid(a.granularity)) return s;
  if (a.rows < 0 || a.cols < 0 || a.row_stride < 0 || a.col_stride < 0) return s;
  if (a.granularity == Granularity::kGroup && tile_shift(a.group) < 5) return s;
  const int64_t n = s.n = a.rows * a.cols;
  int64_t& nscales = s.nscales;
  switch (a.granularity) {
    case Granularity::kTensor: nscales = 1; break;
    case Granularity::kRow: nscales = a.rows; break;
    case Granularity::kGroup: nscales = a.rows * ceil_div(a.cols, a.group); break;
    case Granularity::kBlock128: nscales = ceil_div(a.rows, 128) * ceil_div(a.cols, 128); break;
  }
  // Empty tensors may come with null pointers; only what will be touched must be valid.
  if ((n > 0 && (a.x == nullptr || a.q == nullptr)) ||
      (nscales > 0 && (a.scale_out == nullptr ||
                       (codec.asymmetric && codec.p.zero_out == nullptr)))) {
    return s;
  }
  s.l = codec;
  KernelParams& p = s.l.p;
  p.x = a.x;
  p.out = a.q;
  p.rows = a.rows;
  p.cols = a.cols;
  p.row_stride = a.row_stride;
  p.col_stride = a.col_stride;
  normalize_strides(p.rows, p.cols, p.row_stride, p.col_stride);
  p.scale_out = a.scale_out;
  s.err = cudaSuccess;
  return s;
}

// setup() for the dynamic-scale kernel of granularity g.
Setup setup_dynamic(const QuantizeView& a, const QuantLaunch& codec, Granularity g) {
  if (a.scale_in != nullptr || codec.p.zero_in != nullptr || a.granularity != g) {
    Setup s;
    s.err = cudaErrorInvalidValue;
    return s;
  }
  return setup(a, codec);
}

// A per-tensor scale makes the op elementwise: a contiguous input is one long row, which the
// streaming kernel cuts into segments (vector access for any row length).
void flatten_if_contiguous(KernelParams& p, int64_t n) {
  if (p.col_stride == 1 && p.row_stride == p.cols) {
    p.rows = n > 0 ? 1 : 0;
    p.cols = n;
    p.row_stride = n;
  }
}

}  // namespace

bool device_has_fp8_cvt() {
  int dev = 0;
  if (current_device(dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  // The device's, and the code's: sm_80 code JIT-compiled for an sm_89+ device has no cvt
  // instruction (its hardware-cvt kernels trap: fp8_codec.cuh, kRunsHere).
  return compute_capability(dev) >= 89 && quant_code_arch(dev) >= 89;
}

cudaError_t quantize_static(const QuantizeView& a, const QuantLaunch& codec,
                            const QuantFamily& f, cudaStream_t stream) {
  Setup s = setup(a, codec);
  if (s.err != cudaSuccess) return s.err;
  // An empty scale tensor (no rows, or no columns to group) may come with a null pointer.
  if (s.nscales > 0 && (a.scale_in == nullptr ||
                        (codec.asymmetric && codec.p.zero_in == nullptr))) {
    return cudaErrorInvalidValue;
  }
  QuantLaunch& l = s.l;
  KernelParams& p = l.p;
  const int64_t n = s.n;
  switch (a.granularity) {
    case Granularity::kTensor:
      break;
    case Granularity::kRow:
      p.th_shift = 0;
      p.s_ld = 1;
      break;
    case Granularity::kGroup:
      p.th_shift = 0;
      p.tw_shift = tile_shift(a.group);
      p.s_ld = ceil_div(a.cols, a.group);
      break;
    case Granularity::kBlock128:
      p.th_shift = 7;
      p.tw_shift = 7;
      p.s_ld = ceil_div(a.cols, 128);
      break;
  }
  if (n == 0) {  // no element to quantize: the scale (and zero point) still goes out
    if (s.nscales == 0) return cudaSuccess;
    cudaError_t err = cudaMemcpyAsync(a.scale_out, a.scale_in, size_t(s.nscales) * sizeof(float),
                                      cudaMemcpyDeviceToDevice, stream);
    if (err != cudaSuccess || !codec.asymmetric) return err;
    return cudaMemcpyAsync(p.zero_out, p.zero_in, size_t(s.nscales) * sizeof(int32_t),
                           cudaMemcpyDeviceToDevice, stream);
  }
  p.scale_in = a.scale_in;
  if (a.granularity == Granularity::kTensor) flatten_if_contiguous(p, n);
  set_vector_flags(p, elem_bytes(a.x_type), 1);
  l.kernel = QuantKernel::kStream;
  return launch_streaming(f, a.x_type, l, 4, stream);
}

cudaError_t quantize_per_tensor(const QuantizeView& a, const QuantLaunch& codec,
                                const QuantFamily& f, cudaStream_t stream) {
  Setup s = setup_dynamic(a, codec, Granularity::kTensor);
  if (s.err != cudaSuccess) return s.err;
  QuantLaunch& l = s.l;
  KernelParams& p = l.p;
  const int64_t n = s.n;
  // Pass 1: amax over the whole input into the workspace words; pass 2: every CTA turns the
  // words into the scale and quantizes. Ordered by the stream, no host sync.
  if (a.workspace == nullptr) return cudaErrorInvalidValue;
  cudaError_t err =
      cudaMemsetAsync(a.workspace, 0, size_t(f.amax_words) * sizeof(uint32_t), stream);
  if (err != cudaSuccess) return err;
  p.amax_key = a.workspace;
  if (n == 0) return f.write_scale(l, stream);
  flatten_if_contiguous(p, n);
  set_vector_flags(p, elem_bytes(a.x_type), 1);
  QuantLaunch amax = l;
  amax.kernel = QuantKernel::kAmax;
  amax.p.workspace = a.workspace;
  amax.threads = kAmaxBlockThreads;
  // An unknown SM count (132 assumed) only sizes the amax grid.
  amax.grid = plan_amax_grid(p.rows * ceil_div(p.cols, 16), kAmaxBlockThreads,
                             cache_chunks(a.x_type), current_sm_count(132));
  err = launch_quant(f, a.x_type, amax, stream);
  if (err != cudaSuccess) return err;
  l.kernel = QuantKernel::kStream;  // th_shift = tw_shift = 63, s_ld = 0: one scale
  return launch_streaming(f, a.x_type, l, 4, stream);
}

cudaError_t quantize_per_token(const QuantizeView& a, const QuantLaunch& codec,
                               const QuantFamily& f, cudaStream_t stream) {
  Setup s = setup_dynamic(a, codec, Granularity::kRow);
  if (s.err != cudaSuccess || a.rows == 0) return s.err;
  QuantLaunch& l = s.l;
  KernelParams& p = l.p;
  set_vector_flags(p, elem_bytes(a.x_type), 1);
  l.kernel = QuantKernel::kDynRow;
  use_plan(l, plan_dyn_row(p.rows, ceil_div(p.cols, 16), cache_chunks(a.x_type)));
  return launch_quant(f, a.x_type, l, stream);
}

cudaError_t quantize_per_group(const QuantizeView& a, const QuantLaunch& codec,
                               const QuantFamily& f, cudaStream_t stream) {
  Setup s = setup_dynamic(a, codec, Granularity::kGroup);
  if (s.err != cudaSuccess || s.n == 0) return s.err;
  QuantLaunch& l = s.l;
  KernelParams& p = l.p;
  set_vector_flags(p, elem_bytes(a.x_type), 1);
  l.kernel = QuantKernel::kStream;
  p.dyn_group = true;
  p.group_lanes = static_cast<int>(a.group / 16);
  p.th_shift = 0;
  p.tw_shift = tile_shift(a.group);
  p.s_ld = ceil_div(a.cols, a.group);
  return launch_streaming(f, a.x_type, l, p.group_lanes > 4 ? p.group_lanes : 4, stream);
}

cudaError_t quantize_per_block128(const QuantizeView& a, const QuantLaunch& codec,
                                  const QuantFamily& f, cudaStream_t stream) {
  Setup s = setup_dynamic(a, codec, Granularity::kBlock128);
  if (s.err != cudaSuccess || s.n == 0) return s.err;
  QuantLaunch& l = s.l;
  set_vector_flags(l.p, elem_bytes(a.x_type), 1);
  l.kernel = QuantKernel::kDynBlock128;
  l.threads = kBlock128Threads;
  l.grid = std::min(kMaxGrid, ceil_div(a.rows, 128) * ceil_div(a.cols, 128));
  return launch_quant(f, a.x_type, l, stream);
}

cudaError_t dequantize(const DequantizeView& a, const DequantLaunch& codec,
                       DequantDispatchFn* launch, cudaStream_t stream) {
  if (!lowbit::valid(a.out_type)) return cudaErrorInvalidValue;
  if (a.rows < 0 || a.cols < 0 || a.row_stride < 0 || a.col_stride < 0 || a.scale_ld < 0) {
    return cudaErrorInvalidValue;
  }
  const int th = tile_shift(a.scale_tile_rows);
  const int tw = tile_shift(a.scale_tile_cols);
  if (th < 0 || (th > 0 && th < 7 && th != kShiftAll) || tw < 0 || tw == 0) {
    return cudaErrorInvalidValue;  // tile rows 0, 1 or 128; tile cols 0, 32, 64 or 128
  }
  const int64_t n = a.rows * a.cols;
  if (n == 0) return cudaSuccess;
  if (a.q == nullptr || a.out == nullptr || a.scale == nullptr) return cudaErrorInvalidValue;

  DequantLaunch l = codec;
  l.out_type = a.out_type;
  KernelParams& p = l.p;
  p.x = a.q;
  p.out = a.out;
  p.rows = a.rows;
  p.cols = a.cols;
  p.row_stride = a.row_stride;
  p.col_stride = a.col_stride;
  normalize_strides(p.rows, p.cols, p.row_stride, p.col_stride);
  p.scale_in = a.scale;
  p.th_shift = th;
  p.tw_shift = tw;
  p.s_ld = a.scale_ld;
  if (th == kShiftAll && tw == kShiftAll && p.col_stride == 1 && p.row_stride == p.cols) {
    p.rows = 1;  // per-tensor scale, contiguous codes: one long row, cut into segments
    p.cols = n;
    p.row_stride = n;
  }
  set_vector_flags(p, 1, elem_bytes(a.out_type));
  use_plan(l, plan_streaming(p.rows, ceil_div(p.cols, 16), kDequantCacheChunks, 4));
  return launch(l, stream);
}

}  // namespace detail
}  // namespace quant
}  // namespace lowbit
