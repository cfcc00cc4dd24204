// Arguments shared by lowbit's 8-bit GEMM kernels, FP8 and INT8:
// out[m, n] = sum_k a[m, k] b[n, k] * scales (+ bias[n]). FP8 accumulates in fp32; INT8 in
// int32, exactly, and converts once in the epilogue. Torch-free: raw pointers, sizes,
// strides (in elements); launchers return cudaError_t.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtypes.h"
#include "common/tensor_map_cache.h"

namespace lowbit {

// How a scale operand covers its matrix, as the kernels read it (the launch binding maps the
// (tile_rows, tile_cols) it is given to this): one scale, one per row, one per 128-wide block
// of K (a: 1 x 128 tiles; b: 128 x 128 tiles).
enum class ScaleMode : int { kTensor = 0, kRow = 1, kBlock = 2 };

struct GemmArgs {
  const uint8_t* a;   // [M, K] e4m3fn or int8, row stride lda, K contiguous
  const uint8_t* b;   // [N, K] e4m3fn or int8, row stride ldb, K contiguous
  int64_t lda, ldb;
  // (), [M, 1] (dense: element m at a_scale[m]) or [M, ceil(K/128)] (row stride a_scale_ld)
  const float* a_scale;
  // (), [N, 1] (dense) or [ceil(N/128), ceil(K/128)] (row stride b_scale_ld)
  const float* b_scale;
  int64_t a_scale_ld, b_scale_ld;
  ScaleMode a_mode, b_mode;
  const void* bias;  // [N] or null
  FloatType bias_dtype;
  void* out;  // [M, N], row stride ldo
  int64_t ldo;
  FloatType out_dtype;
  int M, N, K;
  bool fast_accum;  // FP8 only
  // INT8 only. Asymmetric activations: the epilogue's value is acc - a_zero[m] * b_sum[n]
  // (exact, in 64-bit), with b_sum the row sums of b; a_zero null when a is symmetric, else
  // one value (a_zero_row false) or one per row of a.
  const int32_t* a_zero;
  bool a_zero_row;
  const int32_t* b_sum;  // [N]
  // INT8 only: the output is the int32 accumulator itself (int8_mm): no scales, no bias.
  bool out_int32;
  // The TMA maps of the launch object's earlier calls (sm_90a kernels), or null: encode all.
  TensorMapCache* map_cache;
  // b is not written by the kernel this launch follows in its stream, and that kernel
  // triggers its dependents only after its own grid-dependency wait (a layer's weight after
  // the layer's activation quantizer, common/quant_kernels.cuh): the sm_90a swap-AB and
  // wgmma kernels then issue their first stages' b loads before their own wait, so under
  // programmatic dependent launch the weight streams while the quantizer runs. The launcher
  // must also enqueue the two kernels back to back (the linear launch objects do, in one
  // call).
  // Other kernels ignore it.
  bool b_static;
};

// A GEMM launcher: every kernel of the FP8 and INT8 tables has this type. The caller has
// checked what the kernel requires (K % 16 == 0, 16-byte aligned K-contiguous rows of a and
// b, a device of the kernel's arch).
using GemmFn = cudaError_t(const GemmArgs& args, cudaStream_t stream);

// The activation quantizer a fused linear forward runs inside its GEMM (LinearFn): the
// GEMM's a operand is not given as codes but made from x, as the family's quantizer makes it
// (one scale per row of x from its own |x| max, or one static scale), bit for bit.
struct ActQuantArgs {
  const void* x;    // [M, K] bf16 or fp16, row stride ldx elements, K contiguous, rows 16-byte aligned
  int64_t ldx;
  FloatType x_type;
  // A static per-tensor scale (one fp32), or null: per-row scales from each row's |x| max.
  const float* x_scale;
};

// A GEMM whose prologue quantizes the activations: the GemmArgs' a, lda and a_scale are not
// read (a_mode says per row or per tensor, as the quantizer would have given them).
using LinearFn = cudaError_t(const GemmArgs& args, const ActQuantArgs& act, cudaStream_t stream);

// Max M the small-M kernels take; larger M belongs to a tiled tensor-core GEMM.
constexpr int kSmallMMaxM = 64;

}  // namespace lowbit
