// sm_90a 8-bit GEMM for small M (decode, M <= 64), FP8 and INT8: wgmma with swapped operands
// ("swap-AB"). The operand type is a template parameter (sm90.cuh: E4M3, S8); the FP8 and INT8
// families instantiate it in their own translation units (fp8/sm90_fp8_gemm_swapab.cu,
// int8/sm90_int8_gemm_swapab.cu).
//
// Why swap. wgmma's A operand is always 64 rows tall, its B operand can be as narrow as 8. At
// M <= 64 the product is a stream of the weight, so the weight b [N, K] plays A (64 rows of N
// per consumer warpgroup) and the activations a [M, K] play B, with n = M rounded up to 8, 16,
// 32 or 64 (the template parameter kN): the tensor core computes out^T = b a^T, and no
// 64 (or 128) row tile of mostly-zero activations is ever multiplied. At M = 33..64 the
// operands may also go the usual way round ("tokens as A", Form below), where a tile's
// height is free to fit the SM count. Both operands are K-major, as 8-bit wgmma requires,
// and both come from shared memory: TMA writes 128-byte rows with the 128-byte swizzle that
// the shared-memory descriptor describes (8-row atoms 1024 bytes apart, for the 64-row
// weight tile and for the kN-row activation tile alike). Rows past M or N and K past its end
// read as zeros, so tails need no special mainloop; the epilogue masks what it stores.
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
// INT8. s8 wgmma accumulates in int32, exactly: no promotion and no block scales; even and
// odd steps go to two accumulators added at the end (two independent wgmma chains, as the
// promoted FP8 loop has, where one chain would wait on each step). The partial tiles are
// int32 and the split-K reduction adds them as integers, and the epilogue converts each sum
// to fp32 once (after the zero-point correction of asymmetric activations, in 64-bit
// integers) before the scales and bias; int8_mm stores the int32 sums themselves.
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
// Epilogue. With a split, the partial tiles go through shared memory (transposed,
// [token][weight row]) and the store loop gives consecutive threads consecutive output
// columns n, so the writes of out[m, n] are coalesced. Without one, each thread scales and
// stores its own fragment (direct_store): less coalesced, but no round trip through shared
// memory and no barrier, which at M = 64 cost more than the scattered stores (int8_mm's
// int32 sums too, tokens-as-A column pairs as one 8-byte store).
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
// any other global read or write (but the early weight loads of GemmArgs::b_static, below);
// once past its last mainloop each thread allows the next kernel to do the same (what it
// saves: see bench/NOTES.md, "Programmatic dependent launch").
//
// Early weight loads (GemmArgs::b_static, a linear layer's GEMM after its own activation
// quantizer): the first ring's weight tiles are requested before the wait, so the weight
// streams while the quantizer runs. This rests on the kernel before: it must not write the
// weight, and it must trigger its dependents only after its own griddepcontrol.wait (the
// quantizers of common/quant_kernels.cuh do both), so that every kernel before it, an
// in-place weight update included, has completed when this one starts.
//
// Fused activation quantizer (ActCodec, the linear layers' forward at M <= 64). The GEMM is
// given the layer's bf16 / fp16 activations x instead of their codes and makes each stage's
// activation tile itself, with the family quantizer's own codec (common/quant_kernels.cuh),
// so the codes, the scales and so the output are those of quantize-then-GEMM, bit for bit:
// - scales first: every thread of the CTA reduces |x| over the CTA's K range of the M rows
//   (one shared atomicMax per warp and row part); a K split merges its CTAs' maxima through
//   distributed shared memory. The scales (or the static one) stay in shared memory, where
//   the epilogue reads them too. The weight and x loads of the first ring are issued before
//   the reduction, which they do not need, so it runs under the ring's fill;
// - per stage, the producer's issuing thread also TMA-loads the stage's [kN][128] box of x
//   (no swizzle) into a staging slot that completes on a barrier of its own; the producer's
//   other three warps encode it into the stage's activation tile, written in the 128-byte
//   swizzle TMA would have written (16-byte chunk c of row r at c ^ (r % 8)), fence it for
//   the async proxy and arrive on the stage's full barrier (1 + 3 arrivals and the weight's
//   bytes). Rows past M and K past its end are written as zero codes.
// The producer warpgroup then keeps 56 registers and the consumers 224.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <type_traits>

#include "common/quant_kernels.cuh"
#include "common/sm90_gemm.cuh"

namespace lowbit {
namespace sm90 {
namespace swapab {

constexpr int kTileN = 128;           // weight rows per CTA in the swapped form (Swapped)
constexpr int kBK = 128;              // K per pipeline step: one 128-byte swizzle row
// Pipeline depth: 8 x 16 KB of weight in flight. LOWBIT_SWAPAB_MAX_STAGES (a build flag,
// e.g. -C cmake.define.CMAKE_CUDA_FLAGS=-DLOWBIT_SWAPAB_MAX_STAGES=12) changes it for the
// ring-depth experiment of bench/next_run.sh stages: whether the bytes in flight set the
// weight stream's rate.
#ifndef LOWBIT_SWAPAB_MAX_STAGES
#define LOWBIT_SWAPAB_MAX_STAGES 8
#endif
constexpr int kMaxStages = LOWBIT_SWAPAB_MAX_STAGES;
constexpr int kThreads = 384;         // producer warpgroup + 2 consumer warpgroups
[[maybe_unused]] constexpr int kConsumerThreads = 256;
[[maybe_unused]] constexpr int kConsumerWarps = 8;  // arrivals that free a stage
constexpr int kMaxSplits = 8;         // portable cluster size
constexpr int kMinStepsPerSplit = 4;  // >= 64 KB of weight per CTA, or do not split
// The fused quantizer: the producer's warps that encode activation tiles (all but the
// issuing one), and the bytes a staged row of 128 16-bit elements takes.
constexpr int kEncodeWarps = 3;
constexpr int kEncodeThreads = 32 * kEncodeWarps;
constexpr int kStagedRowBytes = 128 * 2;
static_assert(kBK == 128, "one 128-byte swizzle row per tile row");
static_assert(kTileN == 2 * 64, "two consumer warpgroups of m64 each");

// Which operand the weight is, and the tile's height. Swapped (kTokensA false): the weight
// is wgmma's A, 64 rows per consumer warpgroup, so a tile is 128 rows, and the activations
// are B with n = kN. Tokens as A (kTokensA): 64 activation rows are A (TMA zero-fills rows
// past M) and the weight is B, n = kRows / 2 rows per consumer warpgroup, so a tile may be
// any height wgmma's n allows. At M = 33..64 (kN = 64) the tensor work per weight byte is
// the same in both forms and only the tile count differs, so the host takes the form whose
// busiest CTA streams the least weight (pick_rows): e.g. N = 14336 is 112 tiles of 128 rows
// for 132 SMs (20 idle, no K split), or 128 tiles of 112.
template <int kRowsT, bool kTokensAT>
struct Form {
  static constexpr int kRows = kRowsT;  // weight rows per CTA tile
  static constexpr bool kTokensA = kTokensAT;
  static constexpr int kWgRows = kRows / 2;  // per consumer warpgroup
  static_assert(kTokensA ? kWgRows % 8 == 0 && kWgRows <= 64 : kRows == kTileN,
                "tokens as A: n = kRows / 2, a multiple of 8 up to 64; swapped: 128 rows");
};
using Swapped = Form<kTileN, false>;

// kScaleTma: block scales travel with the stages, by TMA: per stage a [kN tokens][4 steps]
// box of a's scales, then 4 steps of the tile's b scale (each part a multiple of 128 bytes,
// as TMA destinations need). kQuant: the fused quantizer's staging slot per stage, its
// barriers, and per token its scale, |x| max and codec scale (kQuantSlotBytes). The ring is
// as deep as fits, up to kMaxStages (7 for kN = 64 with scales; with the quantizer 7 at
// kN = 32 and 4 at kN = 64; else 8).
constexpr int kQuantSlotBytes = 4 /*scale*/ + 4 /*|x| max*/ + 16 /*codec scale*/;
template <int kN, bool kScaleTma = false, bool kQuant = false, class F = Swapped>
struct Config {
  static_assert(kN == 8 || kN == 16 || kN == 32 || kN == 64, "wgmma n: 8, 16, 32 or 64");
  static_assert(!(kScaleTma && kQuant), "the fused quantizer has no block scales");
  static_assert(!F::kTokensA || (kN == 64 && !kScaleTma), "tokens as A: 64 rows, no block scales");
  // Accumulator registers per thread: a 64 x n fragment over 128 threads.
  static constexpr int kRegs = F::kTokensA ? F::kWgRows / 2 : kN / 2;
  static constexpr int kWeightBytes = F::kRows * kBK;  // 1024-multiples: swizzle atoms
  static constexpr int kActTileBytes = kN * kBK;  // a multiple of the 1024-byte swizzle atom
  static constexpr int kScaleBytes = kScaleTma ? kN * 16 + 128 : 0;
  static constexpr int kStagingBytes = kQuant ? kN * kStagedRowBytes : 0;  // 1024-multiples
  static constexpr int kStageBytes = kWeightBytes + kActTileBytes + kScaleBytes + kStagingBytes;
  // Row stride (4-byte elements) of the partial tile in shared memory, stored transposed
  // ([token][weight row]) so that the epilogue reads consecutive weight rows. Swapped, a
  // thread writes single elements of tokens 2 apart: 132 = 4 (mod 16) puts lanes 8 banks
  // apart. Tokens as A, a thread writes pairs of weight rows and a half-warp covers 4
  // tokens: a stride of 8 or 24 (mod 32) puts them in distinct banks.
  static constexpr int kRedLd = F::kRows + (F::kTokensA ? 8 : 4);
  static_assert(F::kTokensA ? kRedLd % 32 == 8 || kRedLd % 32 == 24 : kRedLd % 16 == 4,
                "bank-conflict-free partial tile");
  static constexpr int kRedBytes = kN * kRedLd * 4;
  static constexpr int kQuantBytes = kQuant ? kN * kQuantSlotBytes : 0;
  static constexpr int kRingBarriers = kQuant ? 3 : 2;  // full, empty (, staged)
  static constexpr int kFixedBytes =
      kRedBytes + kQuantBytes + kRingBarriers * kMaxStages * 8 + 1024 /*alignment*/;
  static constexpr int kStages = (kSmemLimit - kFixedBytes) / kStageBytes < kMaxStages
                                     ? (kSmemLimit - kFixedBytes) / kStageBytes
                                     : kMaxStages;
  static constexpr int kBarrierBytes = kRingBarriers * kStages * 8;
  static constexpr int kSmemBytes = kStages * kStageBytes + kRedBytes + kQuantBytes +
                                    kBarrierBytes + 1024 /*alignment*/;
  static_assert(kStages >= 4, "too shallow a ring");
  static_assert(kSmemBytes <= kSmemLimit, "shared memory over the sm_90 limit");
};

// Splits of K (cluster size): the largest S <= kMaxSplits that keeps the CTAs within one
// wave, gives each at least kMinStepsPerSplit 128-K steps, and whose clusters all fit at
// once (clusters_fit(S) >= tiles); 1 when none does.
// LOWBIT_SWAPAB_SPLIT=S forces S (for the split sweep of bench/m64_probe.sh), where all of its
// clusters fit at once; otherwise the rule above. Read once per process.
inline int forced_split() {
  static const int forced = [] {
    const int s = env_int("LOWBIT_SWAPAB_SPLIT");
    return s > 0 && s <= kMaxSplits ? s : 0;
  }();
  return forced;
}

template <class ClustersFit>
inline int split_count(int tiles, int steps, int sms, ClustersFit&& clusters_fit) {
  if (const int f = forced_split(); f == 1 || (f > 1 && clusters_fit(f) >= tiles)) return f;
  int s = tiles > 0 && sms / tiles < kMaxSplits ? sms / tiles : kMaxSplits;
  if (steps / kMinStepsPerSplit < s) s = steps / kMinStepsPerSplit;
  for (; s > 1; --s)
    if (clusters_fit(s) >= tiles) return s;
  return 1;
}

// Phase trace, built only with -DLOWBIT_SWAPAB_TRACE (a build flag, as for
// LOWBIT_SWAPAB_MAX_STAGES; bench/swapab_trace.py reads it): the first consumer thread of
// each CTA stamps (%globaltimer, ns) its start, the end of the wait for the kernel before
// (PDL), the first stage's arrival, the mainloop's end, the partial tile's barrier, the end
// of its stores and its exit (for a CTA of several tiles, the last tile's). It says where a
// launch's microseconds go, which ncu's counters do not. Kept in device memory (a printf
// would make ptxas serialize the wgmmas); each translation unit has its own copy and exports
// a reader of it (LOWBIT_SWAPAB_TRACE_READER: the FP8 GEMM's unit and the INT8 GEMM's).
#ifdef LOWBIT_SWAPAB_TRACE
namespace trace {
enum Stamp { kStart, kDep, kFirst, kMain, kSync, kStore, kEnd, kStamps };
constexpr int kCtas = 4096;
static __device__ unsigned long long stamps[kCtas][kStamps];
// This CTA's row of stamps, for the first consumer thread; null otherwise.
__device__ __forceinline__ unsigned long long* mine() {
  const unsigned cta = blockIdx.y * gridDim.x + blockIdx.x;
  return threadIdx.x == 128 && cta < kCtas ? stamps[cta] : nullptr;
}
// This unit's stamps: `ctas` rows of `stamps` 64-bit values into `dst`, or zeroed where `dst`
// is null. 0 on success; -2 where the caller's sizes are not the build's; -1 on a CUDA
// error. Static, as `stamps` is: each unit reads its own copy.
[[maybe_unused]] static int read(void* dst, int ctas, int n_stamps) {
  if (ctas != kCtas || n_stamps != kStamps) return -2;
  const size_t bytes = sizeof(unsigned long long) * kCtas * kStamps;
  cudaError_t e;
  if (dst == nullptr) {
    static unsigned long long zeros[kCtas][kStamps];
    e = cudaMemcpyToSymbol(stamps, zeros, bytes);
  } else {
    e = cudaDeviceSynchronize();
    if (e == cudaSuccess) e = cudaMemcpyFromSymbol(dst, stamps, bytes);
  }
  return e == cudaSuccess ? 0 : -1;
}
}  // namespace trace
// The C entry of a unit's reader, for bench/swapab_trace.py through ctypes.
#define LOWBIT_SWAPAB_TRACE_READER(name)                                                   \
  extern "C" __attribute__((visibility("default"))) int name(void* dst, int ctas, int n) { \
    return ::lowbit::sm90::swapab::trace::read(dst, ctas, n);                              \
  }
#define SWAPAB_TRACE_STAMP(slot)                  \
  do {                                            \
    if (unsigned long long* row_ = trace::mine()) \
      row_[trace::slot] = globaltimer_ns();       \
  } while (0)
#else
#define SWAPAB_TRACE_STAMP(slot) (void)0
#endif

#ifdef LOWBIT_SM90A
// d (64 x n) (+)= A[64 x 32] * B[n x 32]^T from the descriptors' low words: one wgmma, or for
// s8 at n = 56 (which s8 wgmma lacks) two, n = 32 then n = 24 on B's rows 32..55 (4 KB, four
// swizzle atoms, further on). Their fragments side by side are the n = 56 fragment: register
// group j holds columns 8j .. 8j + 7 in both.
template <class Op, int n, int kScaleD>
__device__ __forceinline__ void wgmma_rows(typename Op::Acc (&d)[n / 2], uint32_t a_lo,
                                           uint32_t b_lo) {
  if constexpr (Op::kInt && n == 56) {
    using Acc = typename Op::Acc;
    wgmma_m64nNk32<Op, 32, kScaleD>(reinterpret_cast<Acc(&)[16]>(d[0]), desc_of(a_lo),
                                    desc_of(b_lo));
    wgmma_m64nNk32<Op, 24, kScaleD>(reinterpret_cast<Acc(&)[12]>(d[16]), desc_of(a_lo),
                                    desc_of(b_lo + 32 * kBK / 16));
  } else {
    wgmma_m64nNk32<Op, n, kScaleD>(d, desc_of(a_lo), desc_of(b_lo));
  }
}

// One 128-K step of a consumer warpgroup: four m64nNk32 wgmmas of operand type Op into d,
// one commit group. w_lo, x_lo: low descriptor words (desc_lo) of the stage's weight rows and
// activation tile; the k-th 32-byte column block starts 2 units further on. Swapped: the
// weight rows are A and the kN tokens B; tokens as A: the 64 tokens are A and the
// warpgroup's kWgRows weight rows B.
template <class Op, int kN, int kScaleD, class F = Swapped>
__device__ __forceinline__ void issue_step(
    typename Op::Acc (&d)[Config<kN, false, false, F>::kRegs], uint32_t w_lo, uint32_t x_lo) {
  constexpr int n = F::kTokensA ? F::kWgRows : kN;
  const uint32_t a_lo = F::kTokensA ? x_lo : w_lo, b_lo = F::kTokensA ? w_lo : x_lo;
  fence_regs(d);
  wgmma_fence();
  wgmma_rows<Op, n, kScaleD>(d, a_lo, b_lo);
#pragma unroll
  for (int kk = 1; kk < kBK / 32; ++kk) wgmma_rows<Op, n, 1>(d, a_lo + kk * 2, b_lo + kk * 2);
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

// acc += part (* f with block scales, swapped form only: the factor goes with the column,
// i.e. the token, shared by rows r and r + 8). R: registers of the fragment.
template <int kN, bool kBlock, int R>
__device__ __forceinline__ void promote(float (&acc)[R], const float (&part)[R],
                                        const float (&f)[kN / 4]) {
  if constexpr (!kBlock) {
#pragma unroll
    for (int i = 0; i < R; ++i) acc[i] += part[i];
  } else {
    static_assert(R == kN / 2, "block scales: the swapped form's fragment");
#pragma unroll
    for (int j = 0; j < kN / 8; ++j) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = 4 * j + r;
        acc[i] = fmaf(part[i], f[2 * j + r % 2], acc[i]);
      }
    }
  }
}

// The consumer warpgroup's mainloop over steps [k_begin, k_end) of one tile; `it` counts the
// steps consumed by this CTA so far (ring position and phase), in the producer's order.
template <class Op, int kN, bool kPromote, bool kBlock, bool kScaleTma, bool kQuant, class F>
__device__ __forceinline__ int consume_tile(
    typename Op::Acc (&acc)[Config<kN, kScaleTma, kQuant, F>::kRegs], const GemmArgs& p,
    const uint8_t* w_tiles, const uint8_t* x_tiles, const uint8_t* scales, uint64_t* full,
    uint64_t* empty, int tile, int k_begin, int k_end, int it, int cw, int lane) {
  using C = Config<kN, kScaleTma, kQuant, F>;
  constexpr int kStages = C::kStages;
  // Low descriptor words of this warpgroup's weight rows (kWgRows from row cw * kWgRows, a
  // whole number of 1024-byte swizzle atoms) and of the activation tile, in stage 0, and the
  // distance of one stage in descriptor units.
  const uint32_t w_lo = desc_lo(w_tiles + cw * F::kWgRows * kBK), x_lo = desc_lo(x_tiles);
  constexpr uint32_t kWUnits = C::kWeightBytes / 16, kXUnits = C::kActTileBytes / 16;
#pragma unroll
  for (int i = 0; i < C::kRegs; ++i) acc[i] = typename Op::Acc(0);

  if constexpr (kPromote) {
    // Step i's partial sums and promotion factors live in slot i % 2 (part0 with f0, or part1
    // with f1; double_buffered_steps runs the steps): step i + 1's wgmmas run while step i is
    // promoted.
    float part0[C::kRegs], part1[C::kRegs];
    float f0[kN / 4], f1[kN / 4];
    const int nk = k_end - k_begin;
    auto issue_into = [&](float(&d)[C::kRegs], int i, float(&f)[kN / 4]) {
      const int s = (it + i) % kStages;
      if constexpr (kBlock && !kScaleTma)  // loads: overlap the wait
        step_scales<kN>(p, tile, k_begin + i, lane, f);
      mbar_wait(&full[s], ((it + i) / kStages) & 1);
      issue_step<Op, kN, 0, F>(d, w_lo + s * kWUnits, x_lo + s * kXUnits);
      if constexpr (kScaleTma)  // read before the stage is released
        step_scales_smem<kN>(p, reinterpret_cast<const float*>(scales + s * C::kScaleBytes),
                             k_begin + i, lane, f);
      return s;
    };
    auto finish_from = [&](float(&d)[C::kRegs], int s, const float(&f)[kN / 4]) {
      fence_regs(d);
      if (lane == 0) mbar_arrive(&empty[s]);
      promote<kN, kBlock, C::kRegs>(acc, d, f);
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
  } else if constexpr (Op::kInt) {
    // INT8 (exact): even steps into acc, odd ones into acc1, added at the end. Chained into
    // one accumulator, each step's wgmmas would wait for the previous step's (the same
    // registers), and at n = 8..64 a wgmma's latency, not its math, sets the pace; two
    // independent chains keep two steps in the tensor pipe, as the promoted FP8 loop does.
    // Integer sums: the same int32 result in any order.
    typename Op::Acc acc1[C::kRegs];
#pragma unroll
    for (int i = 0; i < C::kRegs; ++i) acc1[i] = typename Op::Acc(0);
    const int nk = k_end - k_begin;
    auto issue = [&](auto slot, int i) {
      const int s = (it + i) % kStages;
      mbar_wait(&full[s], ((it + i) / kStages) & 1);
      if constexpr (decltype(slot)::value == 0)
        issue_step<Op, kN, 1, F>(acc, w_lo + s * kWUnits, x_lo + s * kXUnits);
      else
        issue_step<Op, kN, 1, F>(acc1, w_lo + s * kWUnits, x_lo + s * kXUnits);
      return s;
    };
    auto finish = [&](auto slot, int s) {
      if constexpr (decltype(slot)::value == 0)
        fence_regs(acc);
      else
        fence_regs(acc1);
      if (lane == 0) mbar_arrive(&empty[s]);
    };
    if (nk > 0) {
      double_buffered_steps(nk, issue, finish, [] {});
      it += nk;
    }
#pragma unroll
    for (int i = 0; i < C::kRegs; ++i) acc[i] += acc1[i];
  } else {
    // fast_accum: the steps chain in the tensor core; waiting with one group in flight lets
    // step i + 1 issue before step i's stage is released.
    int prev = -1;
    for (int kt = k_begin; kt < k_end; ++kt, ++it) {
      const int s = it % kStages;
      mbar_wait(&full[s], (it / kStages) & 1);
      issue_step<Op, kN, 1, F>(acc, w_lo + s * kWUnits, x_lo + s * kXUnits);
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
// int32 for INT8). Swapped, the fragment's rows are weight rows and its columns tokens;
// tokens as A, the other way round, and a register pair (two weight rows of one token)
// goes out as one 8-byte store.
template <int kN, class F, class Acc, int R>
__device__ __forceinline__ void write_partial(Acc* red, const Acc (&acc)[R], int cw, int warp,
                                              int lane) {
  constexpr int ld = Config<kN, false, false, F>::kRedLd;
  if constexpr (F::kTokensA) {
    using Pair = std::conditional_t<std::is_same_v<Acc, float>, float2, int2>;
    const int m = warp * 16 + lane / 4;
#pragma unroll
    for (int j = 0; j < R / 4; ++j) {
      const int row = cw * F::kWgRows + 8 * j + 2 * (lane % 4);
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<Pair*>(&red[(m + 8 * h) * ld + row]) =
            Pair{acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]};
    }
  } else {
    const int row = cw * 64 + warp * 16 + lane / 4;
#pragma unroll
    for (int j = 0; j < kN / 8; ++j) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int m = 8 * j + 2 * (lane % 4) + r % 2;
        red[m * ld + row + 8 * (r / 2)] = acc[4 * j + r];
      }
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

// This CTA's share of the tile's output: weight rows [rank * kRows / splits, (rank + 1) *
// kRows / splits) of the tile, summed over the cluster's partials in rank order (INT8:
// integer adds, exact), then for INT8 the conversion to fp32 with the zero-point correction
// (or, for int8_mm, the int32 sum stored as it is), scales (those not applied per step),
// bias, and the store. Consecutive threads take consecutive output columns n, so the stores are
// coalesced. a_smem: the fused quantizer's scale of each token (else null: p.a_scale).
//
// Each thread takes a batch of elements at a time (store_batch) and issues all of their
// loads (the partials, over distributed shared memory when split, and the scales, bias and
// zero-point terms from global memory) before it uses any: one element at a time, every
// element paid the loads' whole latency in turn, and at kN = 64 (a thread's 11 elements of
// a 3-way split, or 32 without one) that latency was most of the GEMM's growth from M = 1 to
// 64 (bench/NOTES.md, "The swap-AB epilogue's latency"). A batch covers a thread's whole
// share at every split the host picks with kN <= 64 (12 at kN = 64: 112 rows / 3 x 64
// tokens is 9-10 a thread, 128 / 3 x 64 is 11, 96 / 2 x 64 is 12; 16 spills in the fused
// INT8 kernel), so the share costs one round of latency; 8 at kN = 64 took two, where
// M = 48 (7 a thread) took one. Without a split the fragment
// is stored directly (direct_store). Elements past the share (or past N) load from element
// 0's addresses, which are always valid, and store nothing. LOWBIT_SWAPAB_STORE_BATCH_64 (a
// build flag) sets kN = 64's for a comparison.
#ifndef LOWBIT_SWAPAB_STORE_BATCH_64
#define LOWBIT_SWAPAB_STORE_BATCH_64 12
#endif
template <int kN>
__host__ __device__ constexpr int store_batch() {
  return kN >= 64 ? LOWBIT_SWAPAB_STORE_BATCH_64 : 8;
}

// kIntOut: int8_mm's int32 store (p.out_int32), a parameter so that each path's batch holds
// one store per element: with the runtime flag INT8's batch kept both stores and their
// predicates, and its store phase took 1.1 us more than FP8's at 64 x 4096^2 (bench/NOTES.md,
// "The sibling groups, the new form pick, INT8's phases").
template <class Op, int kN, bool kBlock, class F, bool kIntOut>
__device__ __forceinline__ void reduce_store(const GemmArgs& p, const typename Op::Acc* red,
                                             int tile, int rank, int splits, int ctid,
                                             const float* a_smem) {
  using Acc = typename Op::Acc;
  constexpr int kRedLd = Config<kN, false, false, F>::kRedLd;
  constexpr int kStoreBatch = store_batch<kN>();
  const int first = rank * F::kRows / splits, rows = (rank + 1) * F::kRows / splits - first;
  const int tokens = min(p.M, kN);
  const int n_first = tile * F::kRows + first;
  const int total = rows * tokens;
  const bool a_step = kBlock && p.a_mode == ScaleMode::kBlock;
  const bool b_step = kBlock && p.b_mode == ScaleMode::kBlock;
  [[maybe_unused]] constexpr bool int_out = Op::kInt && kIntOut;
  [[maybe_unused]] const bool zeros = Op::kInt && p.a_zero != nullptr;
  for (int e0 = ctid; e0 < total; e0 += kStoreBatch * kConsumerThreads) {
    int m[kStoreBatch], n[kStoreBatch], at[kStoreBatch];  // at: the element's offset in red
    bool ok[kStoreBatch];
    Acc sum[kStoreBatch];
    float fa[kStoreBatch], fb[kStoreBatch], bias[kStoreBatch];
    [[maybe_unused]] int32_t zero[kStoreBatch], b_sum[kStoreBatch];
#pragma unroll
    for (int u = 0; u < kStoreBatch; ++u) {
      const int e = e0 + u * kConsumerThreads;
      const int mu = e / rows, r = e % rows;
      ok[u] = e < total && n_first + r < p.N;
      m[u] = ok[u] ? mu : 0;
      n[u] = ok[u] ? n_first + r : 0;
      at[u] = m[u] * kRedLd + first + (ok[u] ? r : 0);
      sum[u] = splits == 1 ? red[at[u]]
                           : ld_cluster_acc<Acc>(cluster_map(smem_u32(red + at[u]), 0));
      if constexpr (int_out) continue;  // (int8_mm: no scales, bias or zero points)
      fa[u] = a_step                ? 1.f
              : a_smem != nullptr ? a_smem[m[u]]
                                  : __ldg(&p.a_scale[p.a_mode == ScaleMode::kRow ? m[u] : 0]);
      fb[u] = b_step ? 1.f : __ldg(&p.b_scale[p.b_mode == ScaleMode::kRow ? n[u] : 0]);
      bias[u] = p.bias ? load_bias(p.bias, p.bias_dtype, n[u]) : 0.f;
      if constexpr (Op::kInt) {
        if (zeros) {
          zero[u] = a_zero_of(p, m[u]);
          b_sum[u] = __ldg(&p.b_sum[n[u]]);
        }
      }
    }
    // The peers' partials, rank by rank: the same order of adds as one element at a time.
    for (int j = 1; j < splits; ++j) {
      Acc part[kStoreBatch];
#pragma unroll
      for (int u = 0; u < kStoreBatch; ++u)
        part[u] = ld_cluster_acc<Acc>(cluster_map(smem_u32(red + at[u]), j));
#pragma unroll
      for (int u = 0; u < kStoreBatch; ++u) sum[u] += part[u];
    }
#pragma unroll
    for (int u = 0; u < kStoreBatch; ++u) {
      if (!ok[u]) continue;
      const int64_t o = int64_t(m[u]) * p.ldo + n[u];
      if constexpr (int_out) {
        static_cast<int32_t*>(p.out)[o] = sum[u];
      } else {
        float v;
        if constexpr (Op::kInt)
          v = int_acc_value(sum[u], zeros, zero[u], b_sum[u]);
        else
          v = sum[u];
        // a's scale, then b's, then the bias, one rounding each (a factor of 1 is exact).
        v *= fa[u];
        v *= fb[u];
        if (p.bias) v += bias[u];
        store_out(p.out, p.out_dtype, o, v);
      }
    }
  }
}

// Without a K split, each consumer thread applies the epilogue to its own fragment and
// stores it: no partial tile, no barrier, and every load of the thread's elements (its
// tokens' scales, its weight rows' scales, bias and INT8's zero-point terms) in flight at
// once. Through the partial tile a thread of a 64-token, 112-row tile took its 28 elements
// 8 at a time, each batch behind the last one's loads. The stores are less coalesced (a
// warp writes 8 tokens x 8 columns at once, tokens as A; 8 tokens x 16 weight rows swapped,
// one element each), which at M <= 64 is a few KB a CTA. Same operations in the same order
// as reduce_store at splits 1, so the same bits. LOWBIT_SWAPAB_DIRECT_STORE=0 (a build flag)
// keeps the partial tile for the comparison.
#ifndef LOWBIT_SWAPAB_DIRECT_STORE
#define LOWBIT_SWAPAB_DIRECT_STORE 1
#endif
constexpr bool kDirectStore = LOWBIT_SWAPAB_DIRECT_STORE != 0;

template <class Op, int kN, bool kBlock, class F, int R>
__device__ __forceinline__ void direct_store(const GemmArgs& p, const typename Op::Acc (&acc)[R],
                                             int tile, int cw, int warp, int lane,
                                             const float* a_smem) {
  // The fragment's tokens and weight rows (output columns). Tokens as A: tokens m0, m0 + 8
  // (h), columns 8j + 2(lane % 4) + e of the warpgroup's rows, register 4j + 2h + e.
  // Swapped: tokens 8j + 2(lane % 4) + e, rows r0, r0 + 8 (h), register 4j + 2h + e.
  constexpr int T = F::kTokensA ? 2 : kN / 4;  // tokens per thread
  constexpr int Cn = F::kTokensA ? R / 2 : 2;  // columns per thread
  auto token = [&](int t) {
    return F::kTokensA ? warp * 16 + lane / 4 + 8 * t : 8 * (t / 2) + 2 * (lane % 4) + t % 2;
  };
  auto column = [&](int c) {
    return tile * F::kRows + cw * F::kWgRows +
           (F::kTokensA ? 8 * (c / 2) + 2 * (lane % 4) + c % 2 : warp * 16 + lane / 4 + 8 * c);
  };
  auto token_of = [](int i) { return F::kTokensA ? (i / 2) % 2 : 2 * (i / 4) + i % 2; };
  auto column_of = [](int i) { return F::kTokensA ? 2 * (i / 4) + i % 2 : (i / 2) % 2; };
  // The fragment's stores, in bounds: tokens as A, registers i, i + 1 are columns n, n + 1
  // (n even: tiles and warpgroup rows are even) of one token, `pair(o, i, second)` with
  // `second` whether n + 1 exists; swapped, `one(o, i)` per register. o: the output offset.
  auto store_fragment = [&](auto&& pair, auto&& one) {
    if constexpr (F::kTokensA) {
#pragma unroll
      for (int i = 0; i < R; i += 2) {
        const int m = token(token_of(i)), n = column(column_of(i));
        if (m < p.M && n < p.N) pair(int64_t(m) * p.ldo + n, i, n + 1 < p.N);
      }
    } else {
#pragma unroll
      for (int i = 0; i < R; ++i) {
        const int m = token(token_of(i)), n = column(column_of(i));
        if (m < p.M && n < p.N) one(int64_t(m) * p.ldo + n, i);
      }
    }
  };
  if constexpr (Op::kInt) {
    if (p.out_int32) {  // int8_mm: the int32 sums as they are; it has no scales or bias
      const bool pairs = pair_store_ok(p.out, FloatType::kF32, p.ldo);
      store_fragment(
          [&](int64_t o, int i, bool second) {
            store_i32_pair(p.out, o, acc[i], acc[i + 1], second, pairs);
          },
          [&](int64_t o, int i) { static_cast<int32_t*>(p.out)[o] = acc[i]; });
      return;
    }
  }
  const bool a_step = kBlock && p.a_mode == ScaleMode::kBlock;
  const bool b_step = kBlock && p.b_mode == ScaleMode::kBlock;
  [[maybe_unused]] const bool zeros = Op::kInt && p.a_zero != nullptr;
  float fa[T], fb[Cn], bias[Cn];
  [[maybe_unused]] int32_t zero[T], b_sum[Cn];
  // Every load first (addresses clamped to element 0's, always valid): the stores below
  // may alias them as far as the compiler knows, so it would not hoist them itself.
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const int m = token(t) < p.M ? token(t) : 0;
    fa[t] = a_step ? 1.f
            : a_smem != nullptr ? a_smem[m]
                                : __ldg(&p.a_scale[p.a_mode == ScaleMode::kRow ? m : 0]);
    if constexpr (Op::kInt) zero[t] = zeros ? a_zero_of(p, m) : 0;
  }
#pragma unroll
  for (int c = 0; c < Cn; ++c) {
    const int n = column(c) < p.N ? column(c) : 0;
    fb[c] = b_step ? 1.f : __ldg(&p.b_scale[p.b_mode == ScaleMode::kRow ? n : 0]);
    bias[c] = p.bias ? load_bias(p.bias, p.bias_dtype, n) : 0.f;
    if constexpr (Op::kInt) b_sum[c] = zeros ? __ldg(&p.b_sum[n]) : 0;
  }
  float v[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int t = token_of(i), c = column_of(i);
    if constexpr (Op::kInt)
      v[i] = int_acc_value(acc[i], zeros, zero[t], b_sum[c]);
    else
      v[i] = acc[i];
    // a's scale, then b's, then the bias, one rounding each, as reduce_store.
    v[i] *= fa[t];
    v[i] *= fb[c];
    if (p.bias) v[i] += bias[c];
  }
  // A column pair as one store where both exist and the output allows pairs.
  const bool pairs = pair_store_ok(p.out, p.out_dtype, p.ldo);
  store_fragment(
      [&](int64_t o, int i, bool second) {
        if (pairs && second) {
          store_out2(p.out, p.out_dtype, o, v[i], v[i + 1]);
        } else {
          store_out(p.out, p.out_dtype, o, v[i]);
          if (second) store_out(p.out, p.out_dtype, o + 1, v[i + 1]);
        }
      },
      [&](int64_t o, int i) { store_out(p.out, p.out_dtype, o, v[i]); });
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

// ------------------------------------------------------------ the fused quantizer's parts
// The fused quantizer's shared state, per token m < kN: its scale (the epilogue's factor),
// the |x| max as an abs_key, and the codec's scale (scale and 1 / scale, as the quantizer
// encodes with them).
template <class ActCodec, int kN>
struct QuantSmem {
  using DynScale = typename ActCodec::DynScale;
  static_assert(sizeof(DynScale) <= 16 && alignof(DynScale) <= 4, "kQuantSlotBytes");
  float* scale;
  uint32_t* key;
  DynScale* codec_scale;
  __device__ __forceinline__ explicit QuantSmem(uint8_t* base)
      : scale(reinterpret_cast<float*>(base)),
        key(reinterpret_cast<uint32_t*>(base + kN * 4)),
        codec_scale(reinterpret_cast<DynScale*>(base + kN * 8)) {}
};

// The quantizers' own |x| max and element conversion (common/quant_kernels.cuh), for eight
// 16-bit elements (element 0 in the low half of v.x) of the dtype t known at run time.
__device__ __forceinline__ uint32_t max_pairs(uint32_t k2, const uint4& v) {
  using quant::detail::pair_abs_max;
  return pair_abs_max(pair_abs_max(pair_abs_max(pair_abs_max(k2, v.x), v.y), v.z), v.w);
}
__device__ __forceinline__ uint32_t key_of_pairs(uint32_t k2, FloatType t) {
  using quant::detail::pair_abs_key;
  return t == FloatType::kBF16 ? pair_abs_key<FloatType::kBF16>(k2)
                               : pair_abs_key<FloatType::kF16>(k2);
}
__device__ __forceinline__ void widen8(const uint4& v, FloatType t, float (&f)[8]) {
  using quant::detail::pair_elem_f32;
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int j = 0; j < 8; ++j)
    f[j] = t == FloatType::kBF16 ? pair_elem_f32<FloatType::kBF16>(w[j >> 1], j & 1)
                                 : pair_elem_f32<FloatType::kF16>(w[j >> 1], j & 1);
}

// |x| max of rows [0, M) over columns [k0, k1) (multiples of 8) into key[row] (zero before),
// by every thread of the CTA: each warp takes a part of a row (rows are cut into parts so
// that all warps have work at small M), keeps eight 16-byte loads in flight per lane, and
// merges its part with one shared atomicMax.
__device__ __forceinline__ void row_absmax(const ActQuantArgs& aq, int M, int k0, int k1,
                                           uint32_t* key) {
  constexpr int kWarps = kThreads / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int parts = M >= kWarps ? 1 : kWarps / M;
  const int units = (k1 - k0) / 8;
  for (int item = warp; item < M * parts; item += kWarps) {
    const int row = item / parts, part = item % parts;
    const uint4* src = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(aq.x) +
                                                      int64_t(row) * aq.ldx + k0);
    const int end = (part + 1) * units / parts;
    int u = part * units / parts + lane;
    uint32_t k2 = 0;
    for (; u + 7 * 32 < end; u += 8 * 32) {
      uint4 v[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = __ldg(src + u + 32 * i);
#pragma unroll
      for (int i = 0; i < 8; ++i) k2 = max_pairs(k2, v[i]);
    }
    for (; u < end; u += 32) k2 = max_pairs(k2, __ldg(src + u));
    const uint32_t k = __reduce_max_sync(0xFFFFFFFFu, key_of_pairs(k2, aq.x_type));
    if (lane == 0) atomicMax(&key[row], k);
  }
}

// The tokens' scales, by every thread of the CTA (all of a cluster's CTAs when splits > 1):
// dynamic, the |x| max of each row over all of K (this CTA's K range, merged over the
// cluster), then the codec's scale of it, as the quantizer computes it; static, the codec's
// scale of the one given. Rows past M get the scale of zeros (never used).
template <class ActCodec, int kN>
__device__ __forceinline__ void act_scales(const ActQuantArgs& aq, const QuantSmem<ActCodec, kN>& q,
                                           int M, int k0, int k1, int splits) {
  using KernelParams = quant::detail::KernelParams;
  const bool dynamic = aq.x_scale == nullptr;
  if (dynamic) {
    row_absmax(aq, M, k0, k1, q.key);
    if (splits > 1)
      cluster_sync();  // every CTA's maxima written
    else
      __syncthreads();
  }
  if (threadIdx.x < kN) {
    const int m = threadIdx.x;
    const ActCodec codec{KernelParams{}};
    typename ActCodec::DynScale d;
    if (dynamic) {
      typename ActCodec::Key k;
      k.w[0] = q.key[m];
      if (splits > 1) {
        for (int r = 0; r < splits; ++r)
          k.w[0] = max(k.w[0], uint32_t(ld_cluster_s32(cluster_map(smem_u32(&q.key[m]), r))));
      }
      d = codec.dynamic(k);
    } else {
      KernelParams kp;
      kp.scale_in = aq.x_scale;
      d = {codec.given(kp, 0), true};
    }
    q.codec_scale[m] = d;
    q.scale[m] = d.s;
  }
  __syncthreads();
}

// The issuing thread's loads of the fused kernel's step `it` (its tile and K step in the
// consumers' order): the weight tile onto full[s], x's [kN][128] box onto staged[s], once
// the consumers have released the stage.
template <class C, class F>
__device__ __forceinline__ void issue_quant_stage(const CUtensorMap* map_w, const CUtensorMap* map_x,
                                                  uint8_t* w_tiles, uint8_t* staging,
                                                  uint64_t* full, uint64_t* empty,
                                                  uint64_t* staged, int it, int nk,
                                                  int k_begin) {
  const int s = it % C::kStages;
  const int tile = blockIdx.y + (it / nk) * gridDim.y, kt = k_begin + it % nk;
  mbar_wait(&empty[s], ((it / C::kStages) & 1) ^ 1);
  mbar_expect_tx(&full[s], C::kWeightBytes);
  tma_load_2d(w_tiles + s * C::kWeightBytes, map_w, &full[s], kt * kBK, tile * F::kRows);
  mbar_expect_tx(&staged[s], C::kStagingBytes);
  tma_load_2d(staging + s * C::kStagingBytes, map_x, &staged[s], kt * kBK, 0);
}

// One stage's activation tile from its staged x, by the encoding warps (et: 0 ..
// kEncodeThreads - 1): 16 units of 8 elements per row, each encoded to 8 codes and stored
// where TMA's 128-byte swizzle puts them.
template <class ActCodec, int kN>
__device__ __forceinline__ void encode_stage(const ActCodec& codec,
                                             const typename ActCodec::DynScale* sc,
                                             bool dynamic, FloatType x_type,
                                             const uint8_t* staged, uint8_t* act, int M,
                                             int k_left, int et) {
  for (int u = et; u < kN * 16; u += kEncodeThreads) {
    const int r = u >> 4, h = u & 15;
    uint32_t lo = 0, hi = 0;
    if (r < M && h * 8 < k_left) {
      float f[8];
      widen8(*reinterpret_cast<const uint4*>(staged + r * kStagedRowBytes + h * 16), x_type, f);
      const typename ActCodec::DynScale d = sc[r];
      if (dynamic) {  // the quantizer's per-row encode (it may skip the clamp)
        lo = codec.encode4(d, f[0], f[1], f[2], f[3]);
        hi = codec.encode4(d, f[4], f[5], f[6], f[7]);
      } else {  // a given scale: the full encode
        const typename ActCodec::Scale& g = d;
        lo = codec.encode4(g, f[0], f[1], f[2], f[3]);
        hi = codec.encode4(g, f[4], f[5], f[6], f[7]);
      }
    }
    *reinterpret_cast<uint2*>(act + r * kBK + (((h >> 1) ^ (r & 7)) << 4) + (h & 1) * 8) =
        make_uint2(lo, hi);
  }
}
#endif  // LOWBIT_SM90A

// Op: the operand type (E4M3, S8); kN: the activation tile's rows (M rounded up); kPromote:
// fp32 promotion every 128 K (else fast_accum, which S8 always runs); kBlock: per-128-block
// scales applied per step; ActCodec: the fused activation quantizer's codec (void: a is given
// as codes; aq is then unused); F: the operands' roles and the tile's height (Form). Grid
// (splits, tile stride), cluster (splits, 1, 1): blockIdx.x is the K range and the rank in
// the cluster.
template <class Op, int kN, bool kPromote, bool kBlock, bool kScaleTma, class ActCodec, class F>
__global__ void __launch_bounds__(kThreads, 1)
sm90_gemm_swapab_kernel(const __grid_constant__ CUtensorMap map_w,
                        const __grid_constant__ CUtensorMap map_x,
                        const __grid_constant__ CUtensorMap map_sa,
                        const __grid_constant__ CUtensorMap map_sb, const GemmArgs p,
                        const ActQuantArgs aq) {
  static_assert(!Op::kInt || !(kPromote || kBlock || kScaleTma),
                "int32 accumulation is exact: no promotion, no block scales");
#ifdef LOWBIT_SM90A
  static_assert(kPromote || !kBlock, "block scales need promotion");
  static_assert(kBlock || !kScaleTma, "scales by TMA are block scales");
  constexpr bool kQuant = !std::is_void_v<ActCodec>;
  static_assert(!(kQuant && kBlock), "the fused quantizer gives per-row or per-tensor scales");
  using Acc = typename Op::Acc;
  using C = Config<kN, kScaleTma, kQuant, F>;
  constexpr int kStages = C::kStages;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* w_tiles = align_smem_1024(smem_raw);  // swizzled tiles need 1024-byte alignment
  uint8_t* x_tiles = w_tiles + kStages * C::kWeightBytes;
  uint8_t* scales = x_tiles + kStages * C::kActTileBytes;
  uint8_t* staging = scales + kStages * C::kScaleBytes;
  Acc* red = reinterpret_cast<Acc*>(staging + kStages * C::kStagingBytes);
  uint8_t* quant = reinterpret_cast<uint8_t*>(red + kN * C::kRedLd);
  uint64_t* full = reinterpret_cast<uint64_t*>(quant + C::kQuantBytes);
  uint64_t* empty = full + kStages;
  uint64_t* staged = empty + kStages;  // kQuant only

#ifdef LOWBIT_SWAPAB_TRACE
  if (unsigned long long* row = trace::mine()) {
    for (int i = 0; i < trace::kStamps; ++i) row[i] = 0;
    row[trace::kStart] = globaltimer_ns();
  }
#endif
  const int wg = threadIdx.x / 128;
  const int splits = gridDim.x, rank = blockIdx.x;
  const int tiles = (p.N + F::kRows - 1) / F::kRows;
  const int steps = (p.K + kBK - 1) / kBK;
  const int k_begin = rank * steps / splits, k_end = (rank + 1) * steps / splits;

  if (threadIdx.x == 0) {
    if constexpr (kQuant) {
      for (int s = 0; s < kStages; ++s) mbar_init(&staged[s], 1);
    }
    // After every init: its fence publishes them all.
    init_ring(full, empty, kStages, kConsumerWarps, kQuant ? 1 + kEncodeWarps : 1);
    tma_prefetch_desc(&map_w);
    tma_prefetch_desc(&map_x);
  }
  if constexpr (kQuant) {
    if (threadIdx.x < kN) QuantSmem<ActCodec, kN>(quant).key[threadIdx.x] = 0;
  }
  const bool sa = kScaleTma && p.a_mode == ScaleMode::kBlock;
  const bool sb = kScaleTma && p.b_mode == ScaleMode::kBlock;
  [[maybe_unused]] const int stage_bytes =
      C::kWeightBytes + C::kActTileBytes + (sa ? kN * 16 : 0) + (sb ? 16 : 0);
  // Steps whose weight tile is already on its way (b_static): the first ring's, issued before
  // the wait below, since the kernel before does not write the weight. Their stages are fresh
  // (no empty wait), and the producer adds the rest of each stage's loads after the wait.
  [[maybe_unused]] int early = 0;
  if constexpr (!kQuant) {
    const int nk = k_end - k_begin;
    if (p.b_static && threadIdx.x == 0 && nk > 0) {
      const int total = nk * (blockIdx.y < tiles ? (tiles - 1 - blockIdx.y) / gridDim.y + 1 : 0);
      early = total < kStages ? total : kStages;
      for (int i = 0; i < early; ++i) {
        const int tile = blockIdx.y + (i / nk) * gridDim.y, kt = k_begin + i % nk;
        mbar_expect_tx(&full[i], stage_bytes);
        tma_load_2d(w_tiles + i * C::kWeightBytes, &map_w, &full[i], kt * kBK, tile * F::kRows);
      }
    }
  }
  __syncthreads();
  // The setup above touches no global memory but the early weight loads, so under
  // programmatic dependent launch it overlaps the end of the kernel before; everything below
  // comes after that kernel. Each thread lets the next kernel start its setup once it is
  // past its last mainloop.
  grid_dependency_wait();
  SWAPAB_TRACE_STAMP(kDep);

  if constexpr (kQuant) {
    // Steps of this CTA, over its tiles, in the consumers' order; the first ring's loads go
    // out before the scales, which they do not need.
    const int nk = k_end - k_begin;
    const int total = nk * (blockIdx.y < tiles ? (tiles - 1 - blockIdx.y) / gridDim.y + 1 : 0);
    const int prefill = total < kStages ? total : kStages;
    if (threadIdx.x == 0) {
      for (int it = 0; it < prefill; ++it)
        issue_quant_stage<C, F>(&map_w, &map_x, w_tiles, staging, full, empty, staged, it, nk,
                                k_begin);
    }
    const QuantSmem<ActCodec, kN> q(quant);
    act_scales<ActCodec, kN>(aq, q, p.M, k_begin * kBK, min(p.K, k_end * kBK), splits);
    if (wg == 0) {
      asm volatile("setmaxnreg.dec.sync.aligned.u32 56;");
      const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
      if (warp == 0) {
        if (lane == 0) {
          for (int it = prefill; it < total; ++it)
            issue_quant_stage<C, F>(&map_w, &map_x, w_tiles, staging, full, empty, staged, it,
                                    nk, k_begin);
        }
      } else {
        const ActCodec codec{quant::detail::KernelParams{}};
        const bool dynamic = aq.x_scale == nullptr;
        for (int it = 0; it < total; ++it) {
          const int s = it % kStages, kt = k_begin + it % nk;
          mbar_wait(&staged[s], (it / kStages) & 1);
          encode_stage<ActCodec, kN>(codec, q.codec_scale, dynamic, aq.x_type,
                                     staging + s * C::kStagingBytes,
                                     x_tiles + s * C::kActTileBytes, p.M, p.K - kt * kBK,
                                     threadIdx.x - 32);
          fence_async_smem();  // the codes, written by this thread, for wgmma to read
          __syncwarp();
          if (lane == 0) mbar_arrive(&full[s]);
        }
      }
      launch_dependents();
      if (splits > 1) {  // the consumers' two cluster barriers of each tile (one per CTA today)
        __syncwarp();
        for (int tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
          cluster_sync();  // partials written
          cluster_sync();  // partials read
        }
      }
      return;
    }
  } else if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    // Without a split only the issuing thread has work; with one, the whole warpgroup joins
    // the two cluster barriers of every tile (a cluster barrier counts every thread).
    if (splits == 1 && threadIdx.x != 0) return;
    int it = 0;  // steps issued by this CTA, across its tiles
    for (int tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
      if (threadIdx.x == 0) {
        for (int kt = k_begin; kt < k_end; ++kt, ++it) {
          const int s = it % kStages;
          if (it >= early) {
            // A fresh barrier completes phase "1" at once, so the first pass does not wait.
            mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);
            mbar_expect_tx(&full[s], stage_bytes);
            tma_load_2d(w_tiles + s * C::kWeightBytes, &map_w, &full[s], kt * kBK,
                        tile * F::kRows);
          }
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

  if constexpr (kQuant)
    asm volatile("setmaxnreg.inc.sync.aligned.u32 224;");
  else
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
  const float* a_smem = nullptr;  // the fused quantizer's token scales (QuantSmem::scale)
  if constexpr (kQuant) a_smem = reinterpret_cast<const float*>(quant);
  const int cw = wg - 1;  // consumer warpgroup: weight rows from cw * kWgRows of the tile
  const int ctid = threadIdx.x - 128;
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  int it = 0;  // steps consumed, in the producer's order
#ifdef LOWBIT_SWAPAB_TRACE
  // The first stage's arrival, waited for here (the mainloop's own wait then passes at once):
  // a stamp inside the mainloop makes ptxas serialize its wgmmas.
  if (blockIdx.y < tiles && k_end > k_begin) {
    mbar_wait(&full[0], 0);
    SWAPAB_TRACE_STAMP(kFirst);
  }
#endif
  for (int tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    Acc acc[C::kRegs];
    it = consume_tile<Op, kN, kPromote, kBlock, kScaleTma, kQuant, F>(
        acc, p, w_tiles, x_tiles, scales, full, empty, tile, k_begin, k_end, it, cw, lane);
    if (tile + gridDim.y >= tiles) launch_dependents();
    SWAPAB_TRACE_STAMP(kMain);
    if (kDirectStore && splits == 1) {
      SWAPAB_TRACE_STAMP(kSync);
      direct_store<Op, kN, kBlock, F>(p, acc, tile, cw, warp, lane, a_smem);
      SWAPAB_TRACE_STAMP(kStore);
      continue;
    }
    write_partial<kN, F>(red, acc, cw, warp, lane);
    tile_sync(splits);
    SWAPAB_TRACE_STAMP(kSync);
    if (Op::kInt && p.out_int32)
      reduce_store<Op, kN, kBlock, F, Op::kInt>(p, red, tile, rank, splits, ctid, a_smem);
    else
      reduce_store<Op, kN, kBlock, F, false>(p, red, tile, rank, splits, ctid, a_smem);
    SWAPAB_TRACE_STAMP(kStore);
    tile_sync(splits);  // peers are done reading red: it may be rewritten, or the CTA exit
  }
  SWAPAB_TRACE_STAMP(kEnd);
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

// The K split of the GEMM kernel <Op, kN, kPromote, kBlock, kScaleTma, F> (a is given as
// codes) for `tiles` tiles of `steps` steps on `device`, in `splits`. Per-device facts of the
// kernel are looked up on first use; two threads racing here both do the lookup, which is
// harmless. A fused kernel takes the split of the GEMM whose mainloop it runs (the same
// instantiation of this function, so the same cached answers): its fp32 partial sums are
// the GEMM's, added in the same order.
template <class Op, int kN, bool kPromote, bool kBlock, bool kScaleTma, class F = Swapped>
cudaError_t plan_splits(int device, int tiles, int steps, int& splits) {
  using C = Config<kN, kScaleTma, false, F>;
  auto kernel = sm90_gemm_swapab_kernel<Op, kN, kPromote, kBlock, kScaleTma, void, F>;
  static std::atomic<bool> smem_set[kMaxDevices];
  static std::atomic<int> fit[kMaxDevices][kMaxSplits + 1];  // by cluster size; see above
  const cudaError_t e = opt_in_smem(kernel, C::kSmemBytes, device, smem_set);
  if (e != cudaSuccess) return e;
  splits = split_count(tiles, steps, sm_count(device), [&](int s) {
    return clusters_that_fit(reinterpret_cast<const void*>(kernel), C::kSmemBytes, s,
                             fit[device][s]);
  });
  return cudaSuccess;
}

// The tile forms of a kN = 64 GEMM (M = 33..64) without block scales: the swapped 128-row
// tile, and tokens as A with 112 rows or 96. s8 wgmma has no n = 56: INT8's 112-row form runs
// an n = 32 and an n = 24 wgmma per K block (wgmma_rows), as fast as 128 rows or faster where
// the cost model picks it (bench/NOTES.md, "The whole GPU suite in two shards").
using TokensA112 = Form<112, true>;
using TokensA96 = Form<96, true>;

// LOWBIT_SWAPAB_ROWS=r forces the form of the GEMMs without block scales (r = 128: swapped;
// 112 or 96: tokens as A, at any M, as 64 rows), for the sweep of bench/m64_probe.sh and the
// forms' tests. Read once per process.
inline int forced_rows() {
  static const int forced = [] {
    const int r = env_int("LOWBIT_SWAPAB_ROWS");
    return r == 128 || r == 112 || r == 96 ? r : 0;
  }();
  return forced;
}

// What each split rank past the first adds to a tile's time, in K steps: the cluster's
// reduction through distributed shared memory and the wait on its peers. Measured on the
// H100 at 48 and 64 x 4096 x 4096, where 96 rows in 2 ranks beat 112 rows in 3 in every
// pair (bench/NOTES.md, "The split's ranks in the swap-AB form choice").
constexpr int kSplitRankSteps = 3;

// The weight rows x steps that the busiest CTA of form F streams (its split as planned, in
// `splits`), each split rank past the first counted as kSplitRankSteps more steps, in `cost`;
// the time of a weight-streaming GEMM follows it, since every CTA streams at about the same
// rate.
template <class Op, bool kPromote, class F>
cudaError_t form_cost(int device, const GemmArgs& p, int64_t& cost, int& splits) {
  const int tiles = (p.N + F::kRows - 1) / F::kRows, steps = (p.K + kBK - 1) / kBK;
  const cudaError_t e =
      plan_splits<Op, 64, kPromote, false, false, F>(device, tiles, steps, splits);
  if (e != cudaSuccess) return e;
  const int sms = sm_count_or(device, 1);
  const int waves = splits > 1 ? 1 : (tiles + sms - 1) / sms;
  cost = int64_t(F::kRows) * ((steps + splits - 1) / splits + kSplitRankSteps * (splits - 1)) *
         waves;
  return cudaSuccess;
}

// The form of a kN = 64 GEMM without block scales: its tile height (128, 112 or 96; see
// Form) and its K split as planned for kN = 64, which the launch then takes as it is (0: the
// launch plans it, as where LOWBIT_SWAPAB_ROWS forces the form).
struct FormPlan {
  int rows = 128;
  int splits = 0;
};

// The form of least form_cost, the swapped one on a tie. The fused kernel asks with the
// kPromote of the GEMM it matches, so both run the same form and split: the same sums in the
// same order.
template <class Op, bool kPromote>
cudaError_t pick_rows(int device, const GemmArgs& p, FormPlan& plan) {
  plan = FormPlan{};
  if (const int f = forced_rows(); f != 0) {
    plan.rows = f;
    return cudaSuccess;
  }
  int64_t best = 0, cost = 0;
  int splits = 1;
  cudaError_t e = form_cost<Op, kPromote, Swapped>(device, p, best, plan.splits);
  if (e != cudaSuccess) return e;
  e = form_cost<Op, kPromote, TokensA112>(device, p, cost, splits);
  if (e != cudaSuccess) return e;
  if (cost < best) best = cost, plan = {112, splits};
  e = form_cost<Op, kPromote, TokensA96>(device, p, cost, splits);
  if (e != cudaSuccess) return e;
  if (cost < best) best = cost, plan = {96, splits};
  return cudaSuccess;
}

// `splits`: the K split pick_rows planned for this kernel's form, or 0 to plan it here.
template <class Op, int kN, bool kPromote, bool kBlock, bool kScaleTma, class ActCodec, class F>
cudaError_t launch(const Maps& maps, const GemmArgs& p, const ActQuantArgs& aq,
                   cudaStream_t stream, int splits) {
  using C = Config<kN, kScaleTma, !std::is_void_v<ActCodec>, F>;
  auto kernel = sm90_gemm_swapab_kernel<Op, kN, kPromote, kBlock, kScaleTma, ActCodec, F>;
  int device = 0;
  cudaError_t e = current_device(device);
  if (e != cudaSuccess) return e;
  const int tiles = (p.N + F::kRows - 1) / F::kRows;
  const int steps = (p.K + kBK - 1) / kBK;
  const int sms = sm_count(device);
  if (splits <= 0) {
    e = plan_splits<Op, kN, kPromote, kBlock, kScaleTma, F>(device, tiles, steps, splits);
    if (e != cudaSuccess) return e;
  }
  if constexpr (!std::is_void_v<ActCodec>) {
    static std::atomic<bool> smem_set[kMaxDevices];  // the fused kernel's own opt-in
    e = opt_in_smem(kernel, C::kSmemBytes, device, smem_set);
    if (e != cudaSuccess) return e;
  }
  // With a split, tiles * splits <= SMs (one wave); without, the CTAs stride over the tiles.
  int stride = splits > 1 || sms <= 0 ? tiles : (tiles < sms ? tiles : sms);
  if (stride > 65535) stride = 65535;

  // Clusters of `splits` CTAs along x (none when 1).
  const LaunchConfig cfg(dim3(splits, stride, 1), kThreads, C::kSmemBytes, stream, splits,
                         programmatic_launch());
  // The launch's own status: an error left by earlier, unrelated work is not reported here.
  return launch_status(
      cudaLaunchKernelEx(cfg.get(), kernel, maps.w, maps.x, maps.sa, maps.sb, p, aq));
}

// The operand maps and the kernel for the scales' modes (S8: exact int32 accumulation, one
// kernel per kN and form); `splits` as launch takes it.
template <class Op, int kN, class F = Swapped>
cudaError_t dispatch(const GemmArgs& p, cudaStream_t stream, int splits = 0) {
  Maps maps{};
  if (!make_map_k128(&maps.w, p.b, p.N, p.K, p.ldb, F::kRows, map_slot(p, TensorMapCache::kB)) ||
      !make_map_k128(&maps.x, p.a, p.M, p.K, p.lda, kN, map_slot(p, TensorMapCache::kA)))
    return cudaErrorInvalidValue;
  const ActQuantArgs none{};
  if constexpr (Op::kInt) {
    return launch<Op, kN, false, false, false, void, F>(maps, p, none, stream, splits);
  } else {
    const bool a_block = p.a_mode == ScaleMode::kBlock, b_block = p.b_mode == ScaleMode::kBlock;
    if constexpr (!F::kTokensA) {
      if (a_block || b_block) {
        // Scales by TMA when it can address them (16-byte rows: K a multiple of 512 for dense
        // scales), else by loads.
        if (make_block_scale_maps(&maps.sa, &maps.sb, p, kN))
          return launch<Op, kN, true, true, true, void, F>(maps, p, none, stream, 0);
        return launch<Op, kN, true, true, false, void, F>(maps, p, none, stream, 0);
      }
    } else if (a_block || b_block) {
      return cudaErrorInvalidValue;  // gemm_swapab sends block scales to the swapped form
    }
    if (p.fast_accum)
      return launch<Op, kN, false, false, false, void, F>(maps, p, none, stream, splits);
    return launch<Op, kN, true, false, false, void, F>(maps, p, none, stream, splits);
  }
}

// The fused kernel of operand type Op and quantizer codec ActCodec: x's map (16-bit elements,
// no swizzle) in place of a's, fp32 promotion for FP8 (the linear layers never ask for
// fast_accum), int32 for INT8.
template <class Op, int kN, class ActCodec, class F = Swapped>
cudaError_t dispatch_quant(const GemmArgs& p, const ActQuantArgs& aq, cudaStream_t stream,
                           int splits = 0) {
  Maps maps{};
  if (!make_map_k128(&maps.w, p.b, p.N, p.K, p.ldb, F::kRows, map_slot(p, TensorMapCache::kB)) ||
      !make_map_k128_u16(&maps.x, aq.x, p.M, p.K, aq.ldx, kN, map_slot(p, TensorMapCache::kA)))
    return cudaErrorInvalidValue;
  return launch<Op, kN, !Op::kInt, false, false, ActCodec, F>(maps, p, aq, stream, splits);
}

// The form of a GEMM with the given promotion (pick_rows's), for M = 33..64 or where
// LOWBIT_SWAPAB_ROWS forces one; 128 rows (swapped), split planned by the launch, otherwise.
template <class Op, bool kPromote>
cudaError_t form_of(const GemmArgs& p, FormPlan& plan) {
  plan = FormPlan{};
  if (p.M <= 32 && forced_rows() == 0) return cudaSuccess;
  int device = 0;
  const cudaError_t e = current_device(device);
  return e != cudaSuccess ? e : pick_rows<Op, kPromote>(device, p, plan);
}

// The launcher of operand type Op (the families' sm90_*_gemm_swapab): kN = M rounded up to
// 8, 16, 32 or 64, in the form rows_of gives when the scales are not per block.
template <class Op>
cudaError_t gemm_swapab(const GemmArgs& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (p.M < 0 || p.M > 64 || p.N < 0 || p.K <= 0) return cudaErrorInvalidValue;
  FormPlan form;  // 128 rows, split planned by the launch, with block scales
  if (p.a_mode != ScaleMode::kBlock && p.b_mode != ScaleMode::kBlock) {
    // The kPromote of the kernel that will run (FP8 promotes unless fast_accum; S8 never).
    const cudaError_t e =
        p.fast_accum ? form_of<Op, false>(p, form) : form_of<Op, !Op::kInt>(p, form);
    if (e != cudaSuccess) return e;
    if (form.rows == 112) return dispatch<Op, 64, TokensA112>(p, stream, form.splits);
    if (form.rows == 96) return dispatch<Op, 64, TokensA96>(p, stream, form.splits);
  }
  if (p.M <= 8) return dispatch<Op, 8>(p, stream);
  if (p.M <= 16) return dispatch<Op, 16>(p, stream);
  if (p.M <= 32) return dispatch<Op, 32>(p, stream);
  return dispatch<Op, 64>(p, stream, form.splits);
}

// The launcher of a linear layer's forward with its activation quantizer fused (the
// families' sm90_*_linear_swapab, a LinearFn): what it does not take (block scales,
// fast_accum, INT8 zero points or int32 output, fp32 or misaligned x, K not a multiple of 16)
// is cudaErrorInvalidValue; the caller runs quantize-then-GEMM for those. It runs the form
// the GEMM would (form_of), so the two stay bit-identical.
template <class Op, class ActCodec>
cudaError_t linear_swapab(const GemmArgs& p, const ActQuantArgs& aq, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  const ScaleMode a_mode = aq.x_scale == nullptr ? ScaleMode::kRow : ScaleMode::kTensor;
  if (p.M < 0 || p.M > 64 || p.N < 0 || p.K <= 0 || p.K % 16 || p.a_mode != a_mode ||
      p.b_mode == ScaleMode::kBlock || p.fast_accum || p.a_zero != nullptr || p.out_int32 ||
      (aq.x_type != FloatType::kBF16 && aq.x_type != FloatType::kF16) ||
      reinterpret_cast<uintptr_t>(aq.x) % 16 || (aq.ldx * 2) % 16 || (p.M > 1 && aq.ldx < p.K))
    return cudaErrorInvalidValue;
  FormPlan form;
  const cudaError_t e = form_of<Op, !Op::kInt>(p, form);
  if (e != cudaSuccess) return e;
  if (form.rows == 112)
    return dispatch_quant<Op, 64, ActCodec, TokensA112>(p, aq, stream, form.splits);
  if (form.rows == 96)
    return dispatch_quant<Op, 64, ActCodec, TokensA96>(p, aq, stream, form.splits);
  if (p.M <= 8) return dispatch_quant<Op, 8, ActCodec>(p, aq, stream);
  if (p.M <= 16) return dispatch_quant<Op, 16, ActCodec>(p, aq, stream);
  if (p.M <= 32) return dispatch_quant<Op, 32, ActCodec>(p, aq, stream);
  return dispatch_quant<Op, 64, ActCodec>(p, aq, stream, form.splits);
}

}  // namespace swapab
}  // namespace sm90
}  // namespace lowbit
