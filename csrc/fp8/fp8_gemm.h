// FP8 GEMM launchers, one per kernel of the family table (fp8_kernels.cpp). Each takes the
// arguments of fp8_gemm_args.h and a stream and returns the launch's cudaError_t; the caller
// has checked what the kernel requires (K % 16 == 0, 16-byte aligned K-contiguous rows of a
// and b, a device of the kernel's arch).
#pragma once
#include <cuda_runtime.h>

#include "fp8/fp8_gemm_args.h"

namespace lowbit {

// Max M the small-M kernels take; larger M belongs to a tiled tensor-core GEMM.
constexpr int kFp8SmallMMaxM = 64;

using Fp8GemmFn = cudaError_t(const Fp8GemmArgs& args, cudaStream_t stream);

// Tiled mma.sync GEMMs (any M; 128 x 128 tiles). sm_89 / sm_90: fp8 mma.sync (m16n8k32
// e4m3); every arch from sm_80: fp8 widened to fp16 in registers, fp16 mma.sync (m16n8k16).
Fp8GemmFn sm89_fp8_gemm_mma;
Fp8GemmFn sm80_fp8_gemm_mma;

// Small-M (decode, M <= kFp8SmallMMaxM) mma.sync GEMMs, split-K inside a CTA: the same two
// tensor-core paths.
Fp8GemmFn sm89_fp8_gemm_smallm;
Fp8GemmFn sm80_fp8_gemm_smallm;

// sm_90a (wgmma + TMA), for M above the small-M kernels' range.
Fp8GemmFn sm90_fp8_gemm_wgmma;

// sm_90a small M (1 <= M <= 64, decode): the weight streams through wgmma as the A operand
// and the activations are the narrow B operand (n = M rounded up to 8, 16, 32 or 64); K is
// split over a thread-block cluster when N has too few 128-row tiles to fill the GPU.
// M > 64 returns cudaErrorInvalidValue.
Fp8GemmFn sm90_fp8_gemm_swapab;

}  // namespace lowbit
