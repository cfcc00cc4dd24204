// sm_90a 8-bit GEMM, FP8 and INT8: a persistent kernel with TMA loads into a multi-stage
// shared-memory ring, wgmma from shared memory (QGMMA for e4m3, IGMMA for s8), for FP8 fp32
// promotion of every 128-K tile, scales and bias in the epilogue. The operand type is a
// template parameter (sm90.cuh: E4M3, S8); the FP8 and INT8 families instantiate it in their
// own translation units (fp8/sm90_fp8_gemm_wgmma.cu, int8/sm90_int8_gemm_wgmma.cu).
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
// order (4 or 8 row tiles of a, then the next column tile of b), so that the tiles in flight
// at one time share their a and b panels in L2. The producer runs ahead into the next tile
// while the consumers write the epilogue of the current one.
//
// Ping-pong (kPing, the FP8 promoted kernel with 16-bit outputs only, when
// LOWBIT_WGMMA_SCHEDULE=pingpong: an experiment switch, read once per process, for the
// schedule comparison of bench/NOTES.md). Each consumer warpgroup owns whole 64 x 128 tiles
// instead of half of a 128 x 128 one: the CTA's tiles alternate between the two warpgroups,
// and since the producer fills the ring in tile order, one warpgroup's mainloop runs while
// the other stores its tile, so the tensor cores need not wait for an epilogue. A stage is
// then a 64-row tile of a and a 128-row tile of b (8 stages of 24 KB): 1.5x the operand
// bytes per MAC of the cooperative tile, whose a and b tiles serve both warpgroups. (The
// promotion's two partial-sum tiles leave no registers for a 128 x 128 tile per warpgroup.)
// A warpgroup starts waiting for its tile's stages only once the other has waited for every
// stage of the tile before (the "turn" mbarrier, one phase per tile): the ring's barriers
// tell phases apart by parity alone, so a waiter may never run two phases ahead of a stage.
//
// Epilogue. Each consumer warpgroup scales its 64 x 128 fp32 tile, converts it and writes it
// to a shared-memory staging tile in the 128-byte-swizzled layout (no bank conflicts; 16-bit
// outputs with stmatrix, four 8 x 8 matrices per instruction), and
// one thread hands it to TMA stores, which run while the warpgroup goes on with the next
// tile's mainloop; stores past M and N are clipped by TMA. The column scales and bias of a
// tile are loaded at its start (one value per thread) and pass through shared memory, so no
// load latency is left in the epilogue. Storing from registers straight to global memory
// (16-byte pieces of 8 rows per warp instruction) cost much more (see bench/NOTES.md, "FP8
// GEMM kernels: where the time went"); outputs TMA cannot address (row stride or base not a
// multiple of 16 bytes) take that direct path.
//
// INT8. s8 wgmma accumulates in int32, exactly: the mainloop is the FP8 fast_accum one (no
// promotion), and the epilogue turns the accumulator into fp32 once (after the zero-point
// correction of asymmetric activations, in 64-bit integers), then applies the same scales
// and bias; int8_mm stores the int32 accumulator itself.
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
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "common/sm90_gemm.cuh"

namespace lowbit {
namespace sm90 {

constexpr int kBM = 128, kBN = 128, kBK = 128;
// Row tiles per raster group: 4 where both N and K are large (the a and b panels of the
// tiles in flight then fill L2 sooner), else 8 (the sweep: see bench/NOTES.md, "wgmma raster
// group"; on the H200, whose L2 is 60 MB, 8 ran faster at 8192^3 in one-process-per-value
// sweeps, not yet in interleaved rounds: "The first GPU run since 6200c02").
// LOWBIT_WGMMA_RASTER=g overrides it for the raster sweep (bench/sweep_raster.py): g > 0, g
// row tiles per group; g < 0, -g column tiles per group (consecutive tiles walk down M).
// Read once per process.
inline int raster_group(int N, int K) {
  static const int forced = env_int("LOWBIT_WGMMA_RASTER");
  if (forced != 0) return forced;
  return N >= 8192 && K >= 8192 ? 4 : 8;
}
constexpr int kTileBytes = kBM * kBK;  // one operand tile, bytes (fp8)
constexpr int kPingRows = 64;          // a tile's rows under the ping-pong schedule
constexpr int kThreads = 384;          // producer warpgroup + 2 consumer warpgroups
[[maybe_unused]] constexpr int kConsumerWarps = 8;  // arrivals that free a stage
static_assert(kBK == 128, "one 128-byte swizzle row per tile row");
static_assert(kBM == 2 * 64, "two consumer warpgroups of m64 each");
static_assert(kBN == kBM, "both operand tiles are 128 x 128");

// Shared memory for an output of kOutBytes-wide elements: the operand ring (as many stages as
// fit beside the staging tiles: 6 for 16-bit outputs, 5 for fp32, one fewer when block scales
// travel with the stages), one 64 x 128 staging tile and 128 column factors and biases per
// consumer warpgroup, the stages' block scales (kScaleTma), the barriers. The dynamic
// shared-memory base is 1024-byte aligned (checked in the kernel), as the swizzle needs.
// Under ping-pong (kPing) a stage's a tile has 64 rows, and the ring is as deep as fits, up
// to 8 stages.
template <int kOutBytes, bool kScaleTma, bool kPing = false>
struct Smem {
  static_assert(!(kPing && kScaleTma), "ping-pong: no block scales");
  static constexpr int kATile = kPing ? kPingRows * kBK : kTileBytes;  // bytes of a per stage
  static constexpr int kStageOut = 64 * kBN * kOutBytes;  // one warpgroup's staging tile
  static constexpr int kPingStages =
      (kSmemLimit - 2 * kStageOut - 4 * kBN * 4 - 256) / (kATile + kTileBytes);
  static constexpr int kStages =
      kPing ? (kPingStages < 8 ? kPingStages : 8)
            : (kOutBytes == 4 ? 5 : 6) - (kScaleTma ? 1 : 0);
  // Per stage: a's scales of the tile's 128 rows for 4 consecutive steps [128][4], then b's
  // 4 (TMA destinations are 128-byte aligned).
  static constexpr int kScaleSlot = kScaleTma ? kBM * 4 * 4 + 128 : 0;
  static constexpr int kA = 0;
  static constexpr int kB = kA + kStages * kATile;
  static constexpr int kOut = kB + kStages * kTileBytes;
  static constexpr int kCol = kOut + 2 * kStageOut;
  static constexpr int kAdd = kCol + 2 * kBN * 4;
  static constexpr int kScales = kAdd + 2 * kBN * 4;
  static constexpr int kBars = kScales + kStages * kScaleSlot;
  static constexpr int kTurn = kBars + 2 * kStages * 8;  // ping-pong's turn barrier
  static constexpr int kBytes = kTurn + (kPing ? 8 : 0);
  static_assert(kBytes <= kSmemLimit, "over the 227 KB a CTA may opt in to");
};

struct Tile {
  int m0, n0;
};

// Grouped raster: tile t -> (row tile, column tile), `group` row tiles of kRows rows at a time
// (a negative group: -group column tiles at a time).
template <int kRows = kBM>
__device__ __forceinline__ Tile tile_at(int t, int tiles_m, int tiles_n, int group) {
  if (group < 0) {
    const int per_group = -group * tiles_m;
    const int first_n = (t / per_group) * -group;
    const int cols = min(tiles_n - first_n, -group);
    const int r = t % per_group;
    return {(r / cols) * kRows, (first_n + r % cols) * kBN};
  }
  const int per_group = group * tiles_n;
  const int first_m = (t / per_group) * group;
  const int rows = min(tiles_m - first_m, group);
  const int r = t % per_group;
  return {(first_m + r % rows) * kRows, (r / rows) * kBN};
}

#ifdef LOWBIT_SM90A
// One 128-K step of a consumer warpgroup: four m64n128k32 wgmmas into d, one commit group.
// a_lo, b_lo: low descriptor words of the stage's a rows and b tile; the k-th 32-byte
// column block starts 2 units further on.
template <class Op, int kScaleD>
__device__ __forceinline__ void issue_step(typename Op::Acc (&d)[64], uint32_t a_lo,
                                           uint32_t b_lo) {
  fence_regs(d);
  wgmma_fence();
  wgmma_m64n128k32<Op, kScaleD>(d, desc_of(a_lo), desc_of(b_lo));
#pragma unroll
  for (int kk = 1; kk < kBK / 32; ++kk)
    wgmma_m64n128k32<Op, 1>(d, desc_of(a_lo + kk * 2), desc_of(b_lo + kk * 2));
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
__device__ __forceinline__ void step_scales(const GemmArgs& p, int row0, int n0, int i,
                                            float& f0, float& f1) {
  if (!kBlock) {
    f0 = f1 = 1.f;
    return;
  }
  // Loaded from global memory one step ahead of their use. A load's latency is not hidden
  // by one step (see bench/NOTES.md, "swapab block scales by TMA with the stages"), so this
  // is the fallback for scale layouts TMA cannot read; see step_scales_smem.
  float sb = 1.f;
  if (p.b_mode == ScaleMode::kBlock) sb = __ldg(&p.b_scale[(n0 / 128) * p.b_scale_ld + i]);
  f0 = f1 = sb;
  if (p.a_mode == ScaleMode::kBlock) {
    f0 = row0 < p.M ? sb * __ldg(&p.a_scale[int64_t(row0) * p.a_scale_ld + i]) : 0.f;
    f1 = row0 + 8 < p.M ? sb * __ldg(&p.a_scale[int64_t(row0 + 8) * p.a_scale_ld + i]) : 0.f;
  }
}

// The same factors read from the stage's scale slot, where the producer's TMA put them with
// the operand tiles: a [128 rows][4 steps] block of a's scales and 4 steps of b's.
__device__ __forceinline__ void step_scales_smem(const GemmArgs& p, const float* slot,
                                                 int r, int i, float& f0, float& f1) {
  const float sb = p.b_mode == ScaleMode::kBlock ? slot[kBM * 4 + (i & 3)] : 1.f;
  f0 = f1 = sb;
  if (p.a_mode == ScaleMode::kBlock) {  // rows past M read TMA's zero fill
    f0 = sb * slot[r * 4 + (i & 3)];
    f1 = sb * slot[(r + 8) * 4 + (i & 3)];
  }
}

// The INT8 accumulator of a warp's 16 x 128 slice as the epilogue's fp32 values: with
// asymmetric activations acc - a_zero[m] * b_sum[n], exact in 64 bits (its magnitude reaches
// 255 * 127 * K, past int32 from K = 66312 on), then rounded once; for an int32 output
// (kRaw), the accumulator's bits, which the epilogue stores untouched. sum_at(c): b_sum of
// the tile's column c.
template <bool kRaw, class SumAt>
__device__ __forceinline__ void int_values(const GemmArgs& p, const int32_t (&acc)[64],
                                           float (&v)[64], int row0, int lane, SumAt&& sum_at) {
  if constexpr (kRaw) {
#pragma unroll
    for (int j = 0; j < 64; ++j) v[j] = __int_as_float(acc[j]);
  } else if (p.a_zero == nullptr) {
#pragma unroll
    for (int j = 0; j < 64; ++j) v[j] = __int2float_rn(acc[j]);
  } else {
    int32_t z[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) z[h] = a_zero_of(p, min(row0 + 8 * h, p.M - 1));
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int32_t s = sum_at(8 * j + 2 * (lane % 4) + e);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = 4 * j + 2 * h + e;
          v[r] = zero_corrected(acc[r], z[h], s);
        }
      }
  }
}

// The scaled part of the direct epilogue: scales (those not applied per step), bias, and
// scalar or pair stores of one warp's 16 x 128 slice to global memory. Every load is issued
// before the first store.
__device__ __forceinline__ void epilogue_scaled(const GemmArgs& p, const float (&acc)[64],
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

// The direct epilogue, for outputs TMA cannot address: epilogue_scaled, or (kRaw) the int32
// bits of acc stored as they are.
template <bool kRaw>
__device__ __forceinline__ void epilogue_direct(const GemmArgs& p, const float (&acc)[64],
                                         int row0, int n0, int lane, bool pair_ok) {
  if constexpr (kRaw) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = row0 + 8 * h;
      if (m >= p.M) continue;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int n = n0 + 8 * j + 2 * (lane % 4);
        if (n >= p.N) continue;
        store_i32_pair(p.out, static_cast<int64_t>(m) * p.ldo + n,
                       __float_as_int(acc[4 * j + 2 * h]), __float_as_int(acc[4 * j + 2 * h + 1]),
                       n + 1 < p.N, pair_ok);
      }
    }
  } else {
    epilogue_scaled(p, acc, row0, n0, lane, pair_ok);
  }
}

// Two fp32 values of one row into a 32-bit staging tile (16-bit outputs go through
// stage_16bit).
__device__ __forceinline__ void put_f32x2(uint8_t* stage, int r, int c, float v0, float v1) {
  *reinterpret_cast<float2*>(stage + staged_offset<4>(r, c)) = make_float2(v0, v1);
}

// A warp's 16 rows x 128 columns of a 16-bit staging tile: value = acc * row scale * column
// factor + column addend. The accumulator fragment of two 8-column blocks j, j + 1 is four
// 8 x 8 matrices (rows 0-7 and 8-15 of block j, then of block j + 1), which one stmatrix.x4
// writes: 8 store instructions a thread instead of 32 two-element stores, each matrix row a
// whole 16-byte chunk of the swizzled layout (8 rows, 8 distinct bank groups). Each column
// factor pair is read from shared memory once for both row halves.
__device__ __forceinline__ void stage_16bit(uint8_t* stage, FloatType d, const float (&acc)[64],
                                            const float (&row_scale)[2], const float* col_s,
                                            const float* add_s, int warp, int lane) {
  const uint32_t base = smem_u32(stage);
  const int m = lane / 8;  // the matrix this lane addresses: row l % 8 of matrix l / 8
  const int st_row = warp * 16 + lane % 8 + 8 * (m & 1);
#pragma unroll
  for (int j = 0; j < 16; j += 2) {
    uint32_t q[4];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int jj = j + e, c = 8 * jj + 2 * (lane % 4);
      const float c0 = col_s[c], c1 = col_s[c + 1], a0 = add_s[c], a1 = add_s[c + 1];
#pragma unroll
      for (int h = 0; h < 2; ++h)
        q[2 * e + h] = pack2(d, acc[4 * jj + 2 * h] * row_scale[h] * c0 + a0,
                             acc[4 * jj + 2 * h + 1] * row_scale[h] * c1 + a1);
    }
    stmatrix_x4(base + staged_offset<2>(st_row, 8 * (j + (m >> 1))), q);
  }
}
#endif  // LOWBIT_SM90A

// Op: the operand type (E4M3 or S8); kPromote: fp32 promotion every 128 K (else fast_accum,
// and always for S8); kBlock: per-128-block scales applied per step; kOutBytes: output
// element size (2 or 4); kRaw: S8 only, the output is the int32 accumulator; kPing: the
// ping-pong schedule (above). map_out is used when tma_store is set; group: row tiles per
// raster group.
template <class Op, bool kPromote, bool kBlock, bool kScaleTma, int kOutBytes, bool kRaw,
          bool kPing>
__global__ void __launch_bounds__(kThreads, 1)
sm90_gemm_wgmma_kernel(const __grid_constant__ CUtensorMap map_a,
                           const __grid_constant__ CUtensorMap map_b,
                           const __grid_constant__ CUtensorMap map_out,
                           const __grid_constant__ CUtensorMap map_sa,
                           const __grid_constant__ CUtensorMap map_sb, const GemmArgs p,
                           const bool tma_store, const int group) {
  static_assert(!Op::kInt || !(kPromote || kBlock || kScaleTma),
                "int32 accumulation is exact: no promotion, no block scales");
  static_assert(!kRaw || (Op::kInt && kOutBytes == 4), "a raw output is S8's int32");
  static_assert(!kPing || (!kBlock && !kScaleTma), "ping-pong: no block scales");
#ifdef LOWBIT_SM90A
  using L = Smem<kOutBytes, kScaleTma, kPing>;
  constexpr int kStages = L::kStages;
  constexpr int kRows = kPing ? kPingRows : kBM;  // a tile's rows
  // Arrivals that free a stage: the warps of the warpgroups that read it.
  constexpr int kReaders = kPing ? kConsumerWarps / 2 : kConsumerWarps;
  extern __shared__ __align__(1024) uint8_t smem[];
  if (smem_u32(smem) & 1023) __trap();  // the swizzled tiles need it; never seen otherwise
  uint8_t* tiles_a = smem + L::kA;
  uint8_t* tiles_b = smem + L::kB;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + L::kBars);
  uint64_t* empty = full + kStages;
  [[maybe_unused]] uint64_t* turn = reinterpret_cast<uint64_t*>(smem + L::kTurn);  // kPing
  uint8_t* scales = smem + L::kScales;

  const int wg = threadIdx.x / 128;
  const int tiles_m = (p.M + kRows - 1) / kRows, tiles_n = (p.N + kBN - 1) / kBN;
  const int tiles = tiles_m * tiles_n;
  const int nk = (p.K + kBK - 1) / kBK;

  const bool sa = kScaleTma && p.a_mode == ScaleMode::kBlock;
  const bool sb = kScaleTma && p.b_mode == ScaleMode::kBlock;
  const int stage_bytes = L::kATile + kTileBytes + (sa ? kBM * 16 : 0) + (sb ? 16 : 0);
  int early = 0;  // steps whose b tile is already on its way (issuing thread only)
  if (threadIdx.x == 0) {
    if constexpr (kPing) mbar_init(turn, kConsumerWarps / 2);  // published by init_ring's fence
    init_ring(full, empty, kStages, kReaders);
    tma_prefetch_desc(&map_a);
    tma_prefetch_desc(&map_b);
    // Early weight loads (GemmArgs::b_static, a linear layer's GEMM after its own activation
    // quantizer; the conditions that make them safe: sm90_gemm_swapab.cuh, "Early weight
    // loads"): the b tiles of the first ring go out before the wait below, so the weight
    // streams while the quantizer runs. Their stages are fresh (no empty wait); the producer
    // adds the rest of each stage's loads after the wait.
    if (p.b_static) {
      const int mine = static_cast<int>(blockIdx.x) < tiles
                           ? (tiles - 1 - static_cast<int>(blockIdx.x)) / gridDim.x + 1
                           : 0;
      early = nk * mine < kStages ? nk * mine : kStages;
      for (int i = 0; i < early; ++i) {
        const Tile tile =
            tile_at<kRows>(blockIdx.x + (i / nk) * gridDim.x, tiles_m, tiles_n, group);
        mbar_expect_tx(&full[i], stage_bytes);
        tma_load_2d(tiles_b + i * kTileBytes, &map_b, &full[i], (i % nk) * kBK, tile.n0);
      }
    }
  }
  __syncthreads();
  // Programmatic dependent launch: the setup above (global memory untouched but for the early
  // weight loads) overlaps the end of the kernel before, and each thread lets the next kernel
  // start its setup once it is past its last mainloop.
  grid_dependency_wait();

  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    if (threadIdx.x == 0) {
      int it = 0;  // steps issued by this CTA, across its tiles
      for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        const Tile tile = tile_at<kRows>(t, tiles_m, tiles_n, group);
        for (int i = 0; i < nk; ++i, ++it) {
          const int s = it % kStages;
#ifdef LOWBIT_WGMMA_A_FIRST
          // Experiment build (bench/next_run.sh order): a stage's a tile issued before its b
          // tile where nothing went early, the order of the kernel before its early loads.
          const bool b_now = it >= early;
          if (b_now) {
            mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);
            mbar_expect_tx(&full[s], stage_bytes);
          }
          tma_load_2d(tiles_a + s * L::kATile, &map_a, &full[s], i * kBK, tile.m0);
          if (b_now) tma_load_2d(tiles_b + s * kTileBytes, &map_b, &full[s], i * kBK, tile.n0);
#else
          if (it >= early) {
            // A fresh barrier completes phase "1" at once, so the first pass does not wait.
            mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);
            mbar_expect_tx(&full[s], stage_bytes);
            tma_load_2d(tiles_b + s * kTileBytes, &map_b, &full[s], i * kBK, tile.n0);
          }
          tma_load_2d(tiles_a + s * L::kATile, &map_a, &full[s], i * kBK, tile.m0);
#endif
          uint8_t* slot = scales + s * L::kScaleSlot;
          if (sa) tma_load_2d(slot, &map_sa, &full[s], i & ~3, tile.m0);
          if (sb) tma_load_2d(slot + kBM * 16, &map_sb, &full[s], i & ~3, tile.n0 / 128);
        }
      }
    }
    launch_dependents();
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
  // Consumer warpgroup: rows cw*64 .. cw*64+63 of the tile (ping-pong: the whole tile, of
  // every other of the CTA's tiles).
  const int cw = wg - 1;
  const int wg_row = kPing ? 0 : cw * 64;
  const int tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
  const bool pair_ok = pair_store_ok(p.out, p.out_dtype, p.ldo);
  const bool a_step = p.a_mode == ScaleMode::kBlock, b_step = p.b_mode == ScaleMode::kBlock;
  uint8_t* stage_out = smem + L::kOut + cw * L::kStageOut;
  float* col_s = reinterpret_cast<float*>(smem + L::kCol) + cw * kBN;
  float* add_s = reinterpret_cast<float*>(smem + L::kAdd) + cw * kBN;
  const uint8_t* a_rows = tiles_a + wg_row * kBK;
  const uint32_t a_lo = desc_lo(a_rows), b_lo = desc_lo(tiles_b);
  // One stage further on, in descriptor units.
  constexpr uint32_t kAUnits = L::kATile / 16, kBUnits = kTileBytes / 16;

  int it = 0;  // the tile's first step, in the producer's order
  auto wait_full = [&](int step) {
    const int s = step % kStages;
    mbar_wait(&full[s], (step / kStages) & 1);
    if constexpr (kPing)  // the tile's last stage has arrived: the other warpgroup may go on
      mbar_arrive_if(turn, step == it + nk - 1 && lane == 0);
    return s;
  };
  auto release = [&](int s) {
    if (lane == 0) mbar_arrive(&empty[s]);
  };

  // The CTA's j-th tile is blockIdx.x + j * gridDim.x; its steps are j * nk ... in the ring.
  constexpr int kTileStride = kPing ? 2 : 1;
  for (int j = kPing ? cw : 0;; j += kTileStride) {
    const int t = blockIdx.x + j * gridDim.x;
    if (t >= tiles) break;
    it = j * nk;
    if constexpr (kPing) {
      if (j > 0) {
        // Every warp of this warpgroup has arrived for its tile before (j - 2), so the phase
        // awaited is the turn barrier's current or last one: tile j - 1's stages have all
        // been waited for.
        named_sync(1 + cw, 128);
        mbar_wait(turn, (j - 1) & 1);
      }
    }
    const Tile tile = tile_at<kRows>(t, tiles_m, tiles_n, group);
    const int row0 = tile.m0 + wg_row + warp * 16 + lane / 4;  // and row0 + 8
    // This thread's share of the epilogue's factors, loaded once the tile's first wgmmas are
    // issued (wgmma.fence waits for every load in flight, so loads go after an issue, never
    // just before one), used after the mainloop.
    float my_col, my_add, row_scale[2];
    int32_t my_sum = 0;  // S8 with a_zero: b_sum of column tile.n0 + tid
    auto load_epilogue_factors = [&] {
      if constexpr (kRaw) return;  // int8_mm: no scales, no bias
      const int nc = min(tile.n0 + tid, p.N - 1);
      my_col = b_step ? 1.f : __ldg(&p.b_scale[p.b_mode == ScaleMode::kRow ? nc : 0]);
      if (Op::kInt && p.a_zero != nullptr) my_sum = __ldg(&p.b_sum[nc]);
      my_add = p.bias ? load_bias(p.bias, p.bias_dtype, nc) : 0.f;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int m = min(row0 + 8 * h, p.M - 1);
        row_scale[h] = a_step ? 1.f : __ldg(&p.a_scale[p.a_mode == ScaleMode::kRow ? m : 0]);
      }
    };
    if constexpr (kRaw) my_col = my_add = row_scale[0] = row_scale[1] = 0.f;  // unused
    typename Op::Acc acc[64];

    if constexpr (kPromote) {
#pragma unroll
      for (int r = 0; r < 64; ++r) acc[r] = 0.f;
      // Step i's partial sums and promotion factors live in slot i % 2 (part0 with f0a, f1a, or
      // part1 with f0b, f1b; double_buffered_steps runs the steps).
      float part0[64], part1[64];
      float f0a, f1a, f0b, f1b;
      auto issue_into = [&](float(&d)[64], int step, float& g0, float& g1) {
        const int s = wait_full(it + step);
        issue_step<Op, 0>(d, a_lo + s * kAUnits, b_lo + s * kBUnits);
        if constexpr (kScaleTma)  // read before the stage is released
          step_scales_smem(p, reinterpret_cast<const float*>(scales + s * L::kScaleSlot),
                           row0 - tile.m0, step, g0, g1);
        else
          step_scales<kBlock>(p, row0, tile.n0, step, g0, g1);  // used one step later
        return s;
      };
      auto finish_from = [&](float(&d)[64], int s, float g0, float g1) {
        fence_regs(d);
        release(s);
        promote(acc, d, g0, g1);
      };
      auto issue = [&](auto slot, int step) {
        if constexpr (decltype(slot)::value == 0)
          return issue_into(part0, step, f0a, f1a);
        else
          return issue_into(part1, step, f0b, f1b);
      };
      auto finish = [&](auto slot, int s) {
        if constexpr (decltype(slot)::value == 0)
          finish_from(part0, s, f0a, f1a);
        else
          finish_from(part1, s, f0b, f1b);
      };
      double_buffered_steps(nk, issue, finish, load_epilogue_factors);
    } else {
      int prev = 0;
      for (int i = 0; i < nk; ++i) {
        const int s = wait_full(it + i);
        const uint32_t ta = a_lo + s * kAUnits, tb = b_lo + s * kBUnits;
        if (i == 0) {
          issue_step<Op, 0>(acc, ta, tb);
          load_epilogue_factors();
        } else {
          issue_step<Op, 1>(acc, ta, tb);
          wgmma_wait<1>();  // step i - 1 is done: its stage can be refilled
          release(prev);
        }
        prev = s;
      }
      wgmma_wait<0>();
      fence_regs(acc);
      release(prev);
    }
    if (t + kTileStride * gridDim.x >= tiles) launch_dependents();

    if (!tma_store) {
      if constexpr (Op::kInt) {
        float v[64];
        int_values<kRaw>(p, acc, v, row0, lane,
                         [&](int c) { return __ldg(&p.b_sum[min(tile.n0 + c, p.N - 1)]); });
        epilogue_direct<kRaw>(p, v, row0, tile.n0, lane, pair_ok);
      } else {
        epilogue_direct<false>(p, acc, row0, tile.n0, lane, pair_ok);
      }
      continue;
    }
    // The previous tile's stores have read the staging tile and every thread is past its
    // reads of col_s / add_s: both may be overwritten.
    if (tid == 0) bulk_wait_read();
    named_sync(1 + cw, 128);
    col_s[tid] = my_col;
    add_s[tid] = my_add;
    // S8 with a_zero: the tile's b_sum wait in the (free) staging tile until converted.
    int32_t* sum_s = reinterpret_cast<int32_t*>(stage_out);
    const bool zero_fix = Op::kInt && !kRaw && p.a_zero != nullptr;
    if (zero_fix) sum_s[tid] = my_sum;
    named_sync(1 + cw, 128);
    // Scales, bias and the staging of the tile's fp32 values (S8: the accumulator converted,
    // or its int32 bits when kRaw), then the TMA stores.
    auto stage_and_store = [&](const float(&v)[64]) {
      if constexpr (kOutBytes == 2) {
        stage_16bit(stage_out, p.out_dtype, v, row_scale, col_s, add_s, warp, lane);
      } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = warp * 16 + lane / 4 + 8 * h;
#pragma unroll
          for (int j = 0; j < 16; ++j) {
            const int c = 8 * j + 2 * (lane % 4);
            const float v0 = v[4 * j + 2 * h], v1 = v[4 * j + 2 * h + 1];
            if constexpr (kRaw)
              put_f32x2(stage_out, r, c, v0, v1);  // a move: the int32 bits stay as they are
            else
              put_f32x2(stage_out, r, c, v0 * row_scale[h] * col_s[c] + add_s[c],
                        v1 * row_scale[h] * col_s[c + 1] + add_s[c + 1]);
          }
        }
      }
      fence_async_smem();
      named_sync(1 + cw, 128);
      if (tid == 0) {
        constexpr int kBoxCols = 128 / kOutBytes;
#pragma unroll
        for (int b = 0; b < kBN / kBoxCols; ++b)
          tma_store_2d(&map_out, stage_out + b * 64 * 128, tile.n0 + b * kBoxCols,
                       tile.m0 + wg_row);
        bulk_commit();
      }
    };
    if constexpr (Op::kInt) {
      float v[64];
      int_values<kRaw>(p, acc, v, row0, lane, [&](int c) { return sum_s[c]; });
      if (zero_fix) named_sync(1 + cw, 128);  // sum_s is read: the staging may begin
      stage_and_store(v);
    } else {
      stage_and_store(acc);
    }
  }
  // Ping-pong: a warpgroup with no tile of its own (a CTA of one tile) has not let the next
  // kernel start.
  if (kPing && static_cast<int>(blockIdx.x) + cw * static_cast<int>(gridDim.x) >= tiles)
    launch_dependents();
  if (tma_store && tid == 0) bulk_wait();  // the staging tile must outlive its stores
#else
  __trap();  // built without sm_90a: the host never launches this
#endif
}

struct Maps {
  CUtensorMap a, b, out, sa, sb;
};

template <class Op, bool kPromote, bool kBlock, bool kScaleTma, int kOutBytes, bool kRaw = false,
          bool kPing = false>
cudaError_t launch(const Maps& maps, bool tma_store, const GemmArgs& p, cudaStream_t stream) {
  auto kernel = sm90_gemm_wgmma_kernel<Op, kPromote, kBlock, kScaleTma, kOutBytes, kRaw, kPing>;
  constexpr int kSmemBytes = Smem<kOutBytes, kScaleTma, kPing>::kBytes;
  constexpr int kRows = kPing ? kPingRows : kBM;
  int device = 0;
  cudaError_t e = current_device(device);
  if (e != cudaSuccess) return e;
  static std::atomic<bool> smem_set[kMaxDevices];
  e = opt_in_smem(kernel, kSmemBytes, device, smem_set);
  if (e != cudaSuccess) return e;
  const int tiles = ((p.M + kRows - 1) / kRows) * ((p.N + kBN - 1) / kBN);
  const int sms = sm_count(device);
  // A raster group of row tiles spans the same rows whatever their height.
  const int group = raster_group(p.N, p.K);
  const int rows_group = group > 0 ? group * (kBM / kRows) : group;
  const int grid = sms > 0 && sms < tiles ? sms : tiles;
  const LaunchConfig cfg(dim3(grid, 1, 1), kThreads, kSmemBytes, stream, 1,
                         programmatic_launch());
  // The launch's own status: an error left by earlier, unrelated work is not reported here.
  return launch_status(cudaLaunchKernelEx(cfg.get(), kernel, maps.a, maps.b, maps.out, maps.sa,
                                          maps.sb, p, tma_store, rows_group));
}

// LOWBIT_WGMMA_SCHEDULE=pingpong: the ping-pong schedule for the kernels that have it (FP8,
// promoted, per-row or per-tensor scales, 16-bit output). Read once per process.
inline bool pingpong_forced() {
  static const bool on = [] {
    const char* v = std::getenv("LOWBIT_WGMMA_SCHEDULE");
    return v != nullptr && std::strcmp(v, "pingpong") == 0;
  }();
  return on;
}
template <class Op>
bool runs_pingpong(const GemmArgs& p) {
  return !Op::kInt && pingpong_forced() && !p.fast_accum && !p.out_int32 &&
         p.out_dtype != FloatType::kF32 && p.a_mode != ScaleMode::kBlock &&
         p.b_mode != ScaleMode::kBlock;
}

// The output map (when TMA can address the output) and the kernel for the output's type, the
// scales' modes and the schedule (ping: runs_pingpong, which a's map was made for).
template <class Op, int kOutBytes>
cudaError_t launch_for_out(Maps& maps, const GemmArgs& p, bool ping, cudaStream_t stream) {
  const CUtensorMapDataType type = p.out_int32                         ? CU_TENSOR_MAP_DATA_TYPE_INT32
                                   : p.out_dtype == FloatType::kF32    ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32
                                   : p.out_dtype == FloatType::kBF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                                    : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const bool tma_store = reinterpret_cast<uintptr_t>(p.out) % 16 == 0 &&
                         (p.ldo * kOutBytes) % 16 == 0 &&
                         make_map_out(&maps.out, p.out, type, kOutBytes, p.M, p.N, p.ldo, 64,
                                      map_slot(p, TensorMapCache::kOut));
  if constexpr (Op::kInt) {
    if (kOutBytes == 4 && p.out_int32)
      return launch<Op, false, false, false, 4, true>(maps, tma_store, p, stream);
    return launch<Op, false, false, false, kOutBytes>(maps, tma_store, p, stream);
  } else {
    const bool a_block = p.a_mode == ScaleMode::kBlock, b_block = p.b_mode == ScaleMode::kBlock;
    if (a_block || b_block) {
      if (make_block_scale_maps(&maps.sa, &maps.sb, p, kBM))
        return launch<Op, true, true, true, kOutBytes>(maps, tma_store, p, stream);
      return launch<Op, true, true, false, kOutBytes>(maps, tma_store, p, stream);
    }
    if (p.fast_accum) return launch<Op, false, false, false, kOutBytes>(maps, tma_store, p, stream);
    if constexpr (kOutBytes == 2) {
      if (ping) return launch<Op, true, false, false, 2, false, true>(maps, tma_store, p, stream);
    }
    return launch<Op, true, false, false, kOutBytes>(maps, tma_store, p, stream);
  }
}

// The launcher of operand type Op (the families' sm90_*_gemm_wgmma).
template <class Op>
cudaError_t gemm_wgmma(const GemmArgs& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  Maps maps{};
  const bool ping = runs_pingpong<Op>(p);
  const int a_rows = ping ? kPingRows : kBM;  // a's box: a tile's rows
  if (!make_map_k128(&maps.a, p.a, p.M, p.K, p.lda, a_rows, map_slot(p, TensorMapCache::kA)) ||
      !make_map_k128(&maps.b, p.b, p.N, p.K, p.ldb, kBN, map_slot(p, TensorMapCache::kB)))
    return cudaErrorInvalidValue;
  if (p.out_int32 || p.out_dtype == FloatType::kF32)
    return launch_for_out<Op, 4>(maps, p, ping, stream);
  return launch_for_out<Op, 2>(maps, p, ping, stream);
}

}  // namespace sm90
}  // namespace lowbit
