// Small-M (decode) FP8 GEMM launchers (M <= 64).
#pragma once
#include <cuda_runtime.h>

#include "fp8_gemm_args.h"

namespace lowbit {

// Max M these kernels take; larger M belongs to a tiled tensor-core GEMM.
constexpr int kFp8SmallMMaxM = 64;

// sm_89 / sm_90: fp8 mma.sync (m16n8k32 e4m3). Requires K % 16 == 0 and 16-byte aligned
// rows of a and b (checked by the caller).
cudaError_t sm89_fp8_gemm_smallm(const Fp8GemmArgs& args, cudaStream_t stream);
// Every arch from sm_80: fp8 upconverted to fp16 in registers, fp16 mma.sync (m16n8k16).
cudaError_t sm80_fp8_gemm_smallm(const Fp8GemmArgs& args, cudaStream_t stream);

}  // namespace lowbit
