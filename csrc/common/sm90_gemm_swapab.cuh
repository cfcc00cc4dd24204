// sm_90a 8-bit GEMM for small M (decode, M <= 64), FP8 and INT8: wgmma with swapped operands
// ("swap-AB"). The operand type is a template parameter (sm90.cuh: E4M3, S8); the FP8 and INT8
// families instantiate it in their own translation units (fp8/sm90_fp8_gemm_swapab.cu,
// int8/sm90_int8_gemm_swapab.cu).
//
// Why swap. wgmma's A operand is always 64 rows tall, its B operand can be as narrow as 8. At
// M <= 64 the product is a stream of the weight, so the weight b [N, K] plays A (64 rows of N
// per consumer warpgroup) and the activations a [M, K] play B, with n = M rounded up to 8, 16,
// 32 or 64 (the template parameter kN): the tensor core computes out^T = b a^T, and no
// 64 (or 128) row tile of mostly-zero activations is ever multiplied. Both operands are
// K-major, as 8-bit wgmma requires, and both come from shared memory: TMA writes 128-byte rows
// with the 128-byte swizzle that the shared-memory descriptor describes (8-row atoms 1024
// bytes apart, for the 64-row weight tile and for the kN-row activation tile alike). Rows past
// M or N and K past its end read as zeros, so tails need no special mainloop; the epilogue
// masks what it stores.
//
// Roles. Warpgroup 0 is the producer: one thread waits for a free stage of an 8-stage ring and
// issues two TMA loads (128 x 128 bytes of weight, kN x 128 bytes of activations) that
// complete on the stage's "full" mbarrier; setmaxnreg hands its registers to the consumers.
// Warpgroups 1 and 2 each own 64 of the CTA's 128 weight rows: per 128-K step they run four
// m64nNk32 wgmmas, release the stage (one "empty" arrival per consumer warp) and promote;
// step i is promoted while step i + 1's wgmmas run (two partial-sum fragments, wait_group 1).
// The ring keeps 8 x 16 KB = 128 KB of weight in flight per SM (one CTA per SM), several
// times what one SM needs to cover the memory latency at its share of the bandwidth.
//
// Accuracy. Each 128-K step starts from a zero tensor-core accumulator and is added into fp32
// registers (times its block scales when scales are per 128-block): promotion every 128 K,
// as the SPEC asks. fast_accum without block scales accumulates inside the tensor core.
// Block scales travel with the stages when TMA can address their rows (16-byte multiples:
// K a multiple of 512 for dense scales): each stage then also holds a box of four steps of
// a's scales for the kN tokens and of the tile's b scale, and the ring is as deep as still
// fits (7 at kN = 64). Otherwise each thread loads its tokens' scales from global memory,
// issued before the step's wait and used at its promotion, a step later.
//
// INT8. s8 wgmma accumulates in int32, exactly: the mainloop is the fast_accum one (no
// promotion, no block scales), the partial tiles are int32 and the split-K reduction adds
// them as integers, and the epilogue converts each sum to fp32 once (after the zero-point
// correction of asymmetric activations, in 64-bit integers) before the scales and bias;
// int8_mm stores the int32 sums themselves.
//
// Split-K, inside a cluster. With N = 4096 there are only 32 tiles of 128 weight rows for 132
// SMs, so K is split over the CTAs of a thread-block cluster (S = 2 to 8 CTAs, all on one
// tile): CTA r of the cluster streams the r-th K range, writes its partial tile (fp32; int32
// for INT8) to its own shared memory, and after a cluster barrier reduces rows
// [r * 128 / S, (r + 1) * 128 / S) of the tile by reading the S partials through distributed
// shared memory in rank order 0, 1, ..., S-1, then applies scales and bias and stores. The
// summation order is fixed by the code, so results are bitwise reproducible (for a given
// device: its SM count and how many clusters it runs at once set S; INT8's integer sums do
// not depend on it). This was chosen over a global-memory workspace reduced by the
// last-arriving CTA because it needs no workspace and no counters: nothing to allocate, to
// keep zeroed, to size before a CUDA-graph capture, or to share between streams running
// concurrently.
// The cost: S is at most 8 (the portable cluster size), so a weight of one or two tiles
// (N <= 256) is streamed by at most 16 SMs; such GEMMs take a few microseconds anyway.
//
// Epilogue. The partial tile goes through shared memory (transposed, [token][weight row])
// even without a split: the store loop then gives consecutive threads consecutive output
// columns n, so the writes of out[m, n] are coalesced.
//
// Schedule. The host picks S (split_count: the largest S <= 8 with S * tiles <= SMs, >= 4
// steps of 128 K per CTA, and every cluster of S resident at once) and the grid (S, tiles)
// with cluster (S, 1, 1). S need not be a power of two: GPCs hold SM counts that clusters of
// 4 do not divide, so a 132-SM H100 runs 30 clusters of 4 at once but 39 of 3 (see
// bench/NOTES.md, "Small M as a decode step runs it, and swapab's split"), and N = 4096 (32
// tiles) streams its weight with 96 SMs at S = 3 rather than 64 at S = 2. Without a split
// (more than SMs / 2 tiles, i.e. N > 8448 on 132 SMs, or K <= 896) the grid is
// (1, min(tiles, SMs)) and each CTA walks tiles blockIdx.y, + gridDim.y, ...; the producer
// then runs ahead into the next tile while the consumers store the current one.
//
// Launch. The kernel goes out as a programmatic dependent launch (unless switched off,
// common/launch.h): its CTAs may be placed while the kernel before it in the stream finishes,
// set up their barriers and prefetch the tensor maps, and wait (griddepcontrol.wait) before
// any global read or write; once past its last mainloop each thread allows the next kernel
// to do the same (what it saves: see bench/NOTES.md, "Programmatic dependent launch").
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <type_traits>

#include "common/sm90_gemm.cuh"

namespace lowbit {
namespace sm90 {
namespace swapab {

constexpr int kTileN = 128;           // weight rows per CTA: two consumer warpgroups of m64
constexpr int kBK = 128;              // K per pipeline step: one 128-byte swizzle row
constexpr int kMaxStages = 8;         // pipeline depth: 8 x 16 KB of weight in flight
constexpr int kThreads = 384;         // producer warpgroup + 2 consumer warpgroups
[[maybe_unused]] constexpr int kConsumerThreads = 256;
[[maybe_unused]] constexpr int kConsumerWarps = 8;  // arrivals that free a stage
constexpr int kMaxSplits = 8;         // portable cluster size
constexpr int kMinStepsPerSplit = 4;  // >= 64 KB of weight per CTA, or do not split
// Row stride (4-byte elements) of the partial tile in shared memory, stored transposed
// ([token][weight row]) so that the epilogue reads consecutive weight rows; 132 = 4 (mod 16)
// makes the fragment writes conflict-free (lanes differ by 2 tokens -> 8 banks apart).
constexpr int kRedLd = kTileN + 4;
constexpr int kWeightTileBytes = kTileN * kBK;
constexpr int kSmemLimit = 227 * 1024;  // sm_90 opt-in maximum per block
static_assert(kBK == 128, "one 128-byte swizzle row per tile row");
static_assert(kTileN == 2 * 64, "two consumer warpgroups of m64 each");

// kScaleTma: block scales travel with the stages, by TMA: per stage a [kN tokens][4 steps]
// box of a's scales, then 4 steps of the tile's b scale (each part a multiple of 128 bytes,
// as TMA destinations need). The ring is as deep as fits, up to kMaxStages (7 for kN = 64
// with scales, else 8).
template <int kN, bool kScaleTma = false>
struct Config {
  static_assert(kN == 8 || kN == 16 || kN == 32 || kN == 64, "wgmma n: 8, 16, 32 or 64");
  static constexpr int kRegs = kN / 2;           // accumulator registers per thread
  static constexpr int kActTileBytes = kN * kBK;  // a multiple of the 1024-byte swizzle atom
  static constexpr int kScaleBytes = kScaleTma ? kN * 16 + 128 : 0;
  static constexpr int kStageBytes = kWeightTileBytes + kActTileBytes + kScaleBytes;
  static constexpr int kRedBytes = kN * kRedLd * 4;
  static constexpr int kFixedBytes = kRedBytes + 2 * kMaxStages * 8 + 1024 /*alignment*/;
  static constexpr int kStages = (kSmemLimit - kFixedBytes) / kStageBytes < kMaxStages
                                     ? (kSmemLimit - kFixedBytes) / kStageBytes
                                     : kMaxStages;
  static constexpr int kBarrierBytes = 2 * kStages * 8;
  static constexpr int kSmemBytes =
      kStages * kStageBytes + kRedBytes + kBarrierBytes + 1024 /*alignment*/;
  static_assert(kStages >= 4, "too shallow a ring");
  static_assert(kSmemBytes <= kSmemLimit, "shared memory over the sm_90 limit");
};

// Splits of K (cluster size): the largest S <= kMaxSplits that keeps the CTAs within one
// wave, gives each at least kMinStepsPerSplit 128-K steps, and whose clusters all fit at
// once (clusters_fit(S) >= tiles); 1 when none does.
template <class ClustersFit>
inline int split_count(int tiles, int steps, int sms, ClustersFit&& clusters_fit) {
  int s = tiles > 0 && sms / tiles < kMaxSplits ? sms / tiles : kMaxSplits;
  if (steps / kMinStepsPerSplit < s) s = steps / kMinStepsPerSplit;
  for (; s > 1; --s)
    if (clusters_fit(s) >= tiles) return s;
  return 1;
}

#ifdef LOWBIT_SM90A
// One 128-K step of a consumer warpgroup: four m64nNk32 wgmmas of operand type Op into d,
// one commit group. w_lo, x_lo: low descriptor words (desc_lo) of the stage's weight rows and
// activation tile; the k-th 32-byte column block starts 2 units further on.
template <class Op, int kN, int kScaleD>
__device__ __forceinline__ void issue_step(typename Op::Acc (&d)[kN / 2], uint32_t w_lo,
                                           uint32_t x_lo) {
  fence_regs(d);
  wgmma_fence();
  wgmma_m64nNk32<Op, kN, kScaleD>(d, desc_of(w_lo), desc_of(x_lo));
#pragma unroll
  for (int kk = 1; kk < kBK / 32; ++kk)
    wgmma_m64nNk32<Op, kN, 1>(d, desc_of(w_lo + kk * 2), desc_of(x_lo + kk * 2));
  wgmma_commit();
  fence_regs(d);
}

// Per-step promotion factors of this thread's tokens m = 8j + 2(lane % 4) + e, stored at
// f[2j + e]: the block scales of step kt (tokens past M get 0: their rows of the activation
// tile are TMA zero-fill, and a_scale has no row for them).
template <int kN>
__device__ __forceinline__ void step_scales(const GemmArgs& p, int tile, int kt, int lane,
                                            float (&f)[kN / 4]) {
  const float sb =
      p.b_mode == ScaleMode::kBlock ? __ldg(&p.b_scale[int64_t(tile) * p.b_scale_ld + kt]) : 1.f;
#pragma unroll
  for (int j = 0; j < kN / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int m = 8 * j + 2 * (lane % 4) + e;
      float sa = 1.f;
      if (p.a_mode == ScaleMode::kBlock)
        sa = m < p.M ? __ldg(&p.a_scale[int64_t(m) * p.a_scale_ld + kt]) : 0.f;
      f[2 * j + e] = sa * sb;
    }
  }
}

// The same factors read from stage's scale slot, where the producer's TMA put them: a's
// [kN tokens][4 steps] (tokens past M are TMA's zero fill), then b's 4 steps.
template <int kN>
__device__ __forceinline__ void step_scales_smem(const GemmArgs& p, const float* slot,
                                                 int kt, int lane, float (&f)[kN / 4]) {
  const float sb = p.b_mode == ScaleMode::kBlock ? slot[kN * 4 + (kt & 3)] : 1.f;
#pragma unroll
  for (int j = 0; j < kN / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int m = 8 * j + 2 * (lane % 4) + e;
      f[2 * j + e] = p.a_mode == ScaleMode::kBlock ? sb * slot[m * 4 + (kt & 3)] : sb;
    }
  }
}

// acc += part * f: the factor goes with the column (token), shared by rows r and r + 8.
template <int kN, bool kBlock>
__device__ __forceinline__ void promote(float (&acc)[kN / 2], const float (&part)[kN / 2],
                                        const float (&f)[kN / 4]) {
#pragma unroll
  for (int j = 0; j < kN / 8; ++j) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = 4 * j + r;
      acc[i] = kBlock ? fmaf(part[i], f[2 * j + r % 2], acc[i]) : acc[i] + part[i];
    }
  }
}

// The consumer warpgroup's mainloop over steps [k_begin, k_end) of one tile; `it` counts the
// steps consumed by this CTA so far (ring position and phase), in the producer's order.
template <class Op, int kN, bool kPromote, bool kBlock, bool kScaleTma>
__device__ __forceinline__ int consume_tile(typename Op::Acc (&acc)[kN / 2], const GemmArgs& p,
                                            const uint8_t* w_tiles, const uint8_t* x_tiles,
                                            const uint8_t* scales, uint64_t* full,
                                            uint64_t* empty, int tile, int k_begin, int k_end,
                                            int it, int cw, int lane) {
  using C = Config<kN, kScaleTma>;
  constexpr int kStages = C::kStages;
  // Low descriptor words of this warpgroup's 64 weight rows and of the activation tile, in
  // stage 0, and the distance of one stage in descriptor units.
  const uint32_t w_lo = desc_lo(w_tiles + cw * 64 * kBK), x_lo = desc_lo(x_tiles);
  constexpr uint32_t kWUnits = kWeightTileBytes / 16, kXUnits = C::kActTileBytes / 16;
#pragma unroll
  for (int i = 0; i < C::kRegs; ++i) acc[i] = typename Op::Acc(0);

  if constexpr (kPromote) {
    // Step i's partial sums and promotion factors live in slot i % 2 (part0 with f0, or part1
    // with f1; double_buffered_steps runs the steps): step i + 1's wgmmas run while step i is
    // promoted.
    float part0[C::kRegs], part1[C::kRegs];
    float f0[kN / 4], f1[kN / 4];
    const int nk = k_end - k_begin;
    auto issue_into = [&](float(&d)[kN / 2], int i, float(&f)[kN / 4]) {
      const int s = (it + i) % kStages;
      if constexpr (kBlock && !kScaleTma)  // loads: overlap the wait
        step_scales<kN>(p, tile, k_begin + i, lane, f);
      mbar_wait(&full[s], ((it + i) / kStages) & 1);
      issue_step<Op, kN, 0>(d, w_lo + s * kWUnits, x_lo + s * kXUnits);
      if constexpr (kScaleTma)  // read before the stage is released
        step_scales_smem<kN>(p, reinterpret_cast<const float*>(scales + s * C::kScaleBytes),
                             k_begin + i, lane, f);
      return s;
    };
    auto finish_from = [&](float(&d)[kN / 2], int s, const float(&f)[kN / 4]) {
      fence_regs(d);
      if (lane == 0) mbar_arrive(&empty[s]);
      promote<kN, kBlock>(acc, d, f);
    };
    auto issue = [&](auto slot, int i) {
      if constexpr (decltype(slot)::value == 0)
        return issue_into(part0, i, f0);
      else
        return issue_into(part1, i, f1);
    };
    auto finish = [&](auto slot, int s) {
      if constexpr (decltype(slot)::value == 0)
        finish_from(part0, s, f0);
      else
        finish_from(part1, s, f1);
    };
    if (nk > 0) {
      double_buffered_steps(nk, issue, finish, [] {});
      it += nk;
    }
  } else {
    // fast_accum, and INT8 (exact): the steps chain in the tensor core; waiting with one group
    // in flight lets step i + 1 issue before step i's stage is released.
    int prev = -1;
    for (int kt = k_begin; kt < k_end; ++kt, ++it) {
      const int s = it % kStages;
      mbar_wait(&full[s], (it / kStages) & 1);
      issue_step<Op, kN, 1>(acc, w_lo + s * kWUnits, x_lo + s * kXUnits);
      if (prev >= 0) {
        wgmma_wait<1>();
        if (lane == 0) mbar_arrive(&empty[prev]);
      }
      prev = s;
    }
    wgmma_wait<0>();
    fence_regs(acc);
    if (prev >= 0 && lane == 0) mbar_arrive(&empty[prev]);
  }
  return it;
}

// The warpgroup's fragment into the CTA's partial tile red[token][weight row] (fp32, or
// int32 for INT8).
template <int kN, class Acc>
__device__ __forceinline__ void write_partial(Acc* red, const Acc (&acc)[kN / 2], int cw,
                                              int warp, int lane) {
  const int row = cw * 64 + warp * 16 + lane / 4;
#pragma unroll
  for (int j = 0; j < kN / 8; ++j) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int m = 8 * j + 2 * (lane % 4) + r % 2;
      red[m * kRedLd + row + 8 * (r / 2)] = acc[4 * j + r];
    }
  }
}

// A peer CTA's partial (distributed shared memory), as the accumulator's type.
template <class Acc>
__device__ __forceinline__ Acc ld_cluster_acc(uint32_t cluster_addr) {
  if constexpr (std::is_same_v<Acc, float>)
    return ld_cluster_f32(cluster_addr);
  else
    return ld_cluster_s32(cluster_addr);
}

// This CTA's share of the tile's output: weight rows [rank * 128 / splits, (rank + 1) * 128 /
// splits) of the tile, summed over the cluster's partials in rank order (INT8: integer adds,
// exact), then for INT8 the conversion to fp32 with the zero-point correction (or, for
// int8_mm, the int32 sum stored as it is), scales (those not applied per step), bias, and
// the store. Consecutive threads take consecutive output columns n, so the stores are
// coalesced.
template <class Op, int kN, bool kBlock>
__device__ __forceinline__ void reduce_store(const GemmArgs& p, const typename Op::Acc* red,
                                             int tile, int rank, int splits, int ctid) {
  using Acc = typename Op::Acc;
  const int first = rank * kTileN / splits, rows = (rank + 1) * kTileN / splits - first;
  const int tokens = min(p.M, kN);
  const int n_first = tile * kTileN + first;
  const bool a_step = kBlock && p.a_mode == ScaleMode::kBlock;
  const bool b_step = kBlock && p.b_mode == ScaleMode::kBlock;
  for (int e = ctid; e < rows * tokens; e += kConsumerThreads) {
    const int m = e / rows, r = e % rows;
    const int n = n_first + r;
    if (n >= p.N) continue;
    const Acc* src = red + m * kRedLd + first + r;
    Acc sum;
    if (splits == 1) {
      sum = *src;
    } else {
      const uint32_t addr = smem_u32(src);
      sum = ld_cluster_acc<Acc>(cluster_map(addr, 0));
      for (int j = 1; j < splits; ++j) sum += ld_cluster_acc<Acc>(cluster_map(addr, j));
    }
    float v;
    if constexpr (Op::kInt) {
      if (p.out_int32) {
        static_cast<int32_t*>(p.out)[int64_t(m) * p.ldo + n] = sum;
        continue;
      }
      v = int_acc_value(p, sum, m, n);
    } else {
      v = sum;
    }
    if (!a_step) v *= __ldg(&p.a_scale[p.a_mode == ScaleMode::kRow ? m : 0]);
    if (!b_step) v *= __ldg(&p.b_scale[p.b_mode == ScaleMode::kRow ? n : 0]);
    if (p.bias) v += load_bias(p.bias, p.bias_dtype, n);
    store_out(p.out, p.out_dtype, int64_t(m) * p.ldo + n, v);
  }
}

// The consumers' barrier between writing the partial tile and reading it (and back): the
// whole cluster when K is split, else the two consumer warpgroups (named barrier 1; the
// producer warpgroup may have exited). Warps arrive converged.
__device__ __forceinline__ void tile_sync(int splits) {
  __syncwarp();
  if (splits > 1)
    cluster_sync();
  else
    asm volatile("bar.sync 1, %0;" ::"n"(kConsumerThreads) : "memory");
}
#endif  // LOWBIT_SM90A

// Op: the operand type (E4M3, S8); kN: the activation tile's rows (M rounded up); kPromote:
// fp32 promotion every 128 K (else fast_accum, which S8 always runs); kBlock: per-128-block scales
// applied per step. Grid (splits, tile stride), cluster (splits, 1, 1): blockIdx.x is the K
// range and the rank in the cluster.
template <class Op, int kN, bool kPromote, bool kBlock, bool kScaleTma>
__global__ void __launch_bounds__(kThreads, 1)
sm90_gemm_swapab_kernel(const __grid_constant__ CUtensorMap map_w,
                        const __grid_constant__ CUtensorMap map_x,
                        const __grid_constant__ CUtensorMap map_sa,
                        const __grid_constant__ CUtensorMap map_sb, const GemmArgs p) {
  static_assert(!Op::kInt || !(kPromote || kBlock || kScaleTma),
                "int32 accumulation is exact: no promotion, no block scales");
#ifdef LOWBIT_SM90A
  static_assert(kPromote || !kBlock, "block scales need promotion");
  static_assert(kBlock || !kScaleTma, "scales by TMA are block scales");
  using Acc = typename Op::Acc;
  using C = Config<kN, kScaleTma>;
  constexpr int kStages = C::kStages;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  // Swizzled tiles need 1024-byte alignment.
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* w_tiles = smem;
  uint8_t* x_tiles = w_tiles + kStages * kWeightTileBytes;
  uint8_t* scales = x_tiles + kStages * C::kActTileBytes;
  Acc* red = reinterpret_cast<Acc*>(scales + kStages * C::kScaleBytes);
  uint64_t* full = reinterpret_cast<uint64_t*>(red + kN * kRedLd);
  uint64_t* empty = full + kStages;

  const int wg = threadIdx.x / 128;
  const int splits = gridDim.x, rank = blockIdx.x;
  const int tiles = (p.N + kTileN - 1) / kTileN;
  const int steps = (p.K + kBK - 1) / kBK;
  const int k_begin = rank * steps / splits, k_end = (rank + 1) * steps / splits;

  if (threadIdx.x == 0) {
    init_ring(full, empty, kStages, kConsumerWarps);
    tma_prefetch_desc(&map_w);
    tma_prefetch_desc(&map_x);
  }
  __syncthreads();
  // The setup above touches no global memory, so under programmatic dependent launch it
  // overlaps the end of the kernel before; everything below comes after that kernel. Each
  // thread lets the next kernel start its setup once it is past its last mainloop.
  grid_dependency_wait();

  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    // Without a split only the issuing thread has work; with one, the whole warpgroup joins
    // the two cluster barriers of every tile (a cluster barrier counts every thread).
    if (splits == 1 && threadIdx.x != 0) return;
    const bool sa = kScaleTma && p.a_mode == ScaleMode::kBlock;
    const bool sb = kScaleTma && p.b_mode == ScaleMode::kBlock;
    int it = 0;  // steps issued by this CTA, across its tiles
    for (int tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
      if (threadIdx.x == 0) {
        for (int kt = k_begin; kt < k_end; ++kt, ++it) {
          const int s = it % kStages;
          // A fresh barrier completes phase "1" at once, so the first pass does not wait.
          mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);
          mbar_expect_tx(&full[s], kWeightTileBytes + C::kActTileBytes + (sa ? kN * 16 : 0) +
                                       (sb ? 16 : 0));
          tma_load_2d(w_tiles + s * kWeightTileBytes, &map_w, &full[s], kt * kBK, tile * kTileN);
          tma_load_2d(x_tiles + s * C::kActTileBytes, &map_x, &full[s], kt * kBK, 0);
          uint8_t* slot = scales + s * C::kScaleBytes;
          if (sa) tma_load_2d(slot, &map_sa, &full[s], kt & ~3, 0);
          if (sb) tma_load_2d(slot + kN * 16, &map_sb, &full[s], kt & ~3, tile);
        }
      }
      if (tile + gridDim.y >= tiles) launch_dependents();
      if (splits > 1) {
        __syncwarp();    // the issuing thread rejoins its warp
        cluster_sync();  // partials written
        cluster_sync();  // partials read
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
  const int cw = wg - 1;  // consumer warpgroup: weight rows cw*64 .. cw*64+63 of the tile
  const int ctid = threadIdx.x - 128;
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  int it = 0;  // steps consumed, in the producer's order
  for (int tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    Acc acc[C::kRegs];
    it = consume_tile<Op, kN, kPromote, kBlock, kScaleTma>(acc, p, w_tiles, x_tiles, scales, full,
                                                           empty, tile, k_begin, k_end, it, cw,
                                                           lane);
    if (tile + gridDim.y >= tiles) launch_dependents();
    write_partial<kN>(red, acc, cw, warp, lane);
    tile_sync(splits);
    reduce_store<Op, kN, kBlock>(p, red, tile, rank, splits, ctid);
    tile_sync(splits);  // peers are done reading red: it may be rewritten, or the CTA exit
  }
#else
  __trap();  // built without sm_90a: the host never launches this
#endif
}

// How many clusters of `splits` CTAs of `kernel` the device runs at once (0: none; e.g. a
// partitioned GPU whose GPCs hold fewer SMs). Asked once per device and cluster size.
inline int clusters_that_fit(const void* kernel, int smem_bytes, int splits,
                             std::atomic<int>& cache) {
  int known = cache.load(std::memory_order_relaxed);  // the count + 1; 0 = not asked yet
  if (known == 0) {
    const LaunchConfig cfg(dim3(splits, 1, 1), kThreads, smem_bytes, nullptr, splits, false);
    int n = 0;
    if (cudaOccupancyMaxActiveClusters(&n, kernel, cfg.get()) != cudaSuccess) {
      // Not sticky: clear it, and do not split. The failure is remembered like an answer: the
      // split sets the summation order, so it must not change between calls of a process.
      (void)cudaGetLastError();
      n = 0;
    }
    known = n + 1;
    cache.store(known, std::memory_order_relaxed);
  }
  return known - 1;
}

struct Maps {
  CUtensorMap w, x, sa, sb;
};

template <class Op, int kN, bool kPromote, bool kBlock, bool kScaleTma>
cudaError_t launch(const Maps& maps, const GemmArgs& p, cudaStream_t stream) {
  using C = Config<kN, kScaleTma>;
  auto kernel = sm90_gemm_swapab_kernel<Op, kN, kPromote, kBlock, kScaleTma>;
  int device = 0;
  cudaError_t e = current_device(device);
  if (e != cudaSuccess) return e;
  // Per-device facts of this kernel, looked up on first use. Two threads racing here both
  // do the lookup, which is harmless.
  static std::atomic<bool> smem_set[kMaxDevices];
  static std::atomic<int> fit[kMaxDevices][kMaxSplits + 1];  // by cluster size; see above
  e = opt_in_smem(kernel, C::kSmemBytes, device, smem_set);
  if (e != cudaSuccess) return e;
  const int tiles = (p.N + kTileN - 1) / kTileN;
  const int steps = (p.K + kBK - 1) / kBK;
  const int sms = sm_count(device);
  const int splits = split_count(tiles, steps, sms, [&](int s) {
    return clusters_that_fit(reinterpret_cast<const void*>(kernel), C::kSmemBytes, s,
                             fit[device][s]);
  });
  // With a split, tiles * splits <= SMs (one wave); without, the CTAs stride over the tiles.
  int stride = splits > 1 || sms <= 0 ? tiles : (tiles < sms ? tiles : sms);
  if (stride > 65535) stride = 65535;

  // Clusters of `splits` CTAs along x (none when 1).
  const LaunchConfig cfg(dim3(splits, stride, 1), kThreads, C::kSmemBytes, stream, splits,
                         programmatic_launch());
  // The launch's own status: an error left by earlier, unrelated work is not reported here.
  return launch_status(cudaLaunchKernelEx(cfg.get(), kernel, maps.w, maps.x, maps.sa, maps.sb, p));
}

// The operand maps and the kernel for the scales' modes (S8: exact int32 accumulation, one
// kernel per kN).
template <class Op, int kN>
cudaError_t dispatch(const GemmArgs& p, cudaStream_t stream) {
  Maps maps{};
  if (!make_map_k128(&maps.w, p.b, p.N, p.K, p.ldb, kTileN, map_slot(p, TensorMapCache::kB)) ||
      !make_map_k128(&maps.x, p.a, p.M, p.K, p.lda, kN, map_slot(p, TensorMapCache::kA)))
    return cudaErrorInvalidValue;
  if constexpr (Op::kInt) {
    return launch<Op, kN, false, false, false>(maps, p, stream);
  } else {
    const bool a_block = p.a_mode == ScaleMode::kBlock, b_block = p.b_mode == ScaleMode::kBlock;
    if (a_block || b_block) {
      // Scales by TMA when it can address them (16-byte rows: K a multiple of 512 for dense
      // scales), else by loads.
      if (make_block_scale_maps(&maps.sa, &maps.sb, p, kN))
        return launch<Op, kN, true, true, true>(maps, p, stream);
      return launch<Op, kN, true, true, false>(maps, p, stream);
    }
    if (p.fast_accum) return launch<Op, kN, false, false, false>(maps, p, stream);
    return launch<Op, kN, true, false, false>(maps, p, stream);
  }
}

// The launcher of operand type Op (the families' sm90_*_gemm_swapab): kN = M rounded up to
// 8, 16, 32 or 64.
template <class Op>
cudaError_t gemm_swapab(const GemmArgs& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (p.M < 0 || p.M > 64 || p.N < 0 || p.K <= 0) return cudaErrorInvalidValue;
  if (p.M <= 8) return dispatch<Op, 8>(p, stream);
  if (p.M <= 16) return dispatch<Op, 16>(p, stream);
  if (p.M <= 32) return dispatch<Op, 32>(p, stream);
  return dispatch<Op, 64>(p, stream);
}

}  // namespace swapab
}  // namespace sm90
}  // namespace lowbit
