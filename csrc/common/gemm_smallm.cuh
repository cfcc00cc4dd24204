// Small-M 8-bit GEMM (FP8 and INT8): at M <= 64 the product is a stream of the weight, so the
// kernel is built around pulling b at copy bandwidth, not around tensor-core throughput. The
// tensor-core step is a policy: e4m3 mma.sync (sm_89+), e4m3 widened to fp16 (sm_80), or s8
// IMMA (sm_80+), which accumulates exactly in int32 (no promotion; the split-K reduction adds
// int32, and the epilogue converts once, int_acc_value).
//
// Work split. A CTA owns 16 rows of b (one mma M-tile: the weight plays the mma's A operand,
// whose row-major [16 x k] layout is exactly nn.Linear.weight's), and its 8 warps split K
// among themselves: warp w takes the 64-wide K chunks w, w + 8, w + 16, ... The partial sums
// are reduced through shared memory in a fixed order, so the result is deterministic (no
// atomics) and needs no workspace or second launch. N / 16 CTAs of 8 warps keep every SM
// pulling weight even at N = 4096.
//
// Fragment trick. A dot product does not care in which order k is visited, as long as the
// two operands agree. Each thread loads 16 contiguous bytes of its weight rows (one 128-bit
// load) and 16 contiguous bytes of its token, and feeds them to the mma's fragment slots in
// the same permuted order: the loads stay 16 bytes wide with no shuffles or shared memory.
//
// Accuracy. Unless fast_accum, each 64-K chunk is accumulated from zero in the tensor core
// and promoted into fp32 registers (times its block scales, when scales are per 128-block);
// fast_accum keeps the whole K-slice inside the mma accumulator.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "common/epilogue.cuh"
#include "common/gemm_args.h"
#include "common/launch.h"
#include "common/mma_sync.cuh"

namespace lowbit {
namespace smallm {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTileN = 16;   // rows of b per CTA
constexpr int kChunkK = 64;  // K per warp step: 4 threads x 16 bytes
constexpr int kUnroll = 4;   // chunks whose loads are in flight together

// Weights are read once: bypass L1 so they do not evict the activations, which every CTA
// re-reads.
__device__ __forceinline__ uint4 ld_stream(const uint8_t* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

__device__ __forceinline__ uint4 ld_act(const uint8_t* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

// Tensor-core step policies: consume one thread's 16 bytes of weight rows g and g + 8 and
// 16 bytes of token g into a 16 x 8 fp32 accumulator fragment.
struct MmaE4M3 {
  using Acc = float;
  __device__ __forceinline__ static void step(float (&c)[4], uint4 wg, uint4 wg8, uint4 x) {
    mma_e4m3_k32(c, wg.x, wg8.x, wg.y, wg8.y, x.x, x.y);
    mma_e4m3_k32(c, wg.z, wg8.z, wg.w, wg8.w, x.z, x.w);
  }
};

struct MmaF16Upconvert {
  using Acc = float;
  // Each 32-bit word holds 4 fp8 = 2 half2; 4 k16 steps consume the 16 bytes.
  __device__ __forceinline__ static void step(float (&c)[4], uint4 wg, uint4 wg8, uint4 x) {
    mma_e4m3_word_as_f16(c, wg.x, wg8.x, x.x);
    mma_e4m3_word_as_f16(c, wg.y, wg8.y, x.y);
    mma_e4m3_word_as_f16(c, wg.z, wg8.z, x.z);
    mma_e4m3_word_as_f16(c, wg.w, wg8.w, x.w);
  }
};

// The same fragments in s8, into an int32 accumulator.
struct MmaS8 {
  using Acc = int32_t;
  __device__ __forceinline__ static void step(int32_t (&c)[4], uint4 wg, uint4 wg8, uint4 x) {
    mma_s8_k32(c, wg.x, wg8.x, wg.y, wg8.y, x.x, x.y);
    mma_s8_k32(c, wg.z, wg8.z, wg.w, wg8.w, x.z, x.w);
  }
};

// MT: number of 8-token mma tiles (M <= 8 * MT).
template <typename Mma, int MT>
__global__ void __launch_bounds__(kThreads)
gemm_smallm_kernel(const GemmArgs p) {
  using Acc = typename Mma::Acc;
  constexpr bool kInt = std::is_same<Acc, int32_t>::value;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * kTileN;
  const int nk = (p.K + kChunkK - 1) / kChunkK;
  const bool promote = !kInt && (!p.fast_accum || p.a_mode == ScaleMode::kBlock ||
                                 p.b_mode == ScaleMode::kBlock);

  // Rows past N and tokens past M read nothing and contribute zeros.
  const bool row_g = n0 + g < p.N, row_g8 = n0 + g + 8 < p.N;
  const uint8_t* bg = p.b + static_cast<int64_t>(n0 + g) * p.ldb + t * 16;
  const uint8_t* bg8 = bg + 8 * p.ldb;
  const uint8_t* xs[MT];
  bool tok[MT];
#pragma unroll
  for (int j = 0; j < MT; ++j) {
    tok[j] = 8 * j + g < p.M;
    xs[j] = p.a + static_cast<int64_t>(8 * j + g) * p.lda + t * 16;
  }

  Acc acc[MT][4];
#pragma unroll
  for (int j = 0; j < MT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j][i] = 0;

  const uint4 zero4 = make_uint4(0, 0, 0, 0);
  for (int c0 = warp; c0 < nk; c0 += kWarps * kUnroll) {
    // Issue every weight load of kUnroll chunks before the first mma needs one.
    uint4 wg[kUnroll], wg8[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * kWarps;
      const int64_t k = static_cast<int64_t>(c) * kChunkK + t * 16;
      const bool in_k = c < nk && k < p.K;
      wg[u] = (in_k && row_g) ? ld_stream(bg + k - t * 16) : zero4;
      wg8[u] = (in_k && row_g8) ? ld_stream(bg8 + k - t * 16) : zero4;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * kWarps;
      if (c >= nk) break;
      const int64_t k = static_cast<int64_t>(c) * kChunkK + t * 16;
      const bool in_k = k < p.K;
      Acc part[MT][4];
#pragma unroll
      for (int j = 0; j < MT; ++j) {
        const uint4 x = (in_k && tok[j]) ? ld_act(xs[j] + k - t * 16) : zero4;
        if (promote) {
#pragma unroll
          for (int i = 0; i < 4; ++i) part[j][i] = 0;
          Mma::step(part[j], wg[u], wg8[u], x);
        } else {
          Mma::step(acc[j], wg[u], wg8[u], x);
        }
      }
      if constexpr (!kInt) {
        if (promote) {
          // Block scales are constant over the chunk (64 divides 128) and over the CTA's 16
          // rows (16 divides 128); per-token a scales differ per column of the fragment.
          const int kb = (c * kChunkK) / 128;
          float sb = 1.f;
          if (p.b_mode == ScaleMode::kBlock) sb = p.b_scale[(n0 / 128) * p.b_scale_ld + kb];
  #pragma unroll
          for (int j = 0; j < MT; ++j) {
            float sa0 = 1.f, sa1 = 1.f;
            if (p.a_mode == ScaleMode::kBlock) {
              const int m0 = 8 * j + 2 * t;
              sa0 = m0 < p.M ? p.a_scale[m0 * p.a_scale_ld + kb] : 0.f;
              sa1 = m0 + 1 < p.M ? p.a_scale[(m0 + 1) * p.a_scale_ld + kb] : 0.f;
            }
            const float f0 = sa0 * sb, f1 = sa1 * sb;
            acc[j][0] = fmaf(part[j][0], f0, acc[j][0]);
            acc[j][1] = fmaf(part[j][1], f1, acc[j][1]);
            acc[j][2] = fmaf(part[j][2], f0, acc[j][2]);
            acc[j][3] = fmaf(part[j][3], f1, acc[j][3]);
          }
        }
      }
    }
  }

  // Deterministic split-K reduction: warp partials to shared memory, summed in warp order.
  __shared__ Acc red[kWarps][MT][4][32];
#pragma unroll
  for (int j = 0; j < MT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) red[warp][j][i][lane] = acc[j][i];
  __syncthreads();

  for (int e = threadIdx.x; e < MT * 4 * 32; e += kThreads) {
    const int j = e / 128, i = (e / 32) % 4, l = e % 32;
    Acc sum = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += red[w][j][i][l];
    // Fragment position -> (n, m): c0, c1 at row g, c2, c3 at row g + 8; columns 2t, 2t + 1.
    const int n = n0 + l / 4 + (i >= 2 ? 8 : 0);
    const int m = 8 * j + 2 * (l % 4) + (i & 1);
    if (n >= p.N || m >= p.M) continue;
    float v;
    if constexpr (kInt) {
      if (p.out_int32) {  // int8_mm: the accumulator as it is
        static_cast<int32_t*>(p.out)[static_cast<int64_t>(m) * p.ldo + n] = sum;
        continue;
      }
      v = int_acc_value(p, sum, m, n);
    } else {
      v = sum;
    }
    if (p.a_mode != ScaleMode::kBlock)
      v = v * p.a_scale[p.a_mode == ScaleMode::kRow ? m : 0];
    if (p.b_mode != ScaleMode::kBlock)
      v = v * p.b_scale[p.b_mode == ScaleMode::kRow ? n : 0];
    if (p.bias) v = v + load_bias(p.bias, p.bias_dtype, n);
    store_out(p.out, p.out_dtype, static_cast<int64_t>(m) * p.ldo + n, v);
  }
}

template <typename Mma>
cudaError_t launch(const GemmArgs& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (p.M > kSmallMMaxM) return cudaErrorInvalidValue;
  const dim3 grid((p.N + kTileN - 1) / kTileN), block(kThreads);
  if (p.M <= 8) return launch_plain(gemm_smallm_kernel<Mma, 1>, grid, block, 0, stream, p);
  if (p.M <= 16) return launch_plain(gemm_smallm_kernel<Mma, 2>, grid, block, 0, stream, p);
  if (p.M <= 32) return launch_plain(gemm_smallm_kernel<Mma, 4>, grid, block, 0, stream, p);
  return launch_plain(gemm_smallm_kernel<Mma, 8>, grid, block, 0, stream, p);
}

}  // namespace smallm
}  // namespace lowbit
