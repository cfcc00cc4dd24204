// sm_90a FP8 GEMM launcher (wgmma + TMA), for M above the small-M kernels' range.
#pragma once
#include <cuda_runtime.h>

#include "fp8_gemm_args.h"

namespace lowbit {

// Requirements (checked by the caller): K % 16 == 0, rows of a and b K-contiguous with
// 16-byte-aligned starts and strides (TMA), a device of compute capability 9.0.
cudaError_t sm90_fp8_gemm_wgmma(const Fp8GemmArgs& args, cudaStream_t stream);

// Small M (1 <= M <= 64, decode): the weight streams through wgmma as the A operand and the
// activations are the narrow B operand (n = M rounded up to 8, 16, 32 or 64); K is split
// over a thread-block cluster when N has too few 128-row tiles to fill the GPU. Same
// requirements as above; M > 64 returns cudaErrorInvalidValue.
cudaError_t sm90_fp8_gemm_swapab(const Fp8GemmArgs& args, cudaStream_t stream);

}  // namespace lowbit
