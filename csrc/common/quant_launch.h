// Internal interface between the quantizer families' launchers and the shared skeleton:
// the kernel arguments, the launch records, and the host-side launchers every family runs
// (common/quant_launch.cu: validation, the [rows, cols] view, the choice of kernel and
// launch shape). A family supplies its per-dtype kernel dispatch (QuantFamily) and the codec
// fields of the launch. Host-only: no device code here.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtypes.h"
#include "common/quant_args.h"

namespace lowbit {
namespace quant {
namespace detail {

// kAmax: pass 1 of per-tensor dynamic scaling. kStream: static scales, pass 2 of per-tensor
// dynamic scaling, and dynamic per-group scales. kDynRow: dynamic per-row scales.
// kDynBlock128: dynamic 128x128-block scales.
enum class QuantKernel : int { kAmax, kStream, kDynRow, kDynBlock128 };

constexpr int kShiftAll = 63;  // a scale-tile shift that maps every index to 0

// Kernel arguments (passed by value; one struct for every kernel of every family).
struct KernelParams {
  Fp8Format fmt = Fp8Format::kE4M3FN;  // fp8: read by GenericCodec (the templated codecs know)
  bool saturate = true;                // fp8
  const void* x = nullptr;  // input (quantize) or codes (dequantize)
  int64_t rows = 0, cols = 0, row_stride = 0, col_stride = 1;
  void* out = nullptr;  // codes (quantize) or values (dequantize): [rows, cols] contiguous
  bool vec_load = false, vec_store = false;
  int team = 1;            // threads per row, power of two, divides blockDim.x
  int64_t seg_chunks = 0;  // streaming kernels: chunks of a row one CTA covers
  int64_t nsegs = 1;       // segments per row
  // Static scales: scale_in[(r >> th_shift) * s_ld + (c >> tw_shift)] (shift 63: the whole
  // extent, since no index reaches 2^63).
  const float* scale_in = nullptr;
  const uint32_t* amax_key = nullptr;  // per-tensor pass 2: the scale comes from these words
  int th_shift = 63, tw_shift = 63;
  int64_t s_ld = 0;
  float* scale_out = nullptr;
  // Zero points (int8 asymmetric), in the scales' layout: given (static, and dequantize)
  // and written out.
  const int32_t* zero_in = nullptr;
  int32_t* zero_out = nullptr;
  bool dyn_group = false;         // kStream: the scale of each group is computed here
  int group_lanes = 1;            // dyn_group: chunks per group (group / 16)
  uint32_t* workspace = nullptr;  // kAmax: the amax words
};

struct QuantLaunch {
  QuantKernel kernel = QuantKernel::kStream;
  bool hw_cvt = false;      // fp8: only with saturate and e4m3fn / e5m2, on an sm_89+ device
  bool asymmetric = false;  // int8: min/max scales and zero points
  bool programmatic = false;  // programmatic dependent launch (set by launch_quant)
  KernelParams p;  // with the two flags above, p.fmt and p.saturate select the codec
  int64_t grid = 1;
  int threads = 256;
};

struct DequantLaunch {
  Fp8Format fmt = Fp8Format::kE4M3FN;  // fp8
  FloatType out_type = FloatType::kBF16;
  KernelParams p;
  int64_t grid = 1;
  int threads = 256;
};

// Chunks a thread of the row kernels keeps in registers, per input type (Elem<T>::kCache).
inline int cache_chunks(FloatType t) { return t == FloatType::kF32 ? 2 : 4; }
constexpr int kDequantCacheChunks = 8;
constexpr int kStreamThreads = 256;     // CTA size of the streaming kernels
constexpr int kDynRowMaxThreads = 256;  // largest per-row team (and CTA) of kDynRow
// __launch_bounds__ minBlocks of the streaming and 128x128 kernels. 1 leaves ptxas free
// (96-144 registers, no spills); 4 x 256 threads (a 64-register cap) spilled in the per-row
// and 128x128 kernels (bench/NOTES.md).
constexpr int kStreamMinBlocks = 1;  // x 256 threads
// The per-row kernel: three 256-thread CTAs per SM (80 registers, no spills) keep more loads
// in flight, while other CTAs reduce and store, than two at the 122 registers ptxas takes
// unbounded. 16384 x 8192 bf16 -> fp8 per token went from 81-82% to 94-97% of copy bandwidth
// on an H200 (bench/NOTES.md, "Per-token quantizer occupancy"). A 64-register cap (512-thread
// teams, or four CTAs) spills. The sm_80 build keeps two (quant_kernels.cuh).
constexpr int kDynRowMinBlocks = 3;  // x kDynRowMaxThreads
constexpr int kBlock128Threads = 256;
constexpr int kAmaxBlockThreads = 256;

using QuantDispatchFn = cudaError_t(const QuantLaunch& l, cudaStream_t stream);

// What a family gives the shared launchers.
struct QuantFamily {
  QuantDispatchFn* by_dtype[3];  // the kernels for each input type, indexed by FloatType
  // The per-tensor dynamic scale of an empty input (from l.p.amax_key into l.p.scale_out,
  // and l.p.zero_out).
  QuantDispatchFn* write_scale;
  int amax_words;  // uint32 words of the per-tensor workspace
};

// The shared launchers. `codec`: the family's codec fields (QuantLaunch::hw_cvt, asymmetric;
// KernelParams::fmt, saturate, zero_in, zero_out); the view's fields are filled in here.
using SharedQuantizeFn = cudaError_t(const QuantizeView& a, const QuantLaunch& codec,
                                     const QuantFamily& f, cudaStream_t stream);
cudaError_t quantize_static(const QuantizeView& a, const QuantLaunch& codec,
                            const QuantFamily& f, cudaStream_t stream);
cudaError_t quantize_per_tensor(const QuantizeView& a, const QuantLaunch& codec,
                                const QuantFamily& f, cudaStream_t stream);
cudaError_t quantize_per_token(const QuantizeView& a, const QuantLaunch& codec,
                               const QuantFamily& f, cudaStream_t stream);
cudaError_t quantize_per_group(const QuantizeView& a, const QuantLaunch& codec,
                               const QuantFamily& f, cudaStream_t stream);
cudaError_t quantize_per_block128(const QuantizeView& a, const QuantLaunch& codec,
                                  const QuantFamily& f, cudaStream_t stream);
using DequantDispatchFn = cudaError_t(const DequantLaunch& l, cudaStream_t stream);
cudaError_t dequantize(const DequantizeView& a, const DequantLaunch& codec,
                       DequantDispatchFn* launch, cudaStream_t stream);

// The sm_89+ fp8 conversion instructions on the current device.
bool device_has_fp8_cvt();

}  // namespace detail
}  // namespace quant
}  // namespace lowbit
