// sm_90a FP8 GEMM: a persistent kernel with TMA loads into a multi-stage shared-memory ring,
// wgmma (QGMMA) from shared memory, fp32 promotion of every 128-K tile, scales and bias in
// the epilogue.
//
// Roles. Warpgroup 0 is the producer: one thread walks the CTA's output tiles and their
// 128-K steps, waits for a free stage and issues two TMA loads (a 128 x 128 tile of a and
// of b) that complete on the stage's "full" mbarrier; setmaxnreg gives its registers to the
// consumers. Warpgroups 1 and 2 each own 64 rows of the 128 x 128 output tile: per step they
// run four m64n128k32 wgmmas over the stage, release it on its "empty" mbarrier (one
// arrival per consumer warp) and fold the step into their fp32 accumulators.
//
// Overlap. The promotion of step i (64 FMAs per thread) runs while the wgmmas of step i + 1
// execute: the step's partial sums alternate between two register tiles, and the consumer
// waits with wait_group 1 (step i done, step i + 1 still in flight). The tensor cores never
// wait for the promotion, and both consumer warpgroups keep a group queued.
//
// Schedule. One CTA per SM; CTA c takes tiles c, c + grid, c + 2 grid, ... in a grouped
// order (kGroupM row tiles of a, then the next column tile of b), so that the tiles in flight
// at one time share their a and b panels in L2. The producer runs ahead into the next tile
// while the consumers write the epilogue of the current one.
//
// Accuracy. FP8 wgmma accumulates with about 14 bits of mantissa. Each 128-K step starts
// from a zero tensor-core accumulator (scale-d = 0) and is added to fp32 registers afterwards
// (times its block scales when scales are per 128-block): promotion every 128 K, as the SPEC
// asks. fast_accum (without block scales) keeps accumulating inside the tensor core.
//
// Layout. a [M, K] and b [N, K] are both K-major ("TN", the only layout FP8 wgmma takes):
// TMA writes each 128-byte row of a tile with the 128-byte swizzle, which is exactly the
// layout the wgmma shared-memory descriptor describes (8-row atoms 1024 bytes apart). Rows
// and K past the ends read as zeros, so tails need no special mainloop.
#include <cuda_runtime.h>

#include "fp8_gemm_epilogue.cuh"
#include "fp8_gemm_sm90.h"
#include "sm90_primitives.cuh"

namespace lowbit {
namespace sm90 {

constexpr int kBM = 128, kBN = 128, kBK = 128;
constexpr int kStages = 6;
constexpr int kGroupM = 8;             // row tiles per raster group
constexpr int kTileBytes = kBM * kBK;  // one operand tile, bytes (fp8)
constexpr int kThreads = 384;          // producer warpgroup + 2 consumer warpgroups
[[maybe_unused]] constexpr int kConsumerWarps = 8;  // arrivals that free a stage
constexpr int kSmemBytes = kStages * 2 * kTileBytes + 1024 /*alignment*/ + 256 /*barriers*/;
static_assert(kBK == 128, "one 128-byte swizzle row per tile row");
static_assert(kBM == 2 * 64, "two consumer warpgroups of m64 each");
static_assert(kBN == kBM, "both operand tiles are 128 x 128");

struct Tile {
  int m0, n0;
};

// Grouped raster: tile t -> (row tile, column tile), kGroupM row tiles at a time.
__device__ __forceinline__ Tile tile_at(int t, int tiles_m, int tiles_n) {
  const int per_group = kGroupM * tiles_n;
  const int first_m = (t / per_group) * kGroupM;
  const int rows = min(tiles_m - first_m, kGroupM);
  const int r = t % per_group;
  return {(first_m + r % rows) * kBM, (r / rows) * kBN};
}

#ifdef LOWBIT_SM90A
// One 128-K step of a consumer warpgroup: four m64n128k32 wgmmas into d, one commit group.
template <int kScaleD>
__device__ __forceinline__ void issue_step(float (&d)[64], const uint8_t* ta,
                                           const uint8_t* tb) {
  fence_regs(d);
  wgmma_fence();
  wgmma_m64n128k32<kScaleD>(d, smem_desc(ta), smem_desc(tb));
#pragma unroll
  for (int kk = 1; kk < kBK / 32; ++kk)
    wgmma_m64n128k32<1>(d, smem_desc(ta + kk * 32), smem_desc(tb + kk * 32));
  wgmma_commit();
  fence_regs(d);
}

// acc += part * (f0 for row0, f1 for row0 + 8). Fragment: register 4j + {0, 1} holds row0,
// 4j + {2, 3} row0 + 8.
__device__ __forceinline__ void promote(float (&acc)[64], const float (&part)[64], float f0,
                                        float f1) {
#pragma unroll
  for (int j = 0; j < 64; j += 4) {
    acc[j + 0] = fmaf(part[j + 0], f0, acc[j + 0]);
    acc[j + 1] = fmaf(part[j + 1], f0, acc[j + 1]);
    acc[j + 2] = fmaf(part[j + 2], f1, acc[j + 2]);
    acc[j + 3] = fmaf(part[j + 3], f1, acc[j + 3]);
  }
}

// Per-step promotion factors of rows row0 and row0 + 8: the block scales of step i (1 when
// neither operand is block-scaled; the epilogue applies tensor and row scales).
template <bool kBlock>
__device__ __forceinline__ void step_scales(const Fp8GemmArgs& p, int row0, int n0, int i,
                                            float& f0, float& f1) {
  if (!kBlock) {
    f0 = f1 = 1.f;
    return;
  }
  float sb = 1.f;
  if (p.b_mode == ScaleMode::kBlock) sb = __ldg(&p.b_scale[(n0 / 128) * p.b_scale_ld + i]);
  f0 = f1 = sb;
  if (p.a_mode == ScaleMode::kBlock) {
    f0 = row0 < p.M ? sb * __ldg(&p.a_scale[int64_t(row0) * p.a_scale_ld + i]) : 0.f;
    f1 = row0 + 8 < p.M ? sb * __ldg(&p.a_scale[int64_t(row0 + 8) * p.a_scale_ld + i]) : 0.f;
  }
}

// Scales (those not applied per step), bias, and the store of one warp's 16 x 128 slice.
// Every load is issued before the first store, so the tile pays one memory latency, not one
// per column pair.
__device__ __forceinline__ void epilogue(const Fp8GemmArgs& p, const float (&acc)[64],
                                         int row0, int n0, int lane, bool pair_ok) {
  const bool a_step = p.a_mode == ScaleMode::kBlock, b_step = p.b_mode == ScaleMode::kBlock;
  float col[32], add[32];  // column factor and bias of columns n0 + 8j + 2(lane % 4) + e
#pragma unroll
  for (int j = 0; j < 16; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int n = min(n0 + 8 * j + 2 * (lane % 4) + e, p.N - 1);
      col[2 * j + e] = b_step ? 1.f : __ldg(&p.b_scale[p.b_mode == ScaleMode::kRow ? n : 0]);
      add[2 * j + e] = p.bias ? load_bias(p.bias, p.bias_dtype, n) : 0.f;
    }
  }
  float row_scale[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int m = min(row0 + 8 * h, p.M - 1);
    row_scale[h] = a_step ? 1.f : __ldg(&p.a_scale[p.a_mode == ScaleMode::kRow ? m : 0]);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int m = row0 + 8 * h;
    if (m >= p.M) continue;
    const int64_t row = static_cast<int64_t>(m) * p.ldo;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int n = n0 + 8 * j + 2 * (lane % 4);
      if (n >= p.N) continue;
      const float v0 = acc[4 * j + 2 * h] * row_scale[h] * col[2 * j] + add[2 * j];
      const float v1 = acc[4 * j + 2 * h + 1] * row_scale[h] * col[2 * j + 1] + add[2 * j + 1];
      if (pair_ok && n + 1 < p.N) {
        store_out2(p.out, p.out_dtype, row + n, v0, v1);
      } else {
        store_out(p.out, p.out_dtype, row + n, v0);
        if (n + 1 < p.N) store_out(p.out, p.out_dtype, row + n + 1, v1);
      }
    }
  }
}
#endif  // LOWBIT_SM90A

// kPromote: fp32 promotion every 128 K (else fast_accum); kBlock: per-128-block scales
// applied per step.
template <bool kPromote, bool kBlock>
__global__ void __launch_bounds__(kThreads, 1)
sm90_fp8_gemm_wgmma_kernel(const __grid_constant__ CUtensorMap map_a,
                           const __grid_constant__ CUtensorMap map_b, const Fp8GemmArgs p) {
#ifdef LOWBIT_SM90A
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  // Swizzled tiles need 1024-byte alignment.
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* tiles_a = smem;
  uint8_t* tiles_b = smem + kStages * kTileBytes;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + 2 * kStages * kTileBytes);
  uint64_t* empty = full + kStages;

  const int wg = threadIdx.x / 128;
  const int tiles_m = (p.M + kBM - 1) / kBM, tiles_n = (p.N + kBN - 1) / kBN;
  const int tiles = tiles_m * tiles_n;
  const int nk = (p.K + kBK - 1) / kBK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    if (threadIdx.x == 0) {
      tma_prefetch_desc(&map_a);
      tma_prefetch_desc(&map_b);
      int it = 0;  // steps issued by this CTA, across its tiles
      for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        const Tile tile = tile_at(t, tiles_m, tiles_n);
        for (int i = 0; i < nk; ++i, ++it) {
          const int s = it % kStages;
          // A fresh barrier completes phase "1" at once, so the first pass does not wait.
          mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);
          mbar_expect_tx(&full[s], 2 * kTileBytes);
          tma_load_2d(tiles_a + s * kTileBytes, &map_a, &full[s], i * kBK, tile.m0);
          tma_load_2d(tiles_b + s * kTileBytes, &map_b, &full[s], i * kBK, tile.n0);
        }
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
  const int cw = wg - 1;  // consumer warpgroup: rows cw*64 .. cw*64+63 of the tile
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const bool pair_ok = pair_store_ok(p.out, p.out_dtype, p.ldo);

  int it = 0;  // steps consumed, in the producer's order
  auto wait_full = [&](int step) {
    const int s = step % kStages;
    mbar_wait(&full[s], (step / kStages) & 1);
    return s;
  };
  auto release = [&](int s) {
    if (lane == 0) mbar_arrive(&empty[s]);
  };

  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    const Tile tile = tile_at(t, tiles_m, tiles_n);
    const int row0 = tile.m0 + cw * 64 + warp * 16 + lane / 4;  // and row0 + 8
    float acc[64];

    if constexpr (kPromote) {
#pragma unroll
      for (int r = 0; r < 64; ++r) acc[r] = 0.f;
      float part0[64], part1[64];
      float f0a, f1a, f0b, f1b;  // promotion factors of the steps in part0 / part1
      const uint8_t* a_rows = tiles_a + cw * 64 * kBK;
      // Step i lives in part0 when i is even, part1 when odd. The loop is peeled so that
      // every path through it has the same wgmma groups in flight (the compiler checks).
      int s0 = wait_full(it), s1 = 0;
      step_scales<kBlock>(p, row0, tile.n0, 0, f0a, f1a);
      issue_step<0>(part0, a_rows + s0 * kTileBytes, tiles_b + s0 * kTileBytes);
      int i = 0;
      for (; i + 2 < nk; i += 2) {  // step i in flight in part0
        s1 = wait_full(it + i + 1);
        step_scales<kBlock>(p, row0, tile.n0, i + 1, f0b, f1b);
        issue_step<0>(part1, a_rows + s1 * kTileBytes, tiles_b + s1 * kTileBytes);
        wgmma_wait<1>();
        fence_regs(part0);
        release(s0);
        promote(acc, part0, f0a, f1a);
        s0 = wait_full(it + i + 2);
        step_scales<kBlock>(p, row0, tile.n0, i + 2, f0a, f1a);
        issue_step<0>(part0, a_rows + s0 * kTileBytes, tiles_b + s0 * kTileBytes);
        wgmma_wait<1>();
        fence_regs(part1);
        release(s1);
        promote(acc, part1, f0b, f1b);
      }
      if (i + 1 < nk) {  // two steps left: i (in flight) and i + 1
        s1 = wait_full(it + i + 1);
        step_scales<kBlock>(p, row0, tile.n0, i + 1, f0b, f1b);
        issue_step<0>(part1, a_rows + s1 * kTileBytes, tiles_b + s1 * kTileBytes);
        wgmma_wait<1>();
        fence_regs(part0);
        release(s0);
        promote(acc, part0, f0a, f1a);
        wgmma_wait<0>();
        fence_regs(part1);
        release(s1);
        promote(acc, part1, f0b, f1b);
      } else {  // one step left
        wgmma_wait<0>();
        fence_regs(part0);
        release(s0);
        promote(acc, part0, f0a, f1a);
      }
      it += nk;
    } else {
      int prev = 0;
      for (int i = 0; i < nk; ++i) {
        const int s = wait_full(it + i);
        const uint8_t* ta = tiles_a + s * kTileBytes + cw * 64 * kBK;
        const uint8_t* tb = tiles_b + s * kTileBytes;
        if (i == 0) {
          issue_step<0>(acc, ta, tb);
        } else {
          issue_step<1>(acc, ta, tb);
          wgmma_wait<1>();  // step i - 1 is done: its stage can be refilled
          release(prev);
        }
        prev = s;
      }
      wgmma_wait<0>();
      fence_regs(acc);
      release(prev);
      it += nk;
    }
    epilogue(p, acc, row0, tile.n0, lane, pair_ok);
  }
#else
  __trap();  // built without sm_90a: the host never launches this
#endif
}

template <bool kPromote, bool kBlock>
cudaError_t launch(const CUtensorMap& map_a, const CUtensorMap& map_b, const Fp8GemmArgs& p,
                   cudaStream_t stream) {
  auto kernel = sm90_fp8_gemm_wgmma_kernel<kPromote, kBlock>;
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  // The shared-memory opt-in is a per-device attribute of the function.
  static bool attr_set[kMaxDevices] = {};
  if (device >= kMaxDevices) return cudaErrorInvalidDevice;
  if (!attr_set[device]) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
    if (e != cudaSuccess) return e;
    attr_set[device] = true;
  }
  const int tiles = ((p.M + kBM - 1) / kBM) * ((p.N + kBN - 1) / kBN);
  const int sms = sm_count(device);
  const int grid = sms > 0 && sms < tiles ? sms : tiles;
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(map_a, map_b, p);
  return cudaGetLastError();
}

}  // namespace sm90

cudaError_t sm90_fp8_gemm_wgmma(const Fp8GemmArgs& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  CUtensorMap map_a, map_b;
  if (!sm90::make_map_k128(&map_a, p.a, p.M, p.K, p.lda, sm90::kBM) ||
      !sm90::make_map_k128(&map_b, p.b, p.N, p.K, p.ldb, sm90::kBN))
    return cudaErrorInvalidValue;
  const bool block = p.a_mode == ScaleMode::kBlock || p.b_mode == ScaleMode::kBlock;
  if (block) return sm90::launch<true, true>(map_a, map_b, p, stream);
  if (p.fast_accum) return sm90::launch<false, false>(map_a, map_b, p, stream);
  return sm90::launch<true, false>(map_a, map_b, p, stream);
}

}  // namespace lowbit
