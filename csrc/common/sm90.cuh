// Hopper (sm_90a) building blocks shared by lowbit's wgmma kernels of every family: mbarriers, TMA tile
// loads, shared-memory matrix descriptors, wgmma issue/commit/wait, and the host-side tensor
// map encoder. Device code exists only when compiling for sm_90a; the host part always.
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <type_traits>

#include "common/launch.h"
#include "common/pdl.cuh"
#include "common/smem.cuh"
#include "common/tensor_map_cache.h"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LOWBIT_SM90A 1
#endif

namespace lowbit {
namespace sm90 {

// The shared memory one CTA may opt in to on sm_90 (227 KB).
constexpr int kSmemLimit = 227 * 1024;

// The 8-bit operand types of wgmma (and the accumulator each comes with): e4m3 x e4m3 into
// fp32, s8 x s8 into s32 (exact). One tag per type; the kernels take it as a template
// parameter, so the FP8 and INT8 GEMMs are one mainloop.
struct E4M3 {
  using Acc = float;
  static constexpr bool kInt = false;
};
struct S8 {
  using Acc = int32_t;
  static constexpr bool kInt = true;
};

// The GPU's global nanosecond clock (%globaltimer), comparable across SMs: the kernels' phase
// traces (LOWBIT_SWAPAB_TRACE, LOWBIT_WXA16_TRACE, LOWBIT_WXA16_DECODE_TRACE) stamp with it.
__device__ __forceinline__ unsigned long long globaltimer_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

#ifdef LOWBIT_SM90A
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)),
               "r"(bytes));
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}
// An arrival when `on`, predicated inside the asm: a branch around mbar_arrive between two
// wgmma groups makes ptxas serialize the wgmmas of the loop (warnings C7514 / C7517).
__device__ __forceinline__ void mbar_arrive_if(uint64_t* bar, bool on) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.s32 p, %1, 0;\n"
      "@p mbarrier.arrive.shared::cta.b64 _, [%0];\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(static_cast<int>(on))
      : "memory");
}
// The barriers of a `stages`-deep TMA ring: full[s] completes when stage s has landed (the
// producer's expect_tx arrival plus the bytes; and full_arrivals - 1 more arrivals where
// producer threads also write the stage), empty[s] when `consumers` arrivals have released
// it. Called by one thread; a __syncthreads() after it publishes the barriers.
__device__ __forceinline__ void init_ring(uint64_t* full, uint64_t* empty, int stages,
                                          int consumers, int full_arrivals = 1) {
  for (int s = 0; s < stages; ++s) {
    mbar_init(&full[s], full_arrivals);
    mbar_init(&empty[s], consumers);
  }
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, int parity) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT_%=;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}
// Programmatic dependent launch: common/pdl.cuh.
using lowbit::grid_dependency_wait;
using lowbit::launch_dependents;
__device__ __forceinline__ void tma_prefetch_desc(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
// A [box_rows x box_k] tile at (k, row) of a 2-D map into shared memory; completes on bar.
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int k, int row) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4}], [%2];" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(k), "r"(row)
      : "memory");
}

// A [box_depth x box_rows x box_cols] box at (col, row, plane) of a 3-D map; completes on bar.
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int col, int row, int plane) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(col), "r"(row), "r"(plane)
      : "memory");
}

// TMA tile store from shared memory (bulk-group completion), and its waits. The writes to the
// source tile must be made visible to the async proxy first (fence_async_smem + a barrier).
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, const void* src, int col,
                                             int row) {
  asm volatile(
      "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(smem_u32(src)), "r"(col), "r"(row)
      : "memory");
}
__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}
// The source tiles of all committed stores have been read (may be overwritten).
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
}
// All committed stores are complete.
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}
__device__ __forceinline__ void fence_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
// A barrier for `threads` threads (a warpgroup: 128) on hardware barrier `id` (1..15).
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row atoms 1024 bytes apart.
// Its high word is the same for every address:
__host__ __device__ constexpr uint32_t smem_desc_hi() {
  return (1024 >> 4)             // stride byte offset: next 8-row atom
         | (uint32_t(1) << 30);  // 128-byte swizzle (bit 62 of the descriptor)
}

// Its low word: the start address in 16-byte units (14 bits; shared memory is below 256 KB,
// so adding an offset inside the allocation never carries out of it) and the leading byte
// offset. Mainloops keep only the low word of each ring's stage 0 and add offsets to it: one
// 32-bit add per wgmma operand instead of rebuilding the descriptor from a pointer.
__device__ __forceinline__ uint32_t desc_lo(const void* p) {
  return ((smem_u32(p) & 0x3FFFF) >> 4)  // start address
         | (uint32_t(1) << 16);          // leading byte offset (unused with 128B swizzle)
}
__device__ __forceinline__ uint64_t desc_of(uint32_t lo) {
  return (uint64_t(smem_desc_hi()) << 32) | lo;
}

// Four 8 x 8 matrices of 16-bit elements from the fragments in r[0..3] (lane l holds row
// l / 4, columns 2 (l % 4) and + 1 of each) to shared memory; lane l gives the address of
// row l % 8 of matrix l / 8 (16 contiguous bytes).
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(addr),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// Offset in a staging tile of element (r, c) for TMA stores of 128-byte-wide boxes: 128-byte
// rows, one box of 128 / kOutBytes columns after another (64 rows, 8 KB each, where c passes
// the first box), 16-byte chunks swizzled with r % 8 as TMA's 128-byte swizzle expects.
template <int kOutBytes>
__device__ __forceinline__ int staged_offset(int r, int c) {
  constexpr int kBoxCols = 128 / kOutBytes;
  const int byte = (c % kBoxCols) * kOutBytes;
  return (c / kBoxCols) * (64 * 128) + r * 128 + ((((byte >> 4) ^ r) & 7) << 4) + (byte & 15);
}

// The same, transposed: lane l's fragment element (row r, column c) of each matrix lands at
// row c, element r, so a thread's column pair goes to two rows (a column-major fragment, as
// a wgmma accumulator of the transposed product holds it, stored row-major).
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(
                   addr),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Pins the registers of an accumulator at this point of the program, so that the compiler
// neither reads them before the wgmma that writes them has been waited for, nor moves writes
// across an issue.
template <int R>
__device__ __forceinline__ void fence_regs(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int R>
__device__ __forceinline__ void fence_regs(int32_t (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

// The buffer of a double-buffered step loop, known at compile time (0 or 1), so that each
// slot's registers stay fixed.
template <int N>
using Slot = std::integral_constant<int, N>;

// Runs nk >= 1 steps of a consumer warpgroup with their wgmmas double-buffered, the scheme of
// the fp32 promotion in both sm_90a kernels. Step i goes to slot i % 2:
//   issue(slot, i) waits for step i's stage, issues its wgmmas into the slot's partial sums
//       (one commit group) and returns the stage;
//   finish(slot, stage) runs once that group is complete: releases the stage and promotes.
// Step i + 1 is issued before step i is finished, so the promotion of one step runs while the
// next one's wgmmas do (wait_group 1). after_first() runs once step 0 is issued: loads go
// there rather than just before an issue, since wgmma.fence waits for loads in flight. The
// loop is peeled so that every path through it has the same wgmma groups in flight (ptxas
// checks, and serializes the wgmmas when unsure).
template <class Issue, class Finish, class AfterFirst>
__device__ __forceinline__ void double_buffered_steps(int nk, Issue&& issue, Finish&& finish,
                                                      AfterFirst&& after_first) {
  int s0 = issue(Slot<0>{}, 0), s1 = 0;
  after_first();
  int i = 0;
  for (; i + 2 < nk; i += 2) {  // step i in flight in slot 0
    s1 = issue(Slot<1>{}, i + 1);
    wgmma_wait<1>();
    finish(Slot<0>{}, s0);
    s0 = issue(Slot<0>{}, i + 2);
    wgmma_wait<1>();
    finish(Slot<1>{}, s1);
  }
  if (i + 1 < nk) {  // two steps left: i (in flight) and i + 1
    s1 = issue(Slot<1>{}, i + 1);
    wgmma_wait<1>();
    finish(Slot<0>{}, s0);
    wgmma_wait<0>();
    finish(Slot<1>{}, s1);
  } else {
    wgmma_wait<0>();
    finish(Slot<0>{}, s0);
  }
}

// Operand lists of the accumulator registers ("+f" for fp32, "+r" for s32) and their
// placeholders, for the wgmma asm statements below.
#define LOWBIT_ACC4(c, d, i) "+" c(d[i]), "+" c(d[i + 1]), "+" c(d[i + 2]), "+" c(d[i + 3])
#define LOWBIT_ACC8(c, d, i) LOWBIT_ACC4(c, d, i), LOWBIT_ACC4(c, d, i + 4)
#define LOWBIT_ACC16(c, d, i) LOWBIT_ACC8(c, d, i), LOWBIT_ACC8(c, d, i + 8)
#define LOWBIT_ACC32(c, d, i) LOWBIT_ACC16(c, d, i), LOWBIT_ACC16(c, d, i + 16)
#define LOWBIT_ACC12(c, d, i) LOWBIT_ACC8(c, d, i), LOWBIT_ACC4(c, d, i + 8)
#define LOWBIT_ACC24(c, d, i) LOWBIT_ACC16(c, d, i), LOWBIT_ACC8(c, d, i + 16)
#define LOWBIT_ACC28(c, d, i) LOWBIT_ACC24(c, d, i), LOWBIT_ACC4(c, d, i + 24)
#define LOWBIT_ACC64(c, d, i) LOWBIT_ACC32(c, d, i), LOWBIT_ACC32(c, d, i + 32)
#define LOWBIT_ACC128(c, d, i) LOWBIT_ACC64(c, d, i), LOWBIT_ACC64(c, d, i + 64)
#define LOWBIT_REGS4 "{%0, %1, %2, %3}"
#define LOWBIT_REGS8 "{%0, %1, %2, %3, %4, %5, %6, %7}"
#define LOWBIT_REGS16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define LOWBIT_REGS12 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11}"
#define LOWBIT_REGS24                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "   \
  "%19, %20, %21, %22, %23}"
#define LOWBIT_REGS28                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "   \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27}"
#define LOWBIT_REGS32                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "   \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define LOWBIT_REGS64                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "   \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "    \
  "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, "     \
  "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define LOWBIT_REGS128                                                                       \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, "        \
  "%18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, "         \
  "%34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, "         \
  "%50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, "         \
  "%66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, "         \
  "%82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, "         \
  "%98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "       \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, "     \
  "%126, %127}"
// The two descriptors and scale-d, the operands after R accumulator registers.
#define LOWBIT_DESCS4 ", %4, %5, %6"
#define LOWBIT_DESCS8 ", %8, %9, %10"
#define LOWBIT_DESCS16 ", %16, %17, %18"
#define LOWBIT_DESCS12 ", %12, %13, %14"
#define LOWBIT_DESCS24 ", %24, %25, %26"
#define LOWBIT_DESCS28 ", %28, %29, %30"
#define LOWBIT_DESCS32 ", %32, %33, %34"
#define LOWBIT_DESCS64 ", %64, %65, %66"
// One wgmma of shape m64n<n>k32 with R accumulator registers: fp8 takes scale-d and the two
// operand scales (1, 1), integer types scale-d only. scale_d = 0 starts from zero.
#define LOWBIT_WGMMA(Op, n, R, d, da, db, kScaleD)                                            \
  do {                                                                                        \
    if constexpr (Op::kInt)                                                                   \
      asm volatile("wgmma.mma_async.sync.aligned.m64n" #n "k32.s32.s8.s8 " LOWBIT_REGS##R   \
                   LOWBIT_DESCS##R ";\n"                                                     \
                   : LOWBIT_ACC##R("r", d, 0)                                                    \
                   : "l"(da), "l"(db), "n"(kScaleD));                                         \
    else                                                                                      \
      asm volatile("wgmma.mma_async.sync.aligned.m64n" #n "k32.f32.e4m3.e4m3 " LOWBIT_REGS##R \
                   LOWBIT_DESCS##R ", 1, 1;\n"                                               \
                   : LOWBIT_ACC##R("f", d, 0)                                                    \
                   : "l"(da), "l"(db), "n"(kScaleD));                                         \
  } while (0)

// d (64 x 128 fragment, 64 registers) (+)= A[64 x 32] * B[128 x 32]^T, both of type Op from
// shared memory.
template <class Op, int kScaleD>
__device__ __forceinline__ void wgmma_m64n128k32(typename Op::Acc (&d)[64], uint64_t da,
                                                 uint64_t db) {
  LOWBIT_WGMMA(Op, 128, 64, d, da, db, kScaleD);
}

// Narrow-n wgmma for the small-M kernels: d (64 x N fragment, N / 2 registers) (+)=
// A[64 x 32] * B[N x 32]^T, both of type Op from shared memory, N in {8, 16, 24, 32, 48, 56,
// 64} (56 for e4m3 only: s8 takes multiples of 16 above 32). Fragment: register 4j + {0, 1}
// holds row w*16 + lane/4, columns 8j + 2(lane%4) + {0, 1} (w: warp of the warpgroup);
// 4j + {2, 3} the same columns of row + 8.
template <class Op, int N, int kScaleD>
__device__ __forceinline__ void wgmma_m64nNk32(typename Op::Acc (&d)[N / 2], uint64_t da,
                                               uint64_t db) {
  static_assert(N == 8 || N == 16 || N == 24 || N == 32 || N == 48 || N == 56 || N == 64,
                "wgmma_m64nNk32: N in 8/16/24/32/48/56/64");
  static_assert(!(Op::kInt && N == 56), "s8 wgmma has no n = 56");
  if constexpr (N == 8) {
    LOWBIT_WGMMA(Op, 8, 4, d, da, db, kScaleD);
  } else if constexpr (N == 16) {
    LOWBIT_WGMMA(Op, 16, 8, d, da, db, kScaleD);
  } else if constexpr (N == 24) {
    LOWBIT_WGMMA(Op, 24, 12, d, da, db, kScaleD);
  } else if constexpr (N == 32) {
    LOWBIT_WGMMA(Op, 32, 16, d, da, db, kScaleD);
  } else if constexpr (N == 48) {
    LOWBIT_WGMMA(Op, 48, 24, d, da, db, kScaleD);
  } else if constexpr (N == 56) {
    LOWBIT_WGMMA(Op, 56, 28, d, da, db, kScaleD);
  } else {
    LOWBIT_WGMMA(Op, 64, 32, d, da, db, kScaleD);
  }
}

// Thread-block clusters: a barrier over every thread of every CTA of the cluster (release /
// acquire, so shared-memory writes before it are visible to the peers' reads after it; the
// non-.aligned form, so threads of a warp may arrive from different branches), and reads
// of a peer CTA's shared memory (distributed shared memory).
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release;\n"
               "barrier.cluster.wait.acquire;" ::: "memory");
}
// The address of the same shared-memory location in the CTA of cluster rank `rank`.
__device__ __forceinline__ uint32_t cluster_map(uint32_t smem_addr, int rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(smem_addr), "r"(rank));
  return r;
}
__device__ __forceinline__ float ld_cluster_f32(uint32_t cluster_addr) {
  float v;
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(cluster_addr) : "memory");
  return v;
}
__device__ __forceinline__ int32_t ld_cluster_s32(uint32_t cluster_addr) {
  int32_t v;
  asm volatile("ld.shared::cluster.s32 %0, [%1];" : "=r"(v) : "r"(cluster_addr) : "memory");
  return v;
}
#endif  // LOWBIT_SM90A

// cuTensorMapEncodeTiled through the runtime's driver entry point, so that lowbit links no
// libcuda (the driver is found at run time, as the static runtime does).
inline PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    cudaDriverEntryPointQueryResult q;
    void* f = nullptr;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  });
  return fn;
}

static_assert(sizeof(CUtensorMap) == 128 && alignof(CUtensorMap) <= 128,
              "TensorMapCache::Slot holds a CUtensorMap in 128 bytes aligned to 128");

// Encodes a tiled map of rank 2 ([rows][cols], rows `stride_bytes` apart, [box_rows]
// [box_cols] boxes) or 3 (`depth` such planes `plane_bytes` apart, boxes `box_depth` planes
// deep), no interleave, no OOB fill (out-of-range reads are zeros); or copies it from `slot`
// when the slot holds the map of the same arguments (see tensor_map_cache.h). A fresh encode
// replaces the slot's map. `slot` may be null. encode_2d and encode_3d below name the rank.
inline bool encode_tiled(CUtensorMap* map, TensorMapCache::Slot* slot, CUtensorMapDataType type,
                         int rank, void* base, uint64_t cols, uint64_t rows, uint64_t depth,
                         uint64_t stride_bytes, uint64_t plane_bytes, uint32_t box_cols,
                         uint32_t box_rows, uint32_t box_depth, CUtensorMapSwizzle swizzle,
                         CUtensorMapL2promotion l2) {
  TensorMapCache::Key key;
  key.base = base;
  key.rank = rank;
  key.cols = cols;
  key.rows = rows;
  key.stride_bytes = stride_bytes;
  key.depth = rank == 3 ? depth : 1;
  key.plane_bytes = rank == 3 ? plane_bytes : 0;
  key.box_cols = box_cols;
  key.box_rows = box_rows;
  key.box_depth = rank == 3 ? box_depth : 1;
  key.type = static_cast<int>(type);
  key.swizzle = static_cast<int>(swizzle);
  key.l2 = static_cast<int>(l2);
  if (slot != nullptr && slot->valid && slot->key == key) {
    *map = *reinterpret_cast<const CUtensorMap*>(slot->map);
    return true;
  }
  auto fn = encode_fn();
  if (!fn) return false;
  cuuint64_t dims[3] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows),
                        static_cast<cuuint64_t>(key.depth)};
  cuuint64_t strides[2] = {static_cast<cuuint64_t>(stride_bytes),
                           static_cast<cuuint64_t>(key.plane_bytes)};
  cuuint32_t box[3] = {box_cols, box_rows, key.box_depth};
  cuuint32_t elem[3] = {1, 1, 1};
  if (fn(map, type, static_cast<cuuint32_t>(rank), base, dims, strides, box, elem,
         CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, l2, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) !=
      CUDA_SUCCESS)
    return false;
  if (slot != nullptr) {
    *reinterpret_cast<CUtensorMap*>(slot->map) = *map;
    slot->key = key;
    slot->valid = true;
  }
  return true;
}

inline bool encode_2d(CUtensorMap* map, TensorMapCache::Slot* slot, CUtensorMapDataType type,
                      void* base, uint64_t cols, uint64_t rows, uint64_t stride_bytes,
                      uint32_t box_cols, uint32_t box_rows, CUtensorMapSwizzle swizzle,
                      CUtensorMapL2promotion l2) {
  return encode_tiled(map, slot, type, 2, base, cols, rows, 1, stride_bytes, 0, box_cols,
                      box_rows, 1, swizzle, l2);
}
// Rank 3 whatever the depth (a 3-D load needs a 3-D map, even over one plane).
inline bool encode_3d(CUtensorMap* map, TensorMapCache::Slot* slot, CUtensorMapDataType type,
                      void* base, uint64_t cols, uint64_t rows, uint64_t depth,
                      uint64_t stride_bytes, uint64_t plane_bytes, uint32_t box_cols,
                      uint32_t box_rows, uint32_t box_depth, CUtensorMapSwizzle swizzle,
                      CUtensorMapL2promotion l2) {
  return encode_tiled(map, slot, type, 3, base, cols, rows, depth, stride_bytes, plane_bytes,
                      box_cols, box_rows, box_depth, swizzle, l2);
}

// A 2-D map over a K-major byte matrix [rows, k] (row stride ld bytes), read in boxes of
// box_rows x 128 bytes with the 128-byte swizzle; out-of-range elements read as zero.
inline bool make_map_k128(CUtensorMap* map, const uint8_t* base, int rows, int k, int64_t ld,
                          int box_rows, TensorMapCache::Slot* slot = nullptr) {
  return encode_2d(map, slot, CU_TENSOR_MAP_DATA_TYPE_UINT8, const_cast<uint8_t*>(base),
                   static_cast<uint64_t>(k), static_cast<uint64_t>(rows),
                   static_cast<uint64_t>(ld), 128, static_cast<uint32_t>(box_rows),
                   CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

// A 2-D map over a K-major matrix of 16-bit elements [rows, k] (row stride ld elements), read
// in boxes of box_rows x 128 elements without swizzle (row r of a box at r * 256 bytes);
// out-of-range elements read as zero. Needs a 16-byte-aligned base and row stride.
inline bool make_map_k128_u16(CUtensorMap* map, const void* base, int rows, int k, int64_t ld,
                              int box_rows, TensorMapCache::Slot* slot = nullptr) {
  return encode_2d(map, slot, CU_TENSOR_MAP_DATA_TYPE_UINT16, const_cast<void*>(base),
                   static_cast<uint64_t>(k), static_cast<uint64_t>(rows),
                   static_cast<uint64_t>(ld * 2), 128, static_cast<uint32_t>(box_rows),
                   CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

// A 2-D map over a row-major output [rows, cols] of elem_bytes-wide elements (row stride ld
// elements), written in boxes of box_rows x 128 bytes with the 128-byte swizzle; stores past
// the edges are clipped. Needs a 16-byte-aligned base and row stride.
inline bool make_map_out(CUtensorMap* map, void* base, CUtensorMapDataType type, int elem_bytes,
                         int rows, int cols, int64_t ld, int box_rows,
                         TensorMapCache::Slot* slot = nullptr) {
  return encode_2d(map, slot, type, base, static_cast<uint64_t>(cols),
                   static_cast<uint64_t>(rows), static_cast<uint64_t>(ld * elem_bytes),
                   static_cast<uint32_t>(128 / elem_bytes), static_cast<uint32_t>(box_rows),
                   CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE);
}

// A map over a block-scale matrix [rows, cols] fp32 (row stride ld), read in boxes of
// box_rows x 4 (four steps); false when TMA cannot address it (base or stride not a multiple
// of 16 bytes).
inline bool make_map_scales(CUtensorMap* map, const float* base, int rows, int cols, int64_t ld,
                            int box_rows, TensorMapCache::Slot* slot = nullptr) {
  if (reinterpret_cast<uintptr_t>(base) % 16 || (ld * 4) % 16) return false;
  return encode_2d(map, slot, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, const_cast<float*>(base),
                   static_cast<uint64_t>(cols), static_cast<uint64_t>(rows),
                   static_cast<uint64_t>(ld * 4), 4, static_cast<uint32_t>(box_rows),
                   CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_NONE);
}

}  // namespace sm90
}  // namespace lowbit
