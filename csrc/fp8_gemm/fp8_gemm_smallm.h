// Small-M (decode) FP8 GEMM launchers: out[m, n] = sum_k a[m, k] b[n, k] with fp32 scales.
// Torch-free: raw pointers, sizes, strides (in elements), a stream; returns cudaError_t.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace lowbit {

enum class ScaleMode : int { kTensor = 0, kRow = 1, kBlock = 2 };
enum class OutDtype : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

struct Fp8GemmSmallMArgs {
  const uint8_t* a;   // [M, K] e4m3fn, row stride lda, K contiguous
  const uint8_t* b;   // [N, K] e4m3fn, row stride ldb, K contiguous
  int64_t lda, ldb;
  const float* a_scale;  // (), [M, 1] or [M, ceil(K/128)] (row stride a_scale_ld)
  const float* b_scale;  // (), [N, 1] or [ceil(N/128), ceil(K/128)] (row stride b_scale_ld)
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

// Max M these kernels take; larger M belongs to a tiled tensor-core GEMM.
constexpr int kFp8SmallMMaxM = 64;

// sm_89 / sm_90: fp8 mma.sync (m16n8k32 e4m3). Requires K % 16 == 0 and 16-byte aligned
// rows of a and b (checked by the caller).
cudaError_t sm89_fp8_gemm_smallm(const Fp8GemmSmallMArgs& args, cudaStream_t stream);
// Every arch from sm_80: fp8 upconverted to fp16 in registers, fp16 mma.sync (m16n8k16).
cudaError_t sm80_fp8_gemm_smallm(const Fp8GemmSmallMArgs& args, cudaStream_t stream);
// Whether this build holds the sm_89 kernel for the current device.
bool sm89_fp8_gemm_smallm_built();

}  // namespace lowbit
