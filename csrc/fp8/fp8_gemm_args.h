// Arguments shared by lowbit's FP8 GEMM kernels:
// out[m, n] = sum_k a[m, k] b[n, k] * scales (+ bias[n]), fp32 accumulation.
// Torch-free: raw pointers, sizes, strides (in elements); launchers return cudaError_t.
#pragma once
#include <cstdint>

#include "common/dtypes.h"
#include "common/tensor_map_cache.h"

namespace lowbit {

// How a scale operand covers its matrix, as the kernels read it (the launch binding maps the
// (tile_rows, tile_cols) it is given to this): one scale, one per row, one per 128-wide block
// of K (a: 1 x 128 tiles; b: 128 x 128 tiles).
enum class ScaleMode : int { kTensor = 0, kRow = 1, kBlock = 2 };

struct Fp8GemmArgs {
  const uint8_t* a;   // [M, K] e4m3fn, row stride lda, K contiguous
  const uint8_t* b;   // [N, K] e4m3fn, row stride ldb, K contiguous
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
  bool fast_accum;
  // The TMA maps of the launch object's earlier calls (sm_90a kernels), or null: encode all.
  TensorMapCache* map_cache;
};

}  // namespace lowbit
