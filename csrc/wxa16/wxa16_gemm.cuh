// The mixed-input GEMM (W4A16 / W8A16) on mma.sync m16n8k16, bf16 or fp16 with fp32
// accumulation: one kernel template for both weight bit widths and both regimes (decode:
// 64 rows x 16 tokens per CTA, K split over CTAs; tiled: 128 rows x 64 tokens per CTA).
// Runs on every arch from sm_80.
//
// Operands. The weight is the mma's A operand (16 output channels per mma, the row-major
// layout of nn.Linear.weight) and the activations its B operand (8 tokens per mma):
// weight-stationary, so at decode the kernel is a stream of the weight. Warp w of a CTA owns
// WN 16-row tiles of the weight; all warps share one activation tile.
//
// K order. A 64-wide chunk of K is 4 mma k-steps. Lane (g = lane / 4, t = lane % 4) holds the
// weight at k = 16 t .. 16 t + 15 of the chunk for rows g and g + 8, and k-step s takes
// k = 16 t + 4 s + {0, 1} for the fragment's first column pair and 16 t + 4 s + {2, 3} for the
// second: the mma's k axis is permuted within the chunk, which a dot product allows because
// the activation fragment follows the same permutation (lane (g, t) reads
// x[token g][16 t + 4 s .. + 3], 8 contiguous bytes). For int8 this makes the plain [N, K]
// weight readable with one 16-byte load per row per lane (no prepack); the int4 prepacked
// layout (lowbit/reference/int4.py) stores the nibbles in the same order, so both bit widths
// share the activation path.
//
// Loads. Weights go global -> registers with 16-byte loads that bypass L1 (read once),
// prefetched kPf chunks ahead: a warp reads 512 contiguous bytes per int4 row tile and chunk.
// Registers rather than cp.async into shared memory because each weight fragment is used by
// exactly one warp: staging it would cost shared-memory bandwidth and a barrier for no reuse.
// Activations, which every warp reuses, go through a 4-stage cp.async ring (zero-filled past
// M and K), rows padded to 72 elements so the 16-byte fragment reads are conflict-free.
//
// Dequantization, in registers, a few integer ops per pair: int4 `(w >> 4 i) & 0x000f000f`
// OR the exponent of 128 (bf16, 0x4300) or 1024 (fp16, 0x6400) is the pair 128 + u / 1024 + u
// exactly; subtracting (128 + z) (hsub2, exact) gives u - z. int8 fp16: byte permute into
// 0x64xx (1024 + (q + 128)), minus 1152; int8 bf16 (8 significant bits do not fit a bf16
// magic): byte permute into the fp32 0x4B0000xx (2^23 + (q + 128)), fsub, cvt.rn.bf16x2. All
// exact: the tensor cores see the integer weights (u - z or q), never a rounded product.
//
// Scales: accumulated per group in fp32, scaled after. Each chunk is summed from zero in the
// tensor core and added to the fp32 accumulator times the chunk's per-row scale (fp32 FMA),
// rather than multiplying the weights by the scale in x's dtype before the mma: the weight
// then never rounds to bf16 (the scale stays fp32, fp32 scales are not narrowed), and the
// cost is 4 FMAs per mma tile per chunk instead of an hmul2 per weight pair. A chunk lies in
// one group for G = 64 and 128 (and per channel); for G = 32 its lanes t < 2 and t >= 2 hold
// different groups, and the chunk is summed twice with the other half's activations zeroed
// (twice the mma work for G = 32 only).
//
// Split-K (deterministic). With too few tiles to fill the GPU, CTAs split K
// (blockIdx.y); each writes its fp32 partial to the workspace, and the last CTA of a tile to
// arrive (a counter per tile) adds all partials in split order, so the sum does not depend on
// which CTA finished last. It resets the counter for the next launch.
//
// Epilogue: + bias in fp32, rounded once to x's dtype.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/epilogue.cuh"
#include "common/gemm_mma.cuh"
#include "common/gemm_smallm.cuh"
#include "common/launch.h"
#include "common/mma_sync.cuh"
#include "common/smem.cuh"
#include "wxa16/wxa16_gemm.h"

namespace lowbit {
namespace wxa16 {

constexpr int kChunkK = 64;
constexpr int kStages = 4;
constexpr int kXRow = kChunkK + 8;  // padded shared row (elements): 144 bytes
constexpr int kTileBytes4 = 32 * 16;  // one prepacked int4 16-row x 64-K tile

// Per activation dtype: the int4 magic, the mma, and the int8 pair conversion.
template <typename T>
struct Half;

template <>
struct Half<__nv_bfloat16> {
  static constexpr uint32_t kMagic = 0x43004300u;  // bf16 128 | 128
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[4],
                                             uint32_t b0, uint32_t b1) {
    mma_bf16_k16(c, a[0], a[1], a[2], a[3], b0, b1);
  }
  __device__ __forceinline__ static uint32_t sub(uint32_t a, uint32_t b) {
    __nv_bfloat162 r = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&a),
                               *reinterpret_cast<__nv_bfloat162*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  // Bytes lo, lo + 1 of `wx` (int8 codes xor 0x80, i.e. q + 128) -> bf16 pair q, exactly.
  template <int kLo>
  __device__ __forceinline__ static uint32_t int8_pair(uint32_t wx) {
    constexpr float kBias = 8388736.f;  // 2^23 + 128
    const float f0 = __uint_as_float(__byte_perm(wx, 0x4B000000u, 0x7540 + kLo)) - kBias;
    const float f1 = __uint_as_float(__byte_perm(wx, 0x4B000000u, 0x7541 + kLo)) - kBias;
    __nv_bfloat162 r = __floats2bfloat162_rn(f0, f1);
    return *reinterpret_cast<uint32_t*>(&r);
  }
};

template <>
struct Half<__half> {
  static constexpr uint32_t kMagic = 0x64006400u;  // fp16 1024 | 1024
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[4],
                                             uint32_t b0, uint32_t b1) {
    mma_f16_k16(c, a[0], a[1], a[2], a[3], b0, b1);
  }
  __device__ __forceinline__ static uint32_t sub(uint32_t a, uint32_t b) {
    __half2 r = __hsub2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  template <int kLo>
  __device__ __forceinline__ static uint32_t int8_pair(uint32_t wx) {
    // [byte lo, 0x64, byte lo + 1, 0x64] = 1024 + (q + 128) per half; minus 1152 = q.
    const uint32_t h = __byte_perm(wx, 0x64646464u, 0x4140 + kLo * 0x0101);
    return sub(h, 0x64806480u);
  }
};

__device__ __forceinline__ float load_scale(const void* p, FloatType d, int64_t i) {
  return load_bias(p, d, i);  // the same three dtypes, read the same way
}

// One warp's weights and scales of one chunk. v: int4: the lane's 4 fragment words of each
// row tile; int8: 16 bytes of row g ([0]) and of row g + 8 ([1]). s[w][h][r]: the scale of
// group half h (G = 32) for row g (r = 0) or g + 8 (r = 1). z[w][r]: int4 only, the
// zero point (128 + z or 1024 + z) as a pair, of the lane's own group.
template <int Bits, int WN>
struct Chunk {
  uint4 v[WN][Bits == 4 ? 1 : 2];
  float s[WN][2][2];
  uint32_t z[WN][2];
};

template <int Bits, typename T, int WN, int MT, int kWarps, int kPf>
__global__ void __launch_bounds__(kWarps * 32)
wxa16_gemm_kernel(const WXA16GemmArgs p) {
  constexpr int kThreads = kWarps * 32;
  constexpr int kTok = 8 * MT;
  constexpr int kAcc = WN * MT * 4;
  __shared__ __align__(16) T xs[kStages][kTok][kXRow];
  __shared__ bool last_cta;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int nk = (p.K + kChunkK - 1) / kChunkK;
  const int split = blockIdx.y;
  const int c_begin = static_cast<int>(static_cast<int64_t>(nk) * split / p.splits);
  const int c_end = static_cast<int>(static_cast<int64_t>(nk) * (split + 1) / p.splits);
  const int m0 = blockIdx.z * kTok;
  const int rt0 = (blockIdx.x * kWarps + warp) * WN;  // this warp's first 16-row tile
  const int n16 = (p.N + 15) / 16;
  const bool two = p.group == 32;  // a chunk holds two groups
  const uint32_t magic = Half<T>::kMagic;

  const T* x = static_cast<const T*>(p.x);
  auto load_x = [&](int c, int stage) {
    for (int i = threadIdx.x; i < kTok * 8; i += kThreads) {
      const int row = i / 8, piece = i % 8;
      const int m = m0 + row;
      const int64_t k = static_cast<int64_t>(c) * kChunkK + piece * 8;
      const bool ok = m < p.M && k < p.K;
      mma_tiled::cp_async16(smem_u32(&xs[stage][row][piece * 8]),
                            ok ? x + static_cast<int64_t>(m) * p.ldx + k : x, ok);
    }
  };

  const uint8_t* wbytes = static_cast<const uint8_t*>(p.w);
  const uint4 zero4 = make_uint4(0, 0, 0, 0);
  auto load_w = [&](int c, Chunk<Bits, WN>& b) {
    const bool in = c < c_end;
    const int gi = p.group == 0 ? 0 : c * kChunkK / p.group;
#pragma unroll
    for (int w = 0; w < WN; ++w) {
      const int rt = rt0 + w;
      if constexpr (Bits == 4) {
        const bool ok = in && rt < n16;
        b.v[w][0] = ok ? smallm::ld_stream(wbytes + (static_cast<int64_t>(rt) * nk + c) *
                                                       kTileBytes4 + lane * 16)
                       : zero4;
      } else {
        const int64_t k = static_cast<int64_t>(c) * kChunkK + 16 * t;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int n = rt * 16 + g + 8 * r;
          b.v[w][r] = (in && n < p.N && k < p.K)
                          ? smallm::ld_stream(wbytes + static_cast<int64_t>(n) * p.ldw + k)
                          : zero4;
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int n = rt * 16 + g + 8 * r;
        const bool ok = in && n < p.N;
        const int64_t row = static_cast<int64_t>(n) * p.scale_ld;
        b.s[w][0][r] = ok ? load_scale(p.scales, p.scale_dtype, row + gi) : 0.f;
        b.s[w][1][r] = (ok && two && (2 * c + 1) * 32 < p.K)
                           ? load_scale(p.scales, p.scale_dtype, row + 2 * c + 1)
                           : 0.f;
        if constexpr (Bits == 4) {
          // G = 32 with K % 64 == 32: the last chunk's lanes t >= 2 lie past K (group zi
          // does not exist; their activations are zero).
          const int zi = two ? 2 * c + (t >> 1) : gi;
          const uint32_t z = (ok && p.zeros != nullptr && zi * (two ? 32 : 1) < p.K)
                                 ? p.zeros[static_cast<int64_t>(n) * p.zero_ld + zi]
                                 : 8u;
          b.z[w][r] = magic | (z * 0x00010001u);
        } else {
          b.z[w][r] = 0;
        }
      }
    }
  };

  // The A fragment of k-step s of row tile w.
  auto fragment = [&](const Chunk<Bits, WN>& b, int w, int s, uint32_t (&a)[4]) {
    if constexpr (Bits == 4) {
      const uint32_t q = s == 0 ? b.v[w][0].x : s == 1 ? b.v[w][0].y
                       : s == 2 ? b.v[w][0].z : b.v[w][0].w;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        a[i] = Half<T>::sub(((q >> (4 * i)) & 0x000f000fu) | magic, b.z[w][i & 1]);
    } else {
      const uint4& vg = b.v[w][0];
      const uint4& vg8 = b.v[w][1];
      const uint32_t qg = (s == 0 ? vg.x : s == 1 ? vg.y : s == 2 ? vg.z : vg.w) ^ 0x80808080u;
      const uint32_t qg8 =
          (s == 0 ? vg8.x : s == 1 ? vg8.y : s == 2 ? vg8.z : vg8.w) ^ 0x80808080u;
      a[0] = Half<T>::template int8_pair<0>(qg);
      a[1] = Half<T>::template int8_pair<0>(qg8);
      a[2] = Half<T>::template int8_pair<2>(qg);
      a[3] = Half<T>::template int8_pair<2>(qg8);
    }
  };

  float acc[WN][MT][4];
#pragma unroll
  for (int w = 0; w < WN; ++w)
#pragma unroll
    for (int j = 0; j < MT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[w][j][i] = 0.f;

  auto compute = [&](const Chunk<Bits, WN>& b, int stage) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (h == 1 && !two) break;
      // G = 32: pass h keeps the k of the lanes whose group is 2 c + h.
      const bool keep = !two || (t >> 1) == h;
      float part[WN][MT][4];
#pragma unroll
      for (int w = 0; w < WN; ++w)
#pragma unroll
        for (int j = 0; j < MT; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i) part[w][j][i] = 0.f;
#pragma unroll
      for (int sp = 0; sp < 2; ++sp) {
        uint4 xv[MT];
#pragma unroll
        for (int j = 0; j < MT; ++j) {
          xv[j] = *reinterpret_cast<const uint4*>(&xs[stage][8 * j + g][16 * t + 8 * sp]);
          if (!keep) xv[j] = zero4;
        }
#pragma unroll
        for (int ss = 0; ss < 2; ++ss) {
#pragma unroll
          for (int w = 0; w < WN; ++w) {
            uint32_t a[4];
            fragment(b, w, 2 * sp + ss, a);
#pragma unroll
            for (int j = 0; j < MT; ++j)
              Half<T>::mma(part[w][j], a, ss ? xv[j].z : xv[j].x, ss ? xv[j].w : xv[j].y);
          }
        }
      }
#pragma unroll
      for (int w = 0; w < WN; ++w)
#pragma unroll
        for (int j = 0; j < MT; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i)
            acc[w][j][i] = fmaf(part[w][j][i], b.s[w][h][i >> 1], acc[w][j][i]);
    }
  };

  // Prologue: kPf chunks of weights and kStages - 1 of activations in flight.
  Chunk<Bits, WN> wb[kPf];
#pragma unroll
  for (int u = 0; u < kPf; ++u) load_w(c_begin + u, wb[u]);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (c_begin + s < c_end) load_x(c_begin + s, s);
    mma_tiled::cp_async_commit();
  }

  for (int c0 = c_begin; c0 < c_end; c0 += kPf) {
#pragma unroll
    for (int u = 0; u < kPf; ++u) {
      const int c = c0 + u;
      if (c >= c_end) break;
      const int it = c - c_begin;
      mma_tiled::cp_async_wait<kStages - 2>();
      __syncthreads();  // chunk c's activations landed; stage (it - 1) is free to refill
      if (c + kStages - 1 < c_end) load_x(c + kStages - 1, (it + kStages - 1) % kStages);
      mma_tiled::cp_async_commit();
      const Chunk<Bits, WN> cur = wb[u];
      load_w(c + kPf, wb[u]);
      compute(cur, it % kStages);
    }
  }
  mma_tiled::cp_async_wait<0>();

  if (p.splits > 1) {
    float* ws = static_cast<float*>(p.workspace);
    const int tile = blockIdx.z * gridDim.x + blockIdx.x;
    const int64_t tiles = static_cast<int64_t>(gridDim.x) * gridDim.z;
    auto slot = [&](int sp) {
      return reinterpret_cast<float4*>(
          ws + ((static_cast<int64_t>(tile) * p.splits + sp) * kThreads + threadIdx.x) * kAcc);
    };
    float4* mine = slot(split);
#pragma unroll
    for (int w = 0; w < WN; ++w)
#pragma unroll
      for (int j = 0; j < MT; ++j)
        __stcg(mine + w * MT + j, make_float4(acc[w][j][0], acc[w][j][1], acc[w][j][2],
                                              acc[w][j][3]));
    __threadfence();
    __syncthreads();
    unsigned* counters = reinterpret_cast<unsigned*>(ws + tiles * p.splits * kThreads * kAcc);
    if (threadIdx.x == 0) {
      const unsigned prev = atomicAdd(&counters[tile], 1u);
      last_cta = prev == static_cast<unsigned>(p.splits - 1);
      if (last_cta) counters[tile] = 0;  // ready for the next launch
    }
    __syncthreads();
    if (!last_cta) return;
    __threadfence();
#pragma unroll
    for (int w = 0; w < WN; ++w)
#pragma unroll
      for (int j = 0; j < MT; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[w][j][i] = 0.f;
    for (int sp = 0; sp < p.splits; ++sp) {
      const float4* part = slot(sp);
#pragma unroll
      for (int w = 0; w < WN; ++w)
#pragma unroll
        for (int j = 0; j < MT; ++j) {
          const float4 v = __ldcg(part + w * MT + j);
          acc[w][j][0] += v.x;
          acc[w][j][1] += v.y;
          acc[w][j][2] += v.z;
          acc[w][j][3] += v.w;
        }
    }
  }

  // Fragment (i) -> (n, m): c0, c1 at row g, c2, c3 at row g + 8; tokens 2t, 2t + 1.
#pragma unroll
  for (int w = 0; w < WN; ++w) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int n = (rt0 + w) * 16 + g + 8 * r;
      if (n >= p.N) continue;
      const float bias = p.bias ? load_bias(p.bias, p.bias_dtype, n) : 0.f;
#pragma unroll
      for (int j = 0; j < MT; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int m = m0 + 8 * j + 2 * t + e;
          if (m < p.M)
            store_out(p.out, p.x_dtype, static_cast<int64_t>(m) * p.ldo + n,
                      acc[w][j][2 * r + e] + bias);
        }
    }
  }
}

// Plan (split and workspace) or launch one configuration.
template <int Bits, typename T, int WN, int MT, int kWarps, int kPf>
cudaError_t run(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  constexpr int kRows = 16 * WN * kWarps, kTok = 8 * MT, kThreads = 32 * kWarps;
  const dim3 grid((p.N + kRows - 1) / kRows, 1, (p.M + kTok - 1) / kTok);
  if (plan) {
    int device = 0;
    const cudaError_t e = current_device(device);
    if (e != cudaSuccess) return e;
    const int sms = sm_count(device) > 0 ? sm_count(device) : 108;
    const int64_t tiles = static_cast<int64_t>(grid.x) * (grid.z > 0 ? grid.z : 1);
    const int nk = (p.K + kChunkK - 1) / kChunkK;
    // Enough CTAs for four per SM, each with at least kPf chunks to keep its loads in flight.
    int splits = 1;
    if (tiles < 2 * sms) {
      const int64_t want = (4 * sms + tiles - 1) / tiles;
      const int most = nk / kPf > 1 ? nk / kPf : 1;
      splits = static_cast<int>(want < most ? want : most);
      if (splits > 64) splits = 64;
    }
    p.splits = splits;
    p.workspace_bytes = 0;
    if (splits > 1) {
      const size_t partials = static_cast<size_t>(tiles) * splits * kThreads * WN * MT * 4;
      p.workspace_bytes = ((partials + static_cast<size_t>(tiles)) * 4 + 15) / 16 * 16;
    }
    return cudaSuccess;
  }
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (p.splits < 1 || (p.splits > 1 && p.workspace == nullptr)) return cudaErrorInvalidValue;
  if (grid.z > 65535) return cudaErrorInvalidValue;
  if (p.splits > 1) {
    // Zero the counters (the partials need no clearing: every CTA writes its own).
    const size_t tiles = static_cast<size_t>(grid.x) * grid.z;
    const size_t partials = tiles * p.splits * kThreads * WN * MT * 4;
    const cudaError_t e = cudaMemsetAsync(static_cast<float*>(p.workspace) + partials, 0,
                                          tiles * sizeof(unsigned), stream);
    if (e != cudaSuccess) return e;
  }
  wxa16_gemm_kernel<Bits, T, WN, MT, kWarps, kPf>
      <<<dim3(grid.x, p.splits, grid.z), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// The decode and tiled configurations of one bit width, by x's dtype.
// Decode: 4 warps x one 16-row tile, 16 tokens, 4 chunks of weight in flight per warp.
// Tiled: 8 warps x one 16-row tile, 64 tokens (one A fragment feeds 8 mmas), 2 in flight;
// 216 registers, no spills (two row tiles per warp spill).
template <int Bits, typename T>
cudaError_t decode_of(WXA16GemmArgs& p, cudaStream_t s, bool plan) {
  return run<Bits, T, 1, 2, 4, 4>(p, s, plan);
}
template <int Bits, typename T>
cudaError_t tiled_of(WXA16GemmArgs& p, cudaStream_t s, bool plan) {
  return run<Bits, T, 1, 8, 8, 2>(p, s, plan);
}

template <int Bits>
cudaError_t decode(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  if (p.M > kWXA16DecodeMaxM) return cudaErrorInvalidValue;
  if (p.x_dtype == FloatType::kBF16) return decode_of<Bits, __nv_bfloat16>(p, stream, plan);
  if (p.x_dtype == FloatType::kF16) return decode_of<Bits, __half>(p, stream, plan);
  return cudaErrorInvalidValue;
}

template <int Bits>
cudaError_t tiled(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  if (p.x_dtype == FloatType::kBF16) return tiled_of<Bits, __nv_bfloat16>(p, stream, plan);
  if (p.x_dtype == FloatType::kF16) return tiled_of<Bits, __half>(p, stream, plan);
  return cudaErrorInvalidValue;
}

}  // namespace wxa16
}  // namespace lowbit
