// INT8 GEMM launchers, one per kernel of the family table (int8_kernels.cpp), each a GemmFn
// (common/gemm_args.h): int8 a [M, K] and b [N, K], exact int32 accumulation, then either the
// int32 accumulator itself (out_int32: int8_mm) or the fp32 epilogue of int8_gemm
// (acc - a_zero[m] * b_sum[n]) * a_scale * b_scale (+ bias), per tensor or per row scales.
// They are the FP8 kernels' templates instantiated with s8 operands.
#pragma once
#include "common/gemm_args.h"

namespace lowbit {

// Tiled mma.sync IMMA GEMM (m16n8k32 s8, any M; 128 x 128 tiles): every arch from sm_80.
GemmFn sm80_int8_gemm_mma;

// Small-M (decode, M <= kSmallMMaxM) IMMA GEMM, split-K inside a CTA: every arch from sm_80.
GemmFn sm80_int8_gemm_smallm;

// sm_90a (TMA + s8 wgmma, persistent, warp-specialized), for M above the small-M range.
GemmFn sm90_int8_gemm_wgmma;

// sm_90a small M (1 <= M <= 64, decode): the weight streams through s8 wgmma as the A operand
// and the activations are the narrow B operand (n = M rounded up to 8, 16, 32 or 64); K is
// split over a thread-block cluster when N has too few 128-row tiles to fill the GPU, its
// int32 partials added exactly. At M = 33..64 the tokens may instead be the A operand, with
// 112- or 96-row weight tiles, where that leaves fewer SMs idle (112 rows as an n = 32 and an
// n = 24 wgmma: s8 has no n = 56). M > 64 returns cudaErrorInvalidValue.
GemmFn sm90_int8_gemm_swapab;

// Int8Linear's forward at 1 <= M <= 64 on sm_90a with symmetric activations: the swap-AB GEMM
// with the quantizer in its prologue (per-token or static per-tensor scales, bf16 or fp16
// activations), bit-identical to quantize_int8 then sm90_int8_gemm_swapab; other arguments
// return cudaErrorInvalidValue.
LinearFn sm90_int8_linear_swapab;

}  // namespace lowbit
