// The mixed-input (weight-only) GEMM family, W4A16 and W8A16: out[m, n] = sum_k x[m, k] *
// (w[n, k] - z) * scale (+ bias[n]) with bf16/fp16 activations, int4 or int8 weights, fp32
// accumulation, out in x's dtype. One kernel template serves both bit widths
// (wxa16_gemm.cuh); the launchers below are the rows of the family table (wxa16_kernels.cpp).
// Torch-free: raw pointers, sizes and strides in elements.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/dtypes.h"
#include "common/tensor_map_cache.h"

namespace lowbit {

struct WXA16GemmArgs {
  int bits;  // 4: w is the prepacked int4 layout; 8: w is int8 [N, K], row stride ldw
  int M, N, K;
  const void* x;  // [M, K] bf16 or fp16 (x_dtype), row stride ldx, K contiguous
  int64_t ldx;
  FloatType x_dtype;  // also the output's dtype
  // bits 4: int32 [ceil(N/16), ceil(K/64), 32, 4] (lowbit/reference/int4.py, "mma16x64");
  // bits 8: int8 [N, K] with row stride ldw.
  const void* w;
  int64_t ldw;
  // [N, K / group] (row stride scale_ld), or [N, 1] per channel (group 0). bits 8: fp32.
  const void* scales;
  FloatType scale_dtype;
  int64_t scale_ld;
  int group;  // 32, 64 or 128; 0: one scale per row of w
  // log2(group), or 31 for one scale per row (k >> 31 is 0 for every k): set by the plan, so
  // that the kernels read it as a constant instead of rebuilding it from `group`.
  int group_shift;
  // bits 4 only: uint8 [N, K / group] (row stride zero_ld), or null: every zero point is 8.
  // When planning, non-null exactly when the launches will pass zero points (not read): the
  // decode kernel for zero points is another kernel.
  const uint8_t* zeros;
  int64_t zero_ld;
  const void* bias;  // [N] or null
  FloatType bias_dtype;
  void* out;  // [M, N] in x_dtype, row stride ldo
  int64_t ldo;
  // Split-K over CTAs: set by the launcher's plan. Both buffers are the caller's, 16-byte
  // aligned: `counters` (counter_bytes: one arrival counter per output tile) must be zero when
  // a launch starts, and every launch leaves them zero again, so counters zeroed once serve
  // every later launch on one stream (no memset per call); `partials` (partial_bytes of fp32
  // partial sums) need no clearing.
  int splits;
  // The sm_90a wgmma kernel's tail split: where set (> 0), the tiles before it run whole, one
  // CTA each, and only the tiles from it on are split `splits` ways (a last partial wave of
  // CTAs spread over the SMs); the workspace then holds those tiles only. 0: every tile is
  // split `splits` ways. Set by the plan.
  int split_from;
  // The decode kernel at M <= 8 / parts (parts 2, 4 or 8; 0 or 1: off): the CTA's 8 warps
  // are 8 / parts row tiles x `parts` interleaved stage sequences of K, summed through
  // shared memory at the end instead of a K split over CTAs. Set by the plan.
  int parts;
  size_t counter_bytes;
  size_t partial_bytes;
  unsigned* counters;
  void* partials;
  // The sm_90a kernel's TMA maps of the launch object's earlier calls (x: kA, w: kB), or
  // null: encode both.
  TensorMapCache* map_cache;
};

// A launcher of the family. plan = true: choose this kernel's split of K for these sizes on
// the current device and set args.splits (the sm_90a wgmma kernel's split_from too),
// counter_bytes and partial_bytes (no launch); the caller then provides the two buffers.
// plan = false: launch with the planned split (M = 0 launches nothing). The caller has
// checked: K a multiple of 16 (bits 8) or of the group (bits 4), x's rows 16-byte aligned
// (K and ldx multiples of 8, x 16-byte aligned), bits 8: w's rows 16-byte aligned.
using WXA16GemmFn = cudaError_t(WXA16GemmArgs& args, cudaStream_t stream, bool plan);

// Decode (M <= 16): 128 rows of w x 8 or 16 tokens per CTA, each warp's weights streamed
// into registers a stage ahead, activations and scales through a cp.async ring, K split over
// CTAs until the grid fills whole waves; the partials are added in a fixed order. At M <= 2,
// where 1.5-2 CTAs of 128 / P rows per SM fill one wave, K is split among a CTA's warps
// instead (parts). A kernel
// per group size (32, 64, 128; one scale per row runs as 128) and, int4, zero points or not.
WXA16GemmFn cuda_w4a16_gemm_decode;
WXA16GemmFn cuda_w8a16_gemm_decode;
// M <= 128 (kWXA16WideMaxM): the decode kernel with 64-token tiles, each 16 x 64 weight
// fragment dequantized once for all 64 tokens (decode dequantizes it once per 16), half-size
// stages, two activation stages, one CTA per SM; K split the same way. G = 64, 128 or one
// scale per row; declines (cudaErrorInvalidValue) G = 32.
WXA16GemmFn cuda_w4a16_gemm_wide;
WXA16GemmFn cuda_w8a16_gemm_wide;
// Any M: 128 rows of w x 64 tokens per CTA (K split over CTAs only when the tiles are few).
WXA16GemmFn cuda_w4a16_gemm_tiled;
WXA16GemmFn cuda_w8a16_gemm_tiled;

// Large M: the first half of a dequantize-then-GEMM product. Writes the weight (int4: the
// prepacked layout; int8: [N, K], 16-byte aligned rows) dequantized to x's dtype into `out`
// as [N, K] (row stride ldo, 16-byte aligned rows); the caller multiplies (a dense GEMM:
// cuBLAS through torch). M and x are not read.
WXA16GemmFn cuda_w4a16_gemm_dequant;
WXA16GemmFn cuda_w8a16_gemm_dequant;

// sm_90a, above the decode range: the decode kernel's weight fragments as wgmma's register A
// operand against 32, 64 or (int4, M > 128, scales of x's dtype, pre-scaled weights) 128
// tokens from shared memory; G = 64, 128 or one scale per row. Declines
// (cudaErrorInvalidValue) G = 32.
WXA16GemmFn sm90_w4a16_gemm_wgmma;
WXA16GemmFn sm90_w8a16_gemm_wgmma;

// The decode kernels' largest M, and the wide kernels'.
constexpr int kWXA16DecodeMaxM = 64;
constexpr int kWXA16WideMaxM = 128;

}  // namespace lowbit
