// Internal interface between the FP8 launchers (fp8_quant.cu: validation and planning) and
// the per-dtype translation units that hold the kernel instantiations
// (fp8_quant_{f32,bf16,f16}.cu, fp8_dequant.cu). Host-only: no device code here.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "fp8/fp8_quant.h"

namespace lowbit {
namespace fp8 {
namespace detail {

// kAmax: pass 1 of per-tensor dynamic scaling. kStream: static scales, pass 2 of per-tensor
// dynamic scaling, and dynamic per-group scales. kDynRow: dynamic per-row scales.
// kDynBlock128: dynamic 128x128-block scales.
enum class QuantKernel : int { kAmax, kStream, kDynRow, kDynBlock128 };

constexpr int kShiftAll = 63;  // a scale-tile shift that maps every index to 0

// Kernel arguments (passed by value; one struct for every kernel of this family).
struct KernelParams {
  Fp8Format fmt = Fp8Format::kE4M3FN;  // read by GenericCodec (the templated codecs know)
  bool saturate = true;
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
  const uint32_t* amax_key = nullptr;  // per-tensor pass 2: the scale comes from this word
  int th_shift = 63, tw_shift = 63;
  int64_t s_ld = 0;
  float* scale_out = nullptr;
  bool dyn_group = false;         // kStream: the scale of each group is computed here
  int group_lanes = 1;            // dyn_group: chunks per group (group / 16)
  uint32_t* workspace = nullptr;  // kAmax: the amax word
};

struct QuantLaunch {
  QuantKernel kernel = QuantKernel::kStream;
  bool hw_cvt = false;  // only with saturate and e4m3fn / e5m2, on an sm_89+ device
  KernelParams p;  // p.fmt, p.saturate select the codec
  int64_t grid = 1;
  int threads = 256;
};

struct DequantLaunch {
  Fp8Format fmt = Fp8Format::kE4M3FN;
  FloatType out_type = FloatType::kBF16;
  KernelParams p;
  int64_t grid = 1;
  int threads = 256;
};

// Chunks a thread of the row kernels keeps in registers, per input type (Elem<T>::kCache).
inline int cache_chunks(FloatType t) { return t == FloatType::kF32 ? 2 : 4; }
constexpr int kDequantCacheChunks = 8;
constexpr int kStreamThreads = 256;     // CTA size of the streaming kernels
constexpr int kDynRowMaxThreads = 512;  // largest per-row team (and CTA) of kDynRow
// __launch_bounds__ minBlocks. 1 leaves ptxas free (96-144 registers, no spills); 4 x 256
// threads (a 64-register cap) spilled in the per-row and 128x128 kernels, and the loads in
// flight per thread, not the occupancy, set the bandwidth here (bench/NOTES.md).
constexpr int kStreamMinBlocks = 1;  // x 256 threads
constexpr int kDynRowMinBlocks = 1;  // x 512 threads
constexpr int kBlock128Threads = 256;
constexpr int kAmaxBlockThreads = 256;

cudaError_t launch_quant_f32(const QuantLaunch& l, cudaStream_t stream);
cudaError_t launch_quant_bf16(const QuantLaunch& l, cudaStream_t stream);
cudaError_t launch_quant_f16(const QuantLaunch& l, cudaStream_t stream);
cudaError_t launch_dequant(const DequantLaunch& l, cudaStream_t stream);
// The per-tensor dynamic scale of an empty input (from l.p.amax_key into l.p.scale_out): one
// thread, one kernel per format (it depends on nothing else).
cudaError_t launch_write_scale(Fp8Format fmt, const QuantLaunch& l, cudaStream_t stream);

}  // namespace detail
}  // namespace fp8
}  // namespace lowbit
