// The mixed-input GEMM (W4A16 / W8A16) on mma.sync m16n8k16, bf16 or fp16 with fp32
// accumulation: kernel templates over both weight bit widths for two regimes, decode (M <= 64:
// 128 rows x 8 or 16 tokens per CTA, weights streamed into registers, K split over CTAs) and
// tiled (128 rows x 64 tokens per CTA, weights through registers). Runs on every arch from
// sm_80.
//
// Operands. The weight is the mma's A operand (16 output channels per mma, the row-major
// layout of nn.Linear.weight) and the activations its B operand (8 tokens per mma):
// weight-stationary, so at decode the kernel is a stream of the weight. Tiled: warp w of a CTA
// owns WN 16-row tiles of the weight and all warps share one activation tile. Decode: warp w
// owns row tile w of the CTA's 8, over the CTA's whole share of K.
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
// Loads, decode. At small M the kernel is a stream of the weight, bound by instruction issue
// (bench/NOTES.md), so every instruction per weight byte counts. Each lane loads its own
// 16-byte fragment of every chunk straight into a register ring one stage (512 K of int4,
// 256 K of int8) ahead; activations, scales and zero points, which the CTA's 8 warps share,
// go through shared memory once per stage (cp.async for x, zero-filled past M, K and the
// split's end; scales and zero points by plain loads a stage early, since cp.async cannot
// copy a 2-byte scale). One barrier per stage: 4 KB of weight per warp.
//
// Loads, tiled. Weights go global -> registers with 16-byte loads that bypass L1 (read
// once), prefetched kPf chunks ahead: each weight fragment is used by exactly one warp.
// Activations, which every warp reuses, go through a 4-stage cp.async ring (zero-filled past
// M and K), rows padded to 72 elements so the 16-byte fragment reads are conflict-free.
//
// Dequantization, in registers, a few integer ops per pair: int4 `(w >> 4 i) & 0x000f000f`
// OR the exponent of 128 (bf16, 0x4300) or 1024 (fp16, 0x6400) is the pair 128 + u / 1024 + u
// exactly (one lop3 with the mask and the magic in registers); subtracting (128 + z) (hsub2,
// exact) gives u - z. In fp16 the odd nibbles skip their shift: 1024 + 16 u is exact there,
// and one hfma2 (times 1/16, minus 64 + z) dequantizes it. int8 fp16: byte permute into
// 0x64xx (1024 + (q + 128)), minus 1152; int8 bf16 (8 significant bits do not fit a bf16
// magic): byte permute into 0x43xx, then the low 7 bits (128 + (q & 127)) minus bit 7 alone
// (128 or 256): two ands and an hsub2, where a route through fp32 takes two subtractions and
// a conversion per pair. All exact: the tensor cores see the integer weights (u - z or q),
// never a rounded product.
//
// Scales: accumulated per group in fp32, scaled after. Each chunk is summed from zero in the
// tensor core and added to the fp32 accumulator times the chunk's per-row scale (fp32 FMA),
// rather than multiplying the weights by the scale in x's dtype before the mma: the weight
// then never rounds to bf16 (the scale stays fp32, fp32 scales are not narrowed), and the
// cost is 4 FMAs per mma tile per chunk instead of an hmul2 per weight pair. A chunk lies in
// one group for G = 64 and 128 (and per channel); for G = 32 its lanes t < 2 and t >= 2 hold
// different groups, and the chunk is summed twice with the other half's activations zeroed
// (twice the mma work for G = 32 only). (The int4 dequantize-then-GEMM path for M > 16,
// int4_dequant_kernel, does round (u - z) * scale to x's dtype: a dense GEMM needs it.)
//
// Split-K (deterministic). With too few tiles to fill whole waves, CTAs split K
// (blockIdx.y); each writes its fp32 partial to the workspace, and the last CTA of a tile to
// arrive (a counter per tile) adds all partials in split order, so the sum does not depend on
// which CTA finished last. It resets the counter, so the caller zeroes the counters once
// rather than before every launch (no memset launch on the decode path).
//
// K parts, decode at M <= 8 / P (WXA16GemmArgs::parts = P of 2, 4, 8): instead of splitting K
// over CTAs, the CTA's 8 warps are 8 / P row tiles x P parts of K (part kp takes stages kp,
// kp + P, ...), a stage's 8 activation rows hold P parts x 8 / P tokens, and the parts' sums
// meet in shared memory at the end: no workspace, counters or L2 round trips. The plan takes
// it at M <= 2 where 128 / P-row CTAs fill the SMs one and a half to two deep in one wave
// (bench/NOTES.md, "K parts").
//
// Tokens, decode. A CTA takes 8 (M <= 8) or 16 tokens; above 16 the token tiles of one row
// tile are neighbours in blockIdx.x, so the CTAs that stream the same weight rows run
// together and all but the first read them from L2. Every token tile dequantizes the weight
// again: at M = 17-64 this beats larger token tiles, which spill at two CTAs per SM or halve
// the warps at one (bench/NOTES.md, "Decode to M = 64").
//
// Tokens, wide (the same kernel with kWide, M <= 128). What spilled there was chunk_mma's
// per-group partial sums, one set per token tile beside the accumulators. The wide kernel
// takes 64 tokens per CTA, dequantizes a chunk's four k-steps once, and runs the token tiles
// one after another over them (chunk_mma_tokens), so one token tile's partial sum is live at
// a time; the weight is still never rounded. Its stages are half as long (2 KB of weight per
// warp) and its activations double- rather than triple-buffered, so that 64 tokens' stages
// fit every arch's shared memory; one CTA per SM.
//
// Epilogue: + bias in fp32, rounded once to x's dtype.
//
// Launch (decode and wide, sm_90 code): a programmatic dependent launch while
// programmatic_launch() is on, so the CTAs are placed while the kernel before them ends; they
// wait for it (griddepcontrol.wait) before any global access, the weight's included, and let
// the next kernel start its setup once their mainloop is done (beside the split's gather).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "common/epilogue.cuh"
#include "common/gemm_mma.cuh"
#include "common/gemm_smallm.cuh"
#include "common/launch.h"
#include "common/mma_sync.cuh"
#include "common/pdl.cuh"
#include "common/smem.cuh"
#include "wxa16/wxa16_gemm.h"
#ifdef LOWBIT_WXA16_DECODE_TRACE
#include "common/sm90.cuh"  // globaltimer_ns, the trace's clock (any arch)
#endif


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
  // 128 + 16 u needs 8 significant bits, one more than bf16 has: every nibble is shifted
  // down to the low bits instead.
  static constexpr bool kHiTrick = false;
  static constexpr uint32_t kSixteenth = 0;
  static constexpr float kHiBase = 0.f;
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[4],
                                             uint32_t b0, uint32_t b1) {
    mma_bf16_k16(c, a[0], a[1], a[2], a[3], b0, b1);
  }
  __device__ __forceinline__ static uint32_t sub(uint32_t a, uint32_t b) {
    __nv_bfloat162 r = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&a),
                               *reinterpret_cast<__nv_bfloat162*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  // The int8 codes as int8_pair takes them: as stored (two's complement).
  __device__ __forceinline__ static uint32_t int8_word(uint32_t w) { return w; }
  // Bytes lo, lo + 1 of `w` (int8 codes q) -> bf16 pair q, exactly, in four instructions.
  // One byte permute gives [q_lo, 0x43, q_lo+1, 0x43]; with bit 7 of each code cleared that
  // is the bf16 128 + (q & 127), with only bit 7 kept it is 128 (bit 7 clear) or 256 (set: it
  // lands in the exponent's low bit). Their difference, (q & 127) - 128 * bit 7, is q: small
  // integers all, so the subtraction is exact.
  // (The constant goes first: with the codes first, ptxas kept the constant as the
  // permute's immediate and copied the selector into a register before every permute, one
  // instruction per pair; the same holds for fp16.)
  template <int kLo>
  __device__ __forceinline__ static uint32_t int8_pair(uint32_t w) {
    const uint32_t p = __byte_perm(0x43434343u, w, 0x0504 + kLo * 0x0101);
    return sub(p & 0xFF7FFF7Fu, p & 0xFF80FF80u);
  }
};

template <>
struct Half<__half> {
  static constexpr uint32_t kMagic = 0x64006400u;      // fp16 1024 | 1024
  static constexpr bool kHiTrick = true;               // 1024 + 16 u is exact in fp16
  static constexpr uint32_t kSixteenth = 0x2C002C00u;  // fp16 1/16 | 1/16
  static constexpr float kHiBase = 64.f;               // 1024 / 16
  __device__ __forceinline__ static uint32_t pair(float v) {
    __half2 r = __floats2half2_rn(v, v);
    return *reinterpret_cast<uint32_t*>(&r);
  }
  __device__ __forceinline__ static uint32_t fma(uint32_t a, uint32_t b, uint32_t c) {
    __half2 r = __hfma2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b),
                        *reinterpret_cast<__half2*>(&c));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[4],
                                             uint32_t b0, uint32_t b1) {
    mma_f16_k16(c, a[0], a[1], a[2], a[3], b0, b1);
  }
  __device__ __forceinline__ static uint32_t sub(uint32_t a, uint32_t b) {
    __half2 r = __hsub2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  // The int8 codes as int8_pair takes them: xor 0x80, i.e. q + 128 (unsigned).
  __device__ __forceinline__ static uint32_t int8_word(uint32_t w) { return w ^ 0x80808080u; }
  template <int kLo>
  __device__ __forceinline__ static uint32_t int8_pair(uint32_t wx) {
    // [byte lo, 0x64, byte lo + 1, 0x64] = 1024 + (q + 128) per half; minus 1152 = q.
    const uint32_t h = __byte_perm(0x64646464u, wx, 0x0504 + kLo * 0x0101);
    return sub(h, 0x64806480u);
  }
};

__device__ __forceinline__ float load_scale(const void* p, FloatType d, int64_t i) {
  return load_bias(p, d, i);  // the same three dtypes, read the same way
}

// A scale's bits (2- or 4-byte dtypes), loaded without converting, so that the conversion
// (to_float) can wait until the load has landed.
__device__ __forceinline__ uint32_t load_scale_bits(const void* p, bool f32, int64_t i) {
  return f32 ? static_cast<const uint32_t*>(p)[i] : static_cast<const uint16_t*>(p)[i];
}
__device__ __forceinline__ float scale_bits_to_float(uint32_t b, FloatType d) {
  return d == FloatType::kF32    ? __uint_as_float(b)
         : d == FloatType::kBF16 ? __uint_as_float(b << 16)
                                 : __half2float(__ushort_as_half(static_cast<uint16_t>(b)));
}

__device__ __forceinline__ uint32_t word(const uint4& v, int s) {
  return s == 0 ? v.x : s == 1 ? v.y : s == 2 ? v.z : v.w;
}

// (a & b) | c in one instruction (the compiler splits it in two when b and c are both
// immediates).
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  return r;
}

// The zero-point pairs an int4 fragment subtracts: row g's nibbles are dequantized from
// 128 + u (bf16; 1024 + u in fp16) by subtracting (128 + z). In fp16, row g + 8's nibbles
// are left in place, 1024 + 16 u, and dequantized by one hfma2: times 1/16, plus -(64 + z),
// which saves the shift. Exact: every value is a small integer.
template <typename T>
__device__ __forceinline__ uint32_t int4_zero_lo(uint32_t z) {
  return Half<T>::kMagic | (z * 0x00010001u);
}
template <typename T>
__device__ __forceinline__ uint32_t int4_zero_hi(uint32_t z) {
  if constexpr (Half<T>::kHiTrick)
    return Half<T>::pair(-(Half<T>::kHiBase + static_cast<float>(z)));
  else
    return int4_zero_lo<T>(z);
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    __nv_bfloat162 r = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&r);
  } else {
    __half2 r = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&r);
  }
}

// The A fragment of k-step s of one 16-row tile, dequantized. int4: v holds the lane's
// prepacked nibbles (word s: nibbles i and i + 4 are a[i]'s pair), z the zero pairs of row g
// (int4_zero_lo) and row g + 8 (int4_zero_hi); 9 (fp16) or 11 (bf16) instructions for 4
// registers. int8: vg and vg8 the lane's 16 bytes of rows g and g + 8.
template <typename T>
__device__ __forceinline__ void int4_fragment(const uint4& v, int s, const uint32_t (&z)[2],
                                              uint32_t (&a)[4]) {
  constexpr uint32_t kLo = 0x000f000fu, kMagic = Half<T>::kMagic;
  const uint32_t q = word(v, s), q8 = q >> 8;
  if constexpr (Half<T>::kHiTrick) {
    a[0] = Half<T>::sub(and_or(q, kLo, kMagic), z[0]);
    a[1] = Half<T>::fma(and_or(q, kLo << 4, kMagic), Half<T>::kSixteenth, z[1]);
    a[2] = Half<T>::sub(and_or(q8, kLo, kMagic), z[0]);
    a[3] = Half<T>::fma(and_or(q8, kLo << 4, kMagic), Half<T>::kSixteenth, z[1]);
  } else {
    a[0] = Half<T>::sub(and_or(q, kLo, kMagic), z[0]);
    a[1] = Half<T>::sub(and_or(q >> 4, kLo, kMagic), z[1]);
    a[2] = Half<T>::sub(and_or(q8, kLo, kMagic), z[0]);
    a[3] = Half<T>::sub(and_or(q >> 12, kLo, kMagic), z[1]);
  }
}

template <typename T>
__device__ __forceinline__ void int8_fragment(const uint4& vg, const uint4& vg8, int s,
                                              uint32_t (&a)[4]) {
  const uint32_t qg = Half<T>::int8_word(word(vg, s)), qg8 = Half<T>::int8_word(word(vg8, s));
  // Row g's pairs, then row g + 8's: in this order the decode kernel fits 128 registers on
  // sm_90a without a stack frame (bench/NOTES.md, "W8A16 bf16: four instructions").
  a[0] = Half<T>::template int8_pair<0>(qg);
  a[2] = Half<T>::template int8_pair<2>(qg);
  a[1] = Half<T>::template int8_pair<0>(qg8);
  a[3] = Half<T>::template int8_pair<2>(qg8);
}

// Decode phase trace (built only with -DLOWBIT_WXA16_DECODE_TRACE, by bench/wxa16_ab.cu): per
// CTA (index blockIdx.y * gridDim.x + blockIdx.x, the first kCtas), thread 0's %globaltimer
// stamps of its start, the arrival of warp 0's first weight chunk, the first stage's
// activations and scales in shared memory (after the first barrier), the end of warp 0's
// mainloop, the K split's counter taken (after the CTA's partials were stored), and the CTA's
// end; kLast is 1 in the CTA that gathered the split. It says where a small weight's
// microseconds go, which ncu's per-kernel view does not split.
namespace dtrace {
enum Slot { kStart, kWeight0, kStage0, kMainEnd, kArrive, kEnd, kLast, kSlots };
constexpr int kCtas = 4096;
#ifdef LOWBIT_WXA16_DECODE_TRACE
__device__ unsigned long long stamps[kCtas][kSlots];
// The time once `v` has landed: the clock read is predicated on a test of v, so it cannot
// issue before v's load completes.
__device__ __forceinline__ unsigned long long now_after(uint32_t v) {
  unsigned long long t;
  asm volatile(
      "{ .reg .pred p; setp.ne.u32 p, %1, 0x1234567; @p mov.u64 %0, %%globaltimer; "
      "@!p mov.u64 %0, %%globaltimer; }"
      : "=l"(t)
      : "r"(v));
  return t;
}
__device__ __forceinline__ void put(Slot s, unsigned long long v) {
  const unsigned cta = blockIdx.y * gridDim.x + blockIdx.x;
  if (threadIdx.x == 0 && cta < kCtas) stamps[cta][s] = v;
}
#endif
}  // namespace dtrace
#ifdef LOWBIT_WXA16_DECODE_TRACE
#define WXA16_DTRACE_NOW(slot) dtrace::put(dtrace::slot, sm90::globaltimer_ns())
#define WXA16_DTRACE_PUT(slot, v) dtrace::put(dtrace::slot, (v))
#else
#define WXA16_DTRACE_NOW(slot) (void)0
#define WXA16_DTRACE_PUT(slot, v) (void)0
#endif

// Split-K across CTAs, called by every thread of the CTA: the kParts threads with `part` set
// (index `pi`) hold kAcc fp32 accumulators each. They write them to this split's slot of the
// workspace; the last CTA of the tile to arrive reloads every split's slot in split order
// into `acc` and returns true, the others return false. The counter is reset for the next
// launch. A slot holds float4 i of every thread, then float4 i + 1: a warp's stores and
// loads are 512 contiguous bytes each (thread-major, each lane's 16 bytes fell in a line of
// its own: eight times the L2 transactions, all CTAs at once).
// `tile` indexes the workspace's slots and counters, `split` is this CTA's part of K, of
// `splits` (p.splits, or 1 for a CTA that needs no gather).
template <int kAcc, int kParts>
__device__ __forceinline__ bool gather_splits(const WXA16GemmArgs& p, float (&acc)[kAcc],
                                              bool part, int pi, bool& last_cta, int64_t tile,
                                              int split) {
  unsigned* counters = p.counters;
  float* partials = static_cast<float*>(p.partials);
  auto slot = [&](int sp) {
    return reinterpret_cast<float4*>(partials + (tile * p.splits + sp) * kParts * kAcc) + pi;
  };
  static_assert(kAcc % 4 == 0, "partials move as float4");
  if (part) {
    float4* mine = slot(split);
#pragma unroll
    for (int i = 0; i < kAcc / 4; ++i)
      __stcg(mine + i * kParts,
             make_float4(acc[4 * i], acc[4 * i + 1], acc[4 * i + 2], acc[4 * i + 3]));
  }
  // The CTA's stores, then one acquire-release increment by thread 0: the barrier orders
  // the other threads' stores before it, and a release is cumulative, so they are visible to
  // whichever CTA acquires the last count; that CTA's barrier then orders its threads' loads
  // after the acquire. (A sequentially consistent fence each side, __threadfence, cost
  // about a microsecond more per small tile: bench/NOTES.md.)
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned prev;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                 : "=r"(prev)
                 : "l"(counters + tile)
                 : "memory");
    last_cta = prev == static_cast<unsigned>(p.splits - 1);
    WXA16_DTRACE_PUT(kArrive, dtrace::now_after(prev));
    WXA16_DTRACE_PUT(kLast, last_cta ? 1 : 0);
    if (last_cta) counters[tile] = 0;  // ready for the next launch
  }
  __syncthreads();
  if (!last_cta) return false;
  if (part) {
#pragma unroll
    for (int i = 0; i < kAcc; ++i) acc[i] = 0.f;
    // The slots' loads go out kBatch splits at a time (about 32 registers of them) before
    // the sums that wait on them, so a small tile's gather pays an L2 round trip per batch,
    // not per split; the sums keep split order.
    constexpr int kBatch = kAcc >= 32 ? 1 : 32 / kAcc;
    for (int sp0 = 0; sp0 < p.splits; sp0 += kBatch) {
      float4 v[kBatch][kAcc / 4];
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
#pragma unroll
        for (int i = 0; i < kAcc / 4; ++i)
          v[b][i] = sp0 + b < p.splits ? __ldcg(slot(sp0 + b) + i * kParts)
                                       : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (sp0 + b >= p.splits) break;
#pragma unroll
        for (int i = 0; i < kAcc / 4; ++i) {
          acc[4 * i] += v[b][i].x;
          acc[4 * i + 1] += v[b][i].y;
          acc[4 * i + 2] += v[b][i].z;
          acc[4 * i + 3] += v[b][i].w;
        }
      }
    }
  }
  return true;
}

// gather_splits of the grid's own split: K along blockIdx.y, tiles along x and z.
template <int kAcc, int kParts>
__device__ __forceinline__ bool gather_splits(const WXA16GemmArgs& p, float (&acc)[kAcc],
                                              bool part, int pi, bool& last_cta) {
  return gather_splits<kAcc, kParts>(p, acc, part, pi, last_cta,
                                     static_cast<int64_t>(blockIdx.z) * gridDim.x + blockIdx.x,
                                     static_cast<int>(blockIdx.y));
}

// out[m, n] = acc + bias for one warp's WN x MT accumulator tiles. Fragment (i) -> (n, m):
// c0, c1 at row g, c2, c3 at row g + 8; tokens 2t, 2t + 1.
template <int WN, int MT>
__device__ __forceinline__ void store_tiles(const WXA16GemmArgs& p, const float (&acc)[WN][MT][4],
                                            int rt0, int m0, int g, int t) {
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

// One 64-K chunk of WN 16-row tiles into acc, for both kernels: per G = 32 half h (one pass
// otherwise) the chunk is summed in the tensor core into `part` and added to acc times the
// rows' scales. `begin`: the sum starts from zero here; `end`: it is added to acc here (a
// group of 128 spans two chunks: the first begins it, the second ends it; G <= 64 and the
// tiled kernel do both per chunk, and G = 32 in each half). `x` is the lane's B fragment of
// token tile 0 at the chunk's start (token g, k = 16 t), `x_row` elements per token;
// frag(w, s, a) dequantizes k-step s of row tile w; scale(w, h, r) is the scale of half h's
// group for row g (r = 0) or g + 8 (r = 1).
template <typename T, int WN, int MT, typename Frag, typename Scale>
__device__ __forceinline__ void chunk_mma(float (&acc)[WN][MT][4], float (&part)[WN][MT][4],
                                          const T* x, int x_row, bool two, int t, bool begin,
                                          bool end, Frag frag, Scale scale) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (h == 1 && !two) break;
    // G = 32: pass h keeps the k of the lanes whose group is 2 c + h.
    const bool keep = !two || (t >> 1) == h;
    if (begin) {
#pragma unroll
      for (int w = 0; w < WN; ++w)
#pragma unroll
        for (int j = 0; j < MT; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i) part[w][j][i] = 0.f;
    }
#pragma unroll
    for (int sp = 0; sp < 2; ++sp) {
      uint4 xv[MT];
#pragma unroll
      for (int j = 0; j < MT; ++j)
        xv[j] = keep ? *reinterpret_cast<const uint4*>(x + 8 * j * x_row + 8 * sp)
                     : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int ss = 0; ss < 2; ++ss) {
#pragma unroll
        for (int w = 0; w < WN; ++w) {
          uint32_t a[4];
          frag(w, 2 * sp + ss, a);
#pragma unroll
          for (int j = 0; j < MT; ++j)
            Half<T>::mma(part[w][j], a, ss ? xv[j].z : xv[j].x, ss ? xv[j].w : xv[j].y);
        }
      }
    }
    if (end) {
#pragma unroll
      for (int w = 0; w < WN; ++w) {
        const float s0 = scale(w, h, 0), s1 = scale(w, h, 1);
#pragma unroll
        for (int j = 0; j < MT; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i)
            acc[w][j][i] = fmaf(part[w][j][i], i < 2 ? s0 : s1, acc[w][j][i]);
      }
    }
  }
}

// The wide kernel's chunk: one 16-row tile against MT token tiles, with the tile's four
// k-steps already dequantized in `a`. Token tiles go outermost: each is summed from zero over
// the chunk's k-steps (a chain of 4 mmas, MT chains independent of each other) and added to
// acc times the rows' scales before the next, so one token tile's partial sum is live at a
// time, not MT of them: the registers that chunk_mma would spend on them hold the 64 tokens'
// accumulators instead. Same per-chunk scaling as chunk_mma (the weight is never rounded);
// G = 32 takes two passes with the other half's activations zeroed, as there. x, x_row, two,
// t and scale(h, r) as in chunk_mma.
template <typename T, int MT, typename Scale>
__device__ __forceinline__ void chunk_mma_tokens(float (&acc)[MT][4], const uint32_t (&a)[4][4],
                                                 const T* x, int x_row, bool two, int t,
                                                 Scale scale) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (h == 1 && !two) break;
    const bool keep = !two || (t >> 1) == h;
    const float s0 = scale(h, 0), s1 = scale(h, 1);
#pragma unroll
    for (int j = 0; j < MT; ++j) {
      float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int sp = 0; sp < 2; ++sp) {
        const uint4 xv = keep ? *reinterpret_cast<const uint4*>(x + 8 * j * x_row + 8 * sp)
                              : make_uint4(0, 0, 0, 0);
        Half<T>::mma(part, a[2 * sp], xv.x, xv.y);
        Half<T>::mma(part, a[2 * sp + 1], xv.z, xv.w);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[j][i] = fmaf(part[i], i < 2 ? s0 : s1, acc[j][i]);
    }
  }
}

// One warp's weights and scales of one chunk. v: int4: the lane's 4 fragment words of each
// row tile; int8: 16 bytes of row g ([0]) and of row g + 8 ([1]). s[w][h][r]: the scale of
// group half h (G = 32) for row g (r = 0) or g + 8 (r = 1). z[w][r]: int4 only, the
// zero-point pairs of the lane's own group, int4_zero_lo (row g) and int4_zero_hi (row g + 8).
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
          b.z[w][r] = r == 0 ? int4_zero_lo<T>(z) : int4_zero_hi<T>(z);
        } else {
          b.z[w][r] = 0;
        }
      }
    }
  };

  // The A fragment of k-step s of row tile w.
  auto fragment = [&](const Chunk<Bits, WN>& b, int w, int s, uint32_t (&a)[4]) {
    if constexpr (Bits == 4)
      int4_fragment<T>(b.v[w][0], s, b.z[w], a);
    else
      int8_fragment<T>(b.v[w][0], b.v[w][1], s, a);
  };

  float acc[WN][MT][4];
#pragma unroll
  for (int w = 0; w < WN; ++w)
#pragma unroll
    for (int j = 0; j < MT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[w][j][i] = 0.f;

  auto compute = [&](const Chunk<Bits, WN>& b, int stage) {
    float part[WN][MT][4];
    chunk_mma<T, WN, MT>(
        acc, part, &xs[stage][g][16 * t], kXRow, two, t, true, true,
        [&](int w, int s, uint32_t (&a)[4]) { fragment(b, w, s, a); },
        [&](int w, int h, int r) { return b.s[w][h][r]; });
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

  if (p.splits > 1 &&
      !gather_splits<kAcc, kThreads>(p, reinterpret_cast<float(&)[kAcc]>(acc), true,
                                     threadIdx.x, last_cta))
    return;
  store_tiles<WN, MT>(p, acc, rt0, m0, g, t);
}

// The decode kernel's shape, per weight bit width and G = 32 flag: 8 warps per CTA, one
// 16-row tile each (128 rows), and a stage of 512 K (int4) or 256 K (int8): 4 KB of weight
// per warp between two barriers.
//
// The kernel is issue-bound, not bound by bytes in flight, so the design counts instructions
// per byte of weight. Weights go global -> registers: the prepacked int4 layout is already
// in fragment order (lane i's 16 bytes are its A fragment of a chunk), so a copy through
// shared memory would only add a store, a load and the addresses of both. Each warp holds
// one stage of its weight in a register ring and refills a chunk's registers with the next
// stage's chunk as soon as it is dequantized, so a stage (4 KB per warp) stays in flight.
// Activations, scales and zero points, which all 8 warps share, go through shared memory
// once per stage, so the copies' and gathers' address work is spread over 8 chunks (int4).
template <int Bits, int kG, bool kWide = false>
struct Decode {
  static constexpr int kWarps = 8;
  static constexpr int kThreads = 32 * kWarps;
  // Registers capped at 128 for two CTAs per SM: uncapped, one CTA fits and the kernel is
  // slower; a cap for three CTAs spills (bench/NOTES.md, "third kernel"). The wide kernel
  // keeps local memory in its loop at 128 registers (64 tokens' accumulators and a dequantized
  // chunk): one CTA per SM, 204-254 registers and none, whose warps each run 8 independent mma
  // chains (one per token tile) where decode's run 1 or 2.
  static constexpr int kMinCtas = kWide ? 1 : 2;
  static constexpr int kRows = 16 * kWarps;
  // 64-K chunks per stage. The wide kernel (64 tokens) halves the stage, 2 KB of weight per
  // warp, so that two activation stages of 64 tokens fit the shared memory of every arch
  // (75 KB at int4 G = 64; sm_89 has 99 KB).
  static constexpr int kChunks = (Bits == 4 ? 8 : 4) / (kWide ? 2 : 1);
  static constexpr int kStageK = kChunks * kChunkK;
  static constexpr int kWVec = Bits == 4 ? 1 : 2;  // 16-byte weight vectors per lane per chunk
  // Activation ring: three stages, or two for the wide kernel, whose stage of 64 tokens
  // takes as long to compute as the next one's copy.
  static constexpr int kXStages = kWide ? 2 : 3;
  static constexpr int kXRowE = kStageK + 8;       // padded x row (elements): conflict-free
  static constexpr int kGroups = kStageK / kG;     // groups a stage spans
  static constexpr int kMeta = kGroups * kRows;    // scale (and zero) entries per stage
  // Gathered per thread (some threads gather none when a stage spans one group of 128 rows).
  static constexpr int kMetaPer = (kMeta + kThreads - 1) / kThreads;
  static_assert(kMeta % kThreads == 0 || kMeta < kThreads, "scales split evenly over the threads");
  template <int MT>
  static constexpr int x_stage_bytes() { return 8 * MT * kXRowE * 2; }
  template <int MT>
  static constexpr int smem_bytes() { return kXStages * x_stage_bytes<MT>() + 2 * kMeta * 8; }
};

// kG: the group size, 32, 64 or 128; a weight with one scale per row runs as G = 128 whose
// groups all read the row's scale. kZeros: int4 with zero points (else every zero is 8).
// kWide: the wide kernel (MT = 8, 64 tokens per CTA): half-size stages, two activation
// stages, and each chunk dequantized once for all 64 tokens (chunk_mma_tokens).
template <int Bits, typename T, int MT, int kG, bool kZeros, bool kWide>
__global__ void __launch_bounds__(Decode<Bits, kG, kWide>::kThreads,
                                  Decode<Bits, kG, kWide>::kMinCtas)
wxa16_decode_kernel(const WXA16GemmArgs p) {
  using D = Decode<Bits, kG, kWide>;
  constexpr int kChunks = D::kChunks, kThreads = D::kThreads, kRows = D::kRows;
  constexpr int kTok = 8 * MT, kXRowE = D::kXRowE, kW = D::kWVec;
  constexpr int kXStage = kTok * kXRowE;  // elements
  // Bytes between a lane's vectors of consecutive chunks.
  constexpr int kWStep = Bits == 4 ? kTileBytes4 : kChunkK;
  extern __shared__ __align__(16) uint8_t smem[];
  T* xsm = reinterpret_cast<T*>(smem);  // [x stage][token][kXRowE]
  float* ssm = reinterpret_cast<float*>(smem + D::kXStages * kXStage * 2);  // [2][q][row]
  uint32_t* zsm = reinterpret_cast<uint32_t*>(ssm + 2 * D::kMeta);        // [2][q][row]
  __shared__ bool last_cta;
  WXA16_DTRACE_NOW(kStart);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int nk = (p.K + kChunkK - 1) / kChunkK;
  const int ns_all = (nk + kChunks - 1) / kChunks;
  const int s_begin = static_cast<int>(static_cast<int64_t>(ns_all) * blockIdx.y / p.splits);
  const int s_end = static_cast<int>(static_cast<int64_t>(ns_all) * (blockIdx.y + 1) / p.splits);
  const int ns = s_end - s_begin;
  // K parts (WXA16GemmArgs::parts, P): warp w takes row tile w % R of the CTA's R = 8 / P and
  // stages kp, kp + P, kp + 2 P, ... of the split (kp = w / R); a step of the loop is then P
  // stages, one per part, whose activations fill the stage's 8 rows of x as P parts x
  // 8 / P tokens. P = 1 is the plain kernel.
  // (Compiled out of the 16-token and wide kernels, whose registers are all taken.)
  constexpr bool kCanPart = !kWide && MT == 1;
  const int P = kCanPart && p.parts > 1 ? p.parts : 1;
  const int R = kCanPart ? D::kWarps / P : D::kWarps;  // row tiles
  const int TR = kCanPart ? kTok / P : kTok;           // tokens per part
  const int kp = kCanPart ? warp / R : 0;
  const int steps = kCanPart ? (ns + P - 1) / P : ns;
  // blockIdx.x: row tile bx, token tile bz (token tiles of a row tile adjacent).
  const int token_tiles = (p.M + kTok - 1) / kTok;
  const int bx = static_cast<int>(blockIdx.x) / token_tiles;
  const int bz = static_cast<int>(blockIdx.x) % token_tiles;
  const int rt = kCanPart ? bx * R + warp % R : bx * D::kWarps + warp;  // this warp's 16-row tile
  const int m0 = bz * kTok;
  constexpr bool two = kG == 32;  // a chunk holds two groups
  constexpr int gsh = kG == 32 ? 5 : kG == 64 ? 6 : 7;  // group of k: k >> gsh
  // One scale per row: every group of the row reads entry 0 (stride 0).
  const bool per_row = p.group == 0;
  const int ngroups = p.K / kG;

  // The lane's weight: int4, its 16 bytes of each chunk of row tile rt (chunks contiguous);
  // int8, 16 bytes of rows g and g + 8 at k = 16 t of each chunk. w_next points at the
  // lane's vectors of the next stage to load; rows past the weight load nothing.
  const uint8_t* w_next[kW];
  bool wok[kW];
  if constexpr (Bits == 4) {
    wok[0] = rt < (p.N + 15) / 16;
    const int64_t chunk0 = static_cast<int64_t>(wok[0] ? rt : 0) * nk +
                           static_cast<int64_t>(s_begin + kp) * kChunks;  // the part's first
    w_next[0] = static_cast<const uint8_t*>(p.w) + (chunk0 * 32 + lane) * 16;
  } else {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int n = rt * 16 + g + 8 * r;
      wok[r] = n < p.N;
      w_next[r] = static_cast<const uint8_t*>(p.w) + static_cast<int64_t>(wok[r] ? n : 0) * p.ldw +
                  static_cast<int64_t>(s_begin + kp) * D::kStageK + 16 * t;
    }
  }
  uint4 ring[kChunks][kW];
  const uint4 zero4 = make_uint4(0, 0, 0, 0);
  // Chunk j of stage st loads when j < lim (int4: the chunks the layout holds; int8: the
  // lane's k inside K, counted in 64-K steps as j * 64 < lim); 0 past the split.
  auto stage_limit = [&](int st) {
    st = st * P + kp;  // the warp's stage of step st
    if (st >= ns) return 0;
    const int c0 = (s_begin + st) * kChunks;
    return Bits == 4 ? nk - c0 : p.K - c0 * kChunkK - 16 * t;
  };
  auto load_chunk = [&](int j, int lim, uint4 (&v)[kW]) {
    const bool in = Bits == 4 ? j < lim : j * kChunkK < lim;
#pragma unroll
    for (int r = 0; r < kW; ++r)
      v[r] = in && wok[r] ? smallm::ld_stream(w_next[r] + j * kWStep) : zero4;
  };
  auto advance_w = [&]() {
#pragma unroll
    for (int r = 0; r < kW; ++r) w_next[r] += P * kChunks * kWStep;
  };

  // Activations: this thread's share of a stage's 16-byte copies, zero-filled past M and
  // K. Its pieces share one column (piece) and lie kXRowStep tokens apart, so one source
  // pointer and one row stride serve them all.
  constexpr int kXPerRow = D::kStageK / 8;  // 16-byte pieces of a token's stage row
  constexpr int kXPieces = kTok * kXPerRow;
  constexpr int kXP = (kXPieces + kThreads - 1) / kThreads;
  static_assert(kThreads % kXPerRow == 0, "a thread's pieces share a column");
  constexpr int kXRowStep = kThreads / kXPerRow;
  const int x_row0 = static_cast<int>(threadIdx.x) / kXPerRow;
  const int x_k = (static_cast<int>(threadIdx.x) % kXPerRow) * 8;
  const T* x_src = static_cast<const T*>(p.x) + static_cast<int64_t>(m0) * p.ldx + x_k;
  const uint32_t x_dst = smem_u32(xsm + x_row0 * kXRowE + x_k);
  // Row `row` of a step's x: part row / TR's stage, token row % TR (P = 1: token row).
  auto load_x = [&](int st, int slot) {
#pragma unroll
    for (int u = 0; u < kXP; ++u) {
      const int row = x_row0 + u * kXRowStep;
      if (kXPieces % kThreads != 0 && row >= kTok) continue;
      const int part = kCanPart ? row / TR : 0, token = kCanPart ? row % TR : row;
      const int stage = st * P + part;
      const int64_t k0 = static_cast<int64_t>(s_begin + stage) * D::kStageK;
      const bool ok = stage < ns && k0 + x_k < p.K && m0 + token < p.M;
      mma_tiled::cp_async16(x_dst + (slot * kXStage + u * kXRowStep * kXRowE) * 2,
                            ok ? x_src + token * p.ldx + k0 : static_cast<const T*>(p.x), ok);
    }
  };

  // Scales and zero points of a stage, entry i = q * kRows + row: group q of the stage. A
  // thread's entries share one row (kThreads is a multiple of kRows), and its u-th entry is
  // group m_q0 + u * kQStep.
  constexpr int kQStep = kThreads / kRows;
  static_assert(kThreads % kRows == 0, "a thread's entries share a row");
  // Entry row v (0..127) is row v % 16 of warp v / 16's tile: part m_kp, CTA row m_n.
  const int m_kp = kCanPart ? (static_cast<int>(threadIdx.x) % kRows) / (16 * R) : 0;
  const int m_n = kCanPart ? bx * 16 * R + (static_cast<int>(threadIdx.x) % kRows) % (16 * R)
                           : bx * kRows + static_cast<int>(threadIdx.x) % kRows;
  const int m_q0 = static_cast<int>(threadIdx.x) / kRows;
  const bool m_row_ok = m_n < p.N;
  const int m_scale = static_cast<int>(m_n * p.scale_ld);  // < 2^31: checked by the plan
  const int m_zero = static_cast<int>(m_n * p.zero_ld);
  using Meta = uint32_t[2][D::kMetaPer];  // [0]: scale bits, [1]: zero point
  const bool scale_f32 = p.scale_dtype == FloatType::kF32;
  const bool scale_bf16 = p.scale_dtype == FloatType::kBF16;
  // Without zero points every zero pair is the constant of 8, kept in registers.
  constexpr bool has_zeros = Bits == 4 && kZeros;
  // G = 128: a group is two chunks, summed in the tensor core before one scaled accumulate
  // (half the fp32 FMAs and zeroing of G = 64's per-chunk sums).
  // (The wide kernel scales every chunk: a group's sum over two chunks would keep 64 tokens'
  // partial sums live.)
  constexpr bool kGroupAcc = kG == 128 && !kWide;
  // Threads whose entry lies past the stage's groups (a stage of one group) gather none.
  constexpr bool kSomeIdle = D::kMeta % kThreads != 0;
  // A stage's groups: g0 + q of the row, past K none (G = 32 with K % 64 == 32).
  auto meta_load = [&](int st, Meta& m) {
    const int g0 = ((s_begin + st * P + m_kp) * D::kStageK) >> gsh;
#pragma unroll
    for (int u = 0; u < D::kMetaPer; ++u) {
      const int q = m_q0 + u * kQStep;
      if (kSomeIdle && q >= D::kGroups) continue;
      const bool ok = m_row_ok && (per_row || g0 + q < ngroups);
      const int gi = per_row ? 0 : g0 + q;
      m[0][u] = ok ? load_scale_bits(p.scales, scale_f32, m_scale + gi) : 0u;
      if (has_zeros) m[1][u] = ok ? p.zeros[m_zero + gi] : 8u;
    }
  };
  auto meta_store = [&](int slot, const Meta& m) {
#pragma unroll
    for (int u = 0; u < D::kMetaPer; ++u) {
      const int i = threadIdx.x + u * kThreads;
      if (kSomeIdle && i >= D::kMeta) continue;
      // The three dtypes by selects, not a jump table per entry.
      const uint32_t b = m[0][u];
      const float hf = __half2float(__ushort_as_half(static_cast<uint16_t>(b)));
      const float f = scale_f32 ? __uint_as_float(b) : scale_bf16 ? __uint_as_float(b << 16) : hf;
      ssm[slot * D::kMeta + i] = f;
      // Rows 0-7 of a 16-row tile are a fragment's row g, rows 8-15 its row g + 8.
      if (has_zeros)
        zsm[slot * D::kMeta + i] = (i & 8) ? int4_zero_hi<T>(m[1][u]) : int4_zero_lo<T>(m[1][u]);
    }
  };

  float acc[1][MT][4];
#pragma unroll
  for (int j = 0; j < MT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[0][j][i] = 0.f;

  // Stage st from x slot xs and meta slot ms with its weights in the ring; each chunk's
  // registers are refilled with the next stage's chunk (up to lim) once dequantized.
  // The lane's B fragment, token g, k = 16 t: in part kp's rows. With parts, lanes g >= TR
  // read a token of the part again: their tokens' sums are never stored (M <= TR).
  const int x_lane = (kCanPart ? kp * TR + g % TR : g) * kXRowE + 16 * t;
  auto compute = [&](int xs, int ms, int lim) {
    const T* xst = xsm + xs * kXStage + x_lane;
    const float* sst = ssm + ms * D::kMeta + warp * 16 + g;
    const uint32_t* zst = zsm + ms * D::kMeta + warp * 16 + g;
    float part[1][MT][4];  // (chunk_mma's group sums; the wide kernel keeps none)
#pragma unroll
    for (int cc = 0; cc < kChunks; ++cc) {
      const uint4(&v)[kW] = ring[cc];
      uint32_t z[2] = {int4_zero_lo<T>(8u), int4_zero_hi<T>(8u)};
      if constexpr (has_zeros) {
        const int qz = (cc * kChunkK + 16 * t) >> gsh;  // the lane's own group
        z[0] = zst[qz * kRows];
        z[1] = zst[qz * kRows + 8];
      }
      auto chunk_scale = [&](int h, int rr) {
        return sst[((cc * kChunkK + 32 * h) >> gsh) * kRows + 8 * rr];
      };
      if constexpr (kWide) {
        // The whole chunk dequantized once for the 64 tokens; its ring registers are free
        // at once, so the refill goes out before the mmas.
        uint32_t a[4][4];
#pragma unroll
        for (int s4 = 0; s4 < 4; ++s4) {
          if constexpr (Bits == 4)
            int4_fragment<T>(v[0], s4, z, a[s4]);
          else
            int8_fragment<T>(v[0], v[kW - 1], s4, a[s4]);
        }
        load_chunk(cc, lim, ring[cc]);
        chunk_mma_tokens<T, MT>(acc[0], a, xst + cc * kChunkK, kXRowE, two, t, chunk_scale);
      } else {
        // A group's sum starts from zero and is scaled at each chunk for G <= 64, over the
        // chunk pair for 128.
        chunk_mma<T, 1, MT>(
            acc, part, xst + cc * kChunkK, kXRowE, two, t, !kGroupAcc || cc % 2 == 0,
            !kGroupAcc || cc % 2 == 1,
            [&](int, int s, uint32_t (&a)[4]) {
              if constexpr (Bits == 4)
                int4_fragment<T>(v[0], s, z, a);
              else
                int8_fragment<T>(v[0], v[kW - 1], s, a);
            },
            [&](int, int h, int rr) { return chunk_scale(h, rr); });
        // The chunk's registers are free now: the refill needs no copies.
        load_chunk(cc, lim, ring[cc]);
      }
    }
  };

  // Prologue: the first stage's scales and activations, then its weights, then the later
  // stages' activations and scales are requested, and the first stage's scales stored. In
  // this order the first stage's small loads do not queue behind the whole grid's first ring
  // of weight (a small weight's whole stream, one stage per CTA): its barrier passes as the
  // first chunks land, and the mainloop runs beside the rest of the weight's arrival.
  constexpr int kXAhead = D::kXStages - 1;  // activation stages in flight ahead of compute
  Meta first, later;
  // Launched as a programmatic dependent launch (sm_90, run_decode), the CTAs were placed and
  // set up while the kernel before them ran; nothing global is touched before that kernel is
  // done, the weight included: an op call cannot know that the kernel before it did not
  // write the weight (a state_dict load's copy).
  grid_dependency_wait();
  meta_load(0, first);
  if (steps > 0) load_x(0, 0);
  mma_tiled::cp_async_commit();
  {
    const int lim = stage_limit(0);
#pragma unroll
    for (int j = 0; j < kChunks; ++j) load_chunk(j, lim, ring[j]);
    advance_w();
  }
#pragma unroll
  for (int st = 1; st < kXAhead; ++st) {
    if (st < steps) load_x(st, st);
    mma_tiled::cp_async_commit();
  }
  if (steps > 1) meta_load(1, later);
  meta_store(0, first);
  // Step st: x(st) has landed and every warp is done with stage st - 1, whose x slot
  // ((st + kXAhead) % kXStages) and meta slot ((st + 1) % 2) are refilled for stages
  // st + kXAhead and st + 1.
  for (int st = 0; st < steps; ++st) {
    mma_tiled::cp_async_wait<kXAhead - 1>();
    __syncthreads();
#ifdef LOWBIT_WXA16_DECODE_TRACE
    if (st == 0) {
      WXA16_DTRACE_NOW(kStage0);
      WXA16_DTRACE_PUT(kWeight0, dtrace::now_after(ring[0][0].x));
    }
#endif
    if (st + 1 < steps) meta_store((st + 1) & 1, later);
    if (st + kXAhead < steps) load_x(st + kXAhead, (st + kXAhead) % D::kXStages);
    mma_tiled::cp_async_commit();
    if (st + 2 < steps) meta_load(st + 2, later);
    compute(st % D::kXStages, st & 1, stage_limit(st + 1));
    advance_w();
  }
  mma_tiled::cp_async_wait<0>();
  WXA16_DTRACE_PUT(kMainEnd, dtrace::now_after(__float_as_uint(acc[0][0][0])));
  // The next kernel (if launched programmatically) may start its setup beside the gather;
  // it waits for this grid to end before touching global memory.
  launch_dependents();

  if (P > 1) {
    // The parts' sums of a row tile, added in part order by the warp of part 0 through the
    // activation ring's shared memory (done with: every warp has passed its last barrier's
    // reads once all reach this one).
    static_assert(kThreads * MT * 4 * 4 <= D::kXStages * kXStage * 2, "sums fit the x ring");
    float4* red = reinterpret_cast<float4*>(smem);
    __syncthreads();
    red[threadIdx.x] = make_float4(acc[0][0][0], acc[0][0][1], acc[0][0][2], acc[0][0][3]);
    __syncthreads();
    if (kp != 0) return;
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int q = 0; q < P; ++q) {
      const float4 v = red[(q * R + warp) * 32 + lane];
      sum.x += v.x;
      sum.y += v.y;
      sum.z += v.z;
      sum.w += v.w;
    }
    acc[0][0][0] = sum.x, acc[0][0][1] = sum.y, acc[0][0][2] = sum.z, acc[0][0][3] = sum.w;
  }
  float(&flat)[MT * 4] = reinterpret_cast<float(&)[MT * 4]>(acc);
  if (p.splits > 1 &&
      !gather_splits<MT * 4, kThreads>(p, flat, true, threadIdx.x, last_cta)) {
    WXA16_DTRACE_NOW(kEnd);
    return;
  }
  store_tiles<1, MT>(p, acc, rt, m0, g, t);
  WXA16_DTRACE_NOW(kEnd);
}

inline int group_shift(int group) {
  return group == 32 ? 5 : group == 64 ? 6 : group == 128 ? 7 : 31;
}

// The buffers of a split: one counter per tile (rounded to 16 bytes), and the partials (acc
// fp32 per thread that holds them).
inline void plan_workspace(WXA16GemmArgs& p, int64_t tiles, int parts, int acc) {
  p.counter_bytes = p.partial_bytes = 0;
  if (p.splits <= 1) return;
  p.counter_bytes = (static_cast<size_t>(tiles) * 4 + 15) / 16 * 16;
  p.partial_bytes = static_cast<size_t>(tiles) * p.splits * parts * acc * sizeof(float);
}

inline cudaError_t check_launch_args(const WXA16GemmArgs& p, const dim3& grid) {
  if (p.splits < 1 || (p.splits > 1 && (p.counters == nullptr || p.partials == nullptr)))
    return cudaErrorInvalidValue;
  if (grid.z > 65535 || p.splits > 65535) return cudaErrorInvalidValue;
  return cudaSuccess;
}

template <int Bits, typename T, int MT, int kG, bool kZeros, bool kWide>
cudaError_t run_decode(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  using D = Decode<Bits, kG, kWide>;
  constexpr int kRows = D::kRows, kSmem = D::template smem_bytes<MT>();
  static std::atomic<bool> opted[kMaxDevices];
  static std::atomic<int> code_arch[kMaxDevices];
  const auto kernel = wxa16_decode_kernel<Bits, T, MT, kG, kZeros, kWide>;
  // Row tiles x token tiles, flattened into x (the kernel splits them); a CTA of K parts
  // (WXA16GemmArgs::parts) takes 128 / parts rows.
  constexpr bool kCanPart = !kWide && MT == 1;  // as in the kernel
  if (plan) p.parts = 0;
  const int parts = kCanPart && p.parts > 1 ? p.parts : 1;
  const int cta_rows = kRows / parts;
  const int64_t row_tiles = (p.N + cta_rows - 1) / cta_rows,
                token_tiles = (p.M + 8 * MT - 1) / (8 * MT);
  if (row_tiles * token_tiles > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(row_tiles * token_tiles), 1, 1);
  int device = 0;
  cudaError_t e = current_device(device);
  if (e == cudaSuccess) e = opt_in_smem(kernel, kSmem, device, opted);
  if (e != cudaSuccess) return e;
  if (plan) {
    p.group_shift = group_shift(p.group);
    // The scale and zero-point offsets are int32 in the kernel.
    if (static_cast<int64_t>(p.N) * (p.scale_ld > p.zero_ld ? p.scale_ld : p.zero_ld) >= (1ll << 31))
      return cudaErrorInvalidValue;
    // Split K so that the CTAs fill whole waves: the cost of s splits is the number of
    // waves times a CTA's stages (plus the ring's fill); fewer splits win ties.
    int per_sm = 0;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, D::kThreads, kSmem);
    if (e != cudaSuccess) return e;
    const int64_t slots =
        static_cast<int64_t>(sm_count_or(device, 108)) * (per_sm > 0 ? per_sm : 1);
    const int64_t tiles = static_cast<int64_t>(grid.x) * (grid.z > 0 ? grid.z : 1);
    const int nk = (p.K + kChunkK - 1) / kChunkK;
    const int ns_all = (nk + D::kChunks - 1) / D::kChunks;
#if !defined(LOWBIT_WXA16_NO_PARTS) && !defined(LOWBIT_WXA16_DECODE_SPLITS)
    // K parts instead of a split over CTAs at M <= 2 where 128 / P-row CTAs hold the weight
    // in one wave and number at least 1.5 per SM: the parts' sums meet in shared memory, not
    // in L2. Fewer CTAs hide less latency than the split's (bench/NOTES.md, "K parts": 141
    // and 157 CTAs on 132 SMs took 15-25% longer than the split, 224-256 matched or beat
    // it), and at M = 3-4 two parts were level or 6% slower. (-DLOWBIT_WXA16_NO_PARTS, or a
    // forced split: bench/wxa16_ab.sh's A/B.)
    if (kCanPart && p.M <= 2) {
      const int64_t sms = sm_count_or(device, 108);
      for (int P = 8; P >= 2; P /= 2) {
        const int64_t ctas = (p.N + kRows / P - 1) / (kRows / P);
        if (p.M <= 8 / P && ns_all >= P && 2 * ctas >= 3 * sms && ctas <= slots) {
          p.parts = P;
          p.splits = 1;
          plan_workspace(p, ctas, D::kThreads, MT * 4);
          return cudaSuccess;
        }
      }
    }
#endif
    int best = 1;
    int64_t best_cost = -1;
    for (int s = 1; s <= 16 && s <= ns_all; ++s) {
      const int64_t waves = (tiles * s + slots - 1) / slots;
      // A CTA's fixed cost (the rings' fill, the first stage's scales, the reduction) is
      // counted as 3 stages.
      const int64_t cost = waves * ((ns_all + s - 1) / s + 3);
      if (best_cost < 0 || cost < best_cost) best = s, best_cost = cost;
    }
#ifdef LOWBIT_WXA16_DECODE_SPLITS
    // A forced split, for bench/wxa16_ab.sh's A/B of the planner's choice.
    best = LOWBIT_WXA16_DECODE_SPLITS < ns_all ? LOWBIT_WXA16_DECODE_SPLITS : ns_all;
#endif
    p.splits = best;
    plan_workspace(p, tiles, D::kThreads, MT * 4);
    return cudaSuccess;
  }
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  e = check_launch_args(p, grid);
  if (e != cudaSuccess) return e;
  // Programmatic where the kernel's code here holds the wait.
  const LaunchConfig cfg(dim3(grid.x, p.splits, grid.z), D::kThreads, kSmem, stream, 1,
                         programmatic_launch() && holds_pdl_wait(kernel, device, code_arch));
  return launch_status(cudaLaunchKernelEx(cfg.get(), kernel, p));
}

// Plan (split and workspace) or launch one tiled configuration.
template <int Bits, typename T, int WN, int MT, int kWarps, int kPf>
cudaError_t run(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  constexpr int kRows = 16 * WN * kWarps, kTok = 8 * MT, kThreads = 32 * kWarps;
  const dim3 grid((p.N + kRows - 1) / kRows, 1, (p.M + kTok - 1) / kTok);
  if (plan) {
    int device = 0;
    const cudaError_t e = current_device(device);
    if (e != cudaSuccess) return e;
    const int sms = sm_count_or(device, 108);
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
    plan_workspace(p, tiles, kThreads, WN * MT * 4);
    return cudaSuccess;
  }
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  const cudaError_t e = check_launch_args(p, grid);
  if (e != cudaSuccess) return e;
  return launch_plain(wxa16_gemm_kernel<Bits, T, WN, MT, kWarps, kPf>,
                      dim3(grid.x, p.splits, grid.z), dim3(kThreads), 0, stream, p);
}

// The tiled configuration of one bit width, by x's dtype: 8 warps x one 16-row tile, 64
// tokens (one A fragment feeds 8 mmas), 2 chunks in flight; 216 registers, no spills (two
// row tiles per warp spill).
template <int Bits, typename T>
cudaError_t tiled_of(WXA16GemmArgs& p, cudaStream_t s, bool plan) {
  return run<Bits, T, 1, 8, 8, 2>(p, s, plan);
}

// The group size and zero points are the kernel's constants: its scale and zero reads are
// then fixed offsets, and G = 32's second pass per chunk is compiled only where it runs.
template <int Bits, typename T, int MT, int kG, bool kWide>
cudaError_t decode_zeros(WXA16GemmArgs& p, cudaStream_t s, bool plan) {
  if constexpr (Bits == 4) {
    if (p.zeros != nullptr) return run_decode<Bits, T, MT, kG, true, kWide>(p, s, plan);
  }
  return run_decode<Bits, T, MT, kG, false, kWide>(p, s, plan);
}
template <int Bits, typename T, int MT>
cudaError_t decode_group(WXA16GemmArgs& p, cudaStream_t s, bool plan) {
  if (p.group == 32) return decode_zeros<Bits, T, MT, 32, false>(p, s, plan);
  if (p.group == 64) return decode_zeros<Bits, T, MT, 64, false>(p, s, plan);
  return decode_zeros<Bits, T, MT, 128, false>(p, s, plan);  // 128, or one scale per row
}
template <int Bits, typename T>
cudaError_t decode_of(WXA16GemmArgs& p, cudaStream_t s, bool plan) {
  return p.M <= 8 ? decode_group<Bits, T, 1>(p, s, plan) : decode_group<Bits, T, 2>(p, s, plan);
}

// The prepacked int4 weight dequantized to x's dtype, [N, K] row-major in `out` (row stride
// ldo): the first half of the large-M path, whose product is then a dense bf16/fp16 GEMM
// (cuBLAS). One thread per lane of a 16 x 64 tile: it reads the lane's 16 bytes (rows g and
// g + 8, k = 16 t .. 16 t + 15 of the chunk, one group since G >= 32) and writes 32
// contiguous bytes of each row: (u - z) * scale in fp32, rounded once.
template <typename T>
__global__ void __launch_bounds__(256) int4_dequant_kernel(const WXA16GemmArgs p) {
  const int nk = (p.K + kChunkK - 1) / kChunkK;
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  if (tile >= static_cast<int64_t>((p.N + 15) / 16) * nk) return;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int rt = static_cast<int>(tile / nk), c = static_cast<int>(tile % nk);
  const int k0 = c * kChunkK + 16 * t;
  if (k0 >= p.K) return;
  const uint4 v = smallm::ld_stream(static_cast<const uint8_t*>(p.w) + tile * kTileBytes4 +
                                    lane * 16);
  const int gi = p.group == 0 ? 0 : k0 / p.group;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int n = rt * 16 + 8 * h + g;
    if (n >= p.N) continue;
    const float scale = load_scale(p.scales, p.scale_dtype, static_cast<int64_t>(n) * p.scale_ld + gi);
    const float zero = p.zeros != nullptr ? p.zeros[static_cast<int64_t>(n) * p.zero_ld + gi] : 8.f;
    // Word s, nibble 4 j + 2 p + h holds k = 16 t + 4 s + 2 p + j (lowbit/reference/int4.py).
    uint32_t out[8];
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const uint32_t w = word(v, s);
#pragma unroll
      for (int pp = 0; pp < 2; ++pp) {
        const float lo = static_cast<float>((w >> (4 * (2 * pp + h))) & 0xF);
        const float hi = static_cast<float>((w >> (4 * (4 + 2 * pp + h))) & 0xF);
        out[2 * s + pp] = pack2<T>((lo - zero) * scale, (hi - zero) * scale);
      }
    }
    uint4* dst = reinterpret_cast<uint4*>(static_cast<T*>(p.out) + static_cast<int64_t>(n) * p.ldo + k0);
    dst[0] = make_uint4(out[0], out[1], out[2], out[3]);
    dst[1] = make_uint4(out[4], out[5], out[6], out[7]);
  }
}

// The int8 [N, K] weight dequantized to x's dtype the same way: one thread per 16 bytes of a
// row (16 k of one group, since K and G are multiples of 16), q * scale in fp32, rounded once,
// written as 32 contiguous bytes.
template <typename T>
__global__ void __launch_bounds__(256) int8_dequant_kernel(const WXA16GemmArgs p) {
  const int per_row = p.K / 16;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
  if (i >= static_cast<int64_t>(p.N) * per_row) return;
  const int n = static_cast<int>(i / per_row), k0 = static_cast<int>(i % per_row) * 16;
  const uint4 v = smallm::ld_stream(static_cast<const uint8_t*>(p.w) +
                                    static_cast<int64_t>(n) * p.ldw + k0);
  const int gi = p.group == 0 ? 0 : k0 / p.group;
  const float scale = load_scale(p.scales, p.scale_dtype, static_cast<int64_t>(n) * p.scale_ld + gi);
  uint32_t out[8];
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const uint32_t w = word(v, s);
    // Bytes 0..3 of the word are k = k0 + 4 s .. 4 s + 3, sign-extended by the shifts.
    out[2 * s] = pack2<T>(static_cast<float>(static_cast<int32_t>(w << 24) >> 24) * scale,
                          static_cast<float>(static_cast<int32_t>(w << 16) >> 24) * scale);
    out[2 * s + 1] = pack2<T>(static_cast<float>(static_cast<int32_t>(w << 8) >> 24) * scale,
                              static_cast<float>(static_cast<int32_t>(w) >> 24) * scale);
  }
  uint4* dst = reinterpret_cast<uint4*>(static_cast<T*>(p.out) + static_cast<int64_t>(n) * p.ldo + k0);
  dst[0] = make_uint4(out[0], out[1], out[2], out[3]);
  dst[1] = make_uint4(out[4], out[5], out[6], out[7]);
}

template <int Bits, typename T>
cudaError_t dequant_of(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  if (plan) {
    p.splits = 1;
    p.counter_bytes = p.partial_bytes = 0;
    return cudaSuccess;
  }
  // int4: a warp per 16 x 64 tile of the prepacked layout; int8: a thread per 16 bytes.
  const int64_t threads =
      Bits == 4 ? static_cast<int64_t>((p.N + 15) / 16) * ((p.K + kChunkK - 1) / kChunkK) * 32
                : static_cast<int64_t>(p.N) * (p.K / 16);
  if (threads == 0) return cudaSuccess;
  const int64_t blocks = (threads + 255) / 256;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  auto kernel = Bits == 4 ? int4_dequant_kernel<T> : int8_dequant_kernel<T>;
  return launch_plain(kernel, dim3(static_cast<unsigned>(blocks)), dim3(256), 0, stream, p);
}

template <int Bits>
cudaError_t decode(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  if (p.M > kWXA16DecodeMaxM) return cudaErrorInvalidValue;
  // decode_group runs every other value as 128.
  if (p.group != 0 && p.group != 32 && p.group != 64 && p.group != 128)
    return cudaErrorInvalidValue;
  if (p.x_dtype == FloatType::kBF16) return decode_of<Bits, __nv_bfloat16>(p, stream, plan);
  if (p.x_dtype == FloatType::kF16) return decode_of<Bits, __half>(p, stream, plan);
  return cudaErrorInvalidValue;
}

// The wide kernel: 64-token tiles (adjacent in the grid above 64 tokens). G = 64, 128 or one
// scale per row: G = 32's two passes per chunk keep local memory in the loop even at 255
// registers, and decode serves it.
template <int Bits, typename T>
cudaError_t wide_group(WXA16GemmArgs& p, cudaStream_t s, bool plan) {
  if (p.group == 64) return decode_zeros<Bits, T, 8, 64, true>(p, s, plan);
  return decode_zeros<Bits, T, 8, 128, true>(p, s, plan);  // 128, or one scale per row
}
template <int Bits>
cudaError_t wide(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  if (p.M > kWXA16WideMaxM) return cudaErrorInvalidValue;
  if (p.group != 0 && p.group != 64 && p.group != 128) return cudaErrorInvalidValue;
  if (p.x_dtype == FloatType::kBF16) return wide_group<Bits, __nv_bfloat16>(p, stream, plan);
  if (p.x_dtype == FloatType::kF16) return wide_group<Bits, __half>(p, stream, plan);
  return cudaErrorInvalidValue;
}

template <int Bits>
cudaError_t dequant(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  // 16-byte stores of whole 16-k runs: K and the row stride multiples of 8 elements; int8:
  // 16-byte loads, so w's rows 16-byte aligned too.
  if (p.bits != Bits || p.K % 16 || p.ldo < p.K || p.ldo % 8) return cudaErrorInvalidValue;
  if (Bits == 8 && (p.ldw % 16 || (p.group != 0 && p.group % 16))) return cudaErrorInvalidValue;
  if (!plan && (reinterpret_cast<uintptr_t>(p.out) % 16 ||
                (Bits == 8 && reinterpret_cast<uintptr_t>(p.w) % 16)))
    return cudaErrorInvalidValue;
  if (p.x_dtype == FloatType::kBF16) return dequant_of<Bits, __nv_bfloat16>(p, stream, plan);
  if (p.x_dtype == FloatType::kF16) return dequant_of<Bits, __half>(p, stream, plan);
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
