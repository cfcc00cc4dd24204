// FP8 GEMM launchers, one per kernel of the family table (fp8_kernels.cpp), each a GemmFn
// (common/gemm_args.h).
#pragma once
#include "common/gemm_args.h"

namespace lowbit {

// Tiled mma.sync GEMMs (any M; 128 x 128 tiles). sm_89 / sm_90: fp8 mma.sync (m16n8k32
// e4m3); every arch from sm_80: fp8 widened to fp16 in registers, fp16 mma.sync (m16n8k16).
GemmFn sm89_fp8_gemm_mma;
GemmFn sm80_fp8_gemm_mma;

// Small-M (decode, M <= kSmallMMaxM) mma.sync GEMMs, split-K inside a CTA: the same two
// tensor-core paths.
GemmFn sm89_fp8_gemm_smallm;
GemmFn sm80_fp8_gemm_smallm;

// sm_90a (wgmma + TMA), for M above the small-M kernels' range.
GemmFn sm90_fp8_gemm_wgmma;

// sm_90a small M (1 <= M <= 64, decode): the weight streams through wgmma as the A operand
// and the activations are the narrow B operand (n = M rounded up to 8, 16, 32 or 64); K is
// split over a thread-block cluster when N has too few 128-row tiles to fill the GPU. At
// M = 33..64 the tokens may instead be the A operand, with 112- or 96-row weight tiles,
// whichever leaves the fewest SMs idle (sm90_gemm_swapab.cuh, Form). M > 64 returns
// cudaErrorInvalidValue.
GemmFn sm90_fp8_gemm_swapab;

// Fp8Linear's forward at 1 <= M <= 64 on sm_90a: the swap-AB GEMM with the activations'
// quantizer in its prologue (saturating e4m3fn, per-token or static per-tensor scales, bf16
// or fp16 activations), bit-identical to quantize_fp8 then sm90_fp8_gemm_swapab; other
// arguments return cudaErrorInvalidValue.
LinearFn sm90_fp8_linear_swapab;

}  // namespace lowbit
