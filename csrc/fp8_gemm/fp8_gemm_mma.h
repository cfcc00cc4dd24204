// Tiled mma.sync FP8 GEMM launchers (any M; 128 x 128 tiles).
#pragma once
#include <cuda_runtime.h>

#include "fp8_gemm_args.h"

namespace lowbit {

// sm_89 / sm_90: fp8 mma.sync (m16n8k32 e4m3). Requires K % 16 == 0 and 16-byte aligned rows
// of a and b (checked by the caller).
cudaError_t sm89_fp8_gemm_mma(const Fp8GemmArgs& args, cudaStream_t stream);
// Every arch from sm_80: fp8 widened to fp16 in registers, fp16 mma.sync (m16n8k16).
cudaError_t sm80_fp8_gemm_mma(const Fp8GemmArgs& args, cudaStream_t stream);

}  // namespace lowbit
