// Arguments shared by lowbit's FP8 GEMM kernels:
// out[m, n] = sum_k a[m, k] b[n, k] * scales (+ bias[n]), fp32 accumulation.
// Torch-free: raw pointers, sizes, strides (in elements); launchers return cudaError_t.
#pragma once
#include <cstdint>

namespace lowbit {

enum class ScaleMode : int { kTensor = 0, kRow = 1, kBlock = 2 };
enum class OutDtype : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

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
  OutDtype bias_dtype;
  void* out;  // [M, N], row stride ldo
  int64_t ldo;
  OutDtype out_dtype;
  int M, N, K;
  bool fast_accum;
};

}  // namespace lowbit
