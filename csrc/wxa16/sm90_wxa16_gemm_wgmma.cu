// sm_90a W4A16 / W8A16 GEMMs above the decode range (sm90_w4a16_gemm_wgmma, any M;
// sm90_w8a16_gemm_wgmma, any M per channel, M <= 256 with groups, as the Python side
// offers them): the decode kernel's weight conversion (wxa16_gemm.cuh:
// int4 prepacked or int8 fragments dequantized in registers, exactly) feeding wgmma with the
// weight as its register A operand, so one dequantized fragment serves a tile of kN = 32, 64,
// 128 or 256 tokens in one instruction, where the mma.sync decode kernel dequantizes it once per
// 16 tokens (bench/NOTES.md, "Decode to M = 64").
//
// Operands. A: the weight, 64 rows per consumer warpgroup (warp w: 16-row tile w, its lanes'
// A fragments those of mma.sync m16n8k16). B: the activations, [kN tokens][64 K] bf16/fp16
// per 64-K chunk in shared memory, K-major with the 128-byte swizzle (one 128-byte row per
// token), as TMA lands them: the K order is the natural one, wgmma k-step s taking
// k = 16 s .. 16 s + 15 of the chunk.
//
// The weight's K order. The decode kernel's fragments permute K inside a chunk (lane (g, t),
// k-step s holds k = 16 t + 4 s + {0, 1} and 16 t + 4 s + {2, 3}: wxa16_gemm.cuh, "K order";
// the int4 prepacked layout stores its nibbles so, and reads a lane's 16 bytes of an int8 row
// as k = 16 t .. 16 t + 15), which the activations of mma.sync follow in registers for free.
// Here the weight follows x instead: in natural k-step s, lane (g, t) needs k = 16 s + 2 t
// + {0, 1} and 16 s + 2 t + 8 + {0, 1} of rows g and g + 8, which lie in two 4-byte words of
// the chunk in shared memory (int4: words h and h + 2 of lane (g, s)'s 16 prepacked bytes,
// bytes p and p + 2 of each, h = t / 2, p = t % 2; int8: words 4 s + h and 4 s + h + 2 of the
// row, bytes 2 p and 2 p + 1 of each), so each k-step is two 4-byte loads and one byte
// permute into the word the decode kernel's conversion takes (int4_fragment,
// int8_fragment). Permuting x instead took three warps and 32 KB of shared-memory traffic
// a 128-token chunk; without it the kernel runs up to 12% faster (one shape 3% slower:
// bench/NOTES.md, "The weight-only wgmma kernel without its encoder"). The weight lands
// swizzled (int4: the 128-byte swizzle, the prepacked tensor viewed as [row tiles]
// [chunks x 4][128 bytes]; int8: the 64-byte swizzle on 64-byte rows), which makes these
// loads free of bank conflicts: the 8 rows g a warp reads at once fall in 8 distinct
// 16-byte columns.
//
// Roles (384 threads). Warpgroup 0 produces: its first thread TMA-loads each chunk's weight
// (int4: 8 row tiles x 512 bytes; int8: 128 rows x 64 bytes of [N, K]) and x's [kN][64] box
// onto the stage's full barrier; its other warps only join the split's gather. Warpgroups 1
// and 2 consume: per chunk each thread gathers its weight words from shared memory,
// dequantizes the 4 k-steps' A fragments and issues four m64nNk16 wgmmas. A chunk lies in one
// group (G = 64, 128, or one scale per row); G = 32 is the decode kernel's. The chunks' sums
// either stay in the tensor core (kAcc: one scale per row, applied after the mainloop; int4
// groups with scales of x's dtype, the weights multiplied by their scales in registers as the
// dequantize-then-GEMM path's weights are), or each chunk's wgmmas write a zeroed partial
// tile that is added to the fp32 accumulator times the rows' scales once the next chunk's
// wgmmas are in flight (two partial tiles, as the FP8 kernels promote). Under kAcc alone,
// 128-token tiles from M = 65 where they pay (takes_128_token_tiles) and 256-token tiles
// (a 128-register accumulator a consumer thread) above M = 128 (takes_256_token_tiles).
//
// Grid: (row blocks of 128 x token tiles, K splits), in groups of 16 row blocks whose CTAs
// go token tile by token tile (kRasterRows): the weight of a group and the x tile of its
// current token tile are read from L2 after the first CTA. K splits use the decode kernel's
// workspace and counters (gather_splits: partials added in split order). A grid of more than
// a wave splits only its last partial wave's tiles (WXA16GemmArgs::split_from), whose CTAs
// follow the whole tiles' along x.

#include <algorithm>

#include "common/sm90.cuh"
#include "wxa16/wxa16_gemm.cuh"

namespace lowbit {
namespace wxa16 {
namespace wg {

constexpr int kThreads = 384;
constexpr int kConsumerThreads = 256;
constexpr int kConsumerWarps = 8;
constexpr int kRowTiles = 8;  // 16-row tiles per CTA: 128 rows
constexpr int kRows = 16 * kRowTiles;
// A prepacked int4 tile (16 rows x 64 K) as TMA's 128-byte swizzle takes it: 4 lines of 32
// words.
constexpr int kLineWords = 32;
constexpr int kTileLines = kTileBytes4 / (4 * kLineWords);
// One chunk of the CTA's 128 rows: int4, 8 prepacked 16 x 64 tiles (4 KB); int8, 128 rows of
// 64 bytes (8 KB).
template <int Bits>
constexpr int kWeightBytes = Bits == 4 ? kRowTiles * kTileBytes4 : kRows * kChunkK;
constexpr int kMaxStages = 8;
// The grid's raster: groups of 16 row blocks, each group's CTAs one token tile after another,
// so a wave of CTAs (132 on an H100) reads about 8 x tiles, each from DRAM once for 16 row
// blocks, and 16 row blocks of weight, which stay in L2 through the group's token tiles.
// Row block by row block (the order before), a wave at M = 8192 read the whole x (128 MB at
// K = 8192, past L2) once a wave.
constexpr int kRasterRows = 16;
using sm90::kSmemLimit;
// The weight's metadata staged beside each chunk: for every warp row tile wt and lane row g,
// 8 words that consumer lanes (g, *) of warp wt read with two loads (the zero pairs of
// rows g and g + 8, as int4_fragment takes them; their prescale pairs; their fp32 scales;
// two unused). Two producer warps (kMetaThreads, one (wt, g) each) load and form them, so
// the consumers' loop has no global loads or address arithmetic for them: there, about 40
// instructions a chunk, they cost a fifth of the chunk (bench/NOTES.md, "The weight-only
// wgmma chunk: the consumer's instruction stream").
constexpr int kMetaWords = 8;
constexpr int kMetaBytes = kRowTiles * 8 * kMetaWords * 4;  // 2 KB a stage
constexpr int kMetaThreads = kRowTiles * 8;                 // producer warps 1 and 2
// How many chunks' metadata a metadata thread loads at once. A thread cannot wait for one of
// several global loads in flight without waiting for all (they complete out of order), so
// the loads go in batches: one latency (about a microsecond under the weight stream) a
// batch, against half a microsecond a chunk, with the ring's 8 stages of lead.
constexpr int kMetaBatch = 4;
// A timing experiment's build flag (bench/wxa16_ab.sh; its outputs are wrong):
// -DLOWBIT_WXA16_AB_SKIP=1 issues the wgmmas on fixed fragments (no gather, no conversion),
// =2 builds the fragments and issues no wgmma, so that a chunk's two halves are timed apart;
// =3 is 1 without x's loads (the wgmmas read whatever the stage holds): what the x tiles'
// L2-to-SM traffic costs.
#ifdef LOWBIT_WXA16_AB_SKIP
constexpr int kAbSkip = LOWBIT_WXA16_AB_SKIP;
#else
constexpr int kAbSkip = 0;
#endif
static_assert(kAbSkip >= 0 && kAbSkip <= 3,
              "0: the kernel; 1: no fragments; 2: no wgmmas; 3: no fragments, no x");

// kAcc: the chunks accumulate in the tensor core, in acc (both slots), with no partial tiles
// (see "How a chunk's products reach acc" in the kernel).
template <int Bits, int kN, bool kAcc>
struct Config {
  static_assert(kN == 32 || kN == 64 || ((kN == 128 || kN == 256) && kAcc),
                "token tiles of 32, 64, 128, 256");
  static constexpr int kRegs = kN / 2;
  static constexpr int kActBytes = kN * 128;  // one 128-byte swizzled row per token
  static constexpr int kWBytes = kWeightBytes<Bits>;
  static constexpr int kStageBytes = kWBytes + kActBytes + kMetaBytes;  // weight, B, metadata
  // Fixed: 2 barriers per stage, the split's "last CTA" flag, the alignment slack.
  static constexpr int kFixedBytes = (2 * kMaxStages + 1) * 8 + 1024;
  static constexpr int kStages = (kSmemLimit - kFixedBytes) / kStageBytes < kMaxStages
                                     ? (kSmemLimit - kFixedBytes) / kStageBytes
                                     : kMaxStages;
  static constexpr int kSmemBytes = kStages * kStageBytes + (2 * kStages + 1) * 8 + 1024;
  static_assert(kStages >= 4, "too shallow a ring");
};

#ifdef LOWBIT_SM90A
// d (64 x kN fp32 fragment) (+)= A (64 x 16, registers a) * B (kN x 16, descriptor b), 16-bit
// operands of type T; accumulate (a predicate, so one kernel serves both) keeps d's sums.
template <typename T, int kN>
__device__ __forceinline__ void wgmma_rs(float (&d)[kN / 2], const uint32_t (&a)[4], uint64_t b,
                                         bool accumulate) {
#define LOWBIT_WGMMA_RS(n, R, ty, A, S)                                                       \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " S ", 0;\n"                                \
               "wgmma.mma_async.sync.aligned.m64n" #n "k16.f32." ty "." ty " " LOWBIT_REGS##R \
               ", " A ", p, 1, 1, 0;\n}\n"                                                   \
               : LOWBIT_ACC##R("f", d, 0)                                                   \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b),                        \
                 "r"(static_cast<int>(accumulate)))
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  if constexpr (kN == 32) {
    if constexpr (kBf16)
      LOWBIT_WGMMA_RS(32, 16, "bf16", "{%16, %17, %18, %19}, %20", "%21");
    else
      LOWBIT_WGMMA_RS(32, 16, "f16", "{%16, %17, %18, %19}, %20", "%21");
  } else if constexpr (kN == 64) {
    if constexpr (kBf16)
      LOWBIT_WGMMA_RS(64, 32, "bf16", "{%32, %33, %34, %35}, %36", "%37");
    else
      LOWBIT_WGMMA_RS(64, 32, "f16", "{%32, %33, %34, %35}, %36", "%37");
  } else if constexpr (kN == 128) {
    if constexpr (kBf16)
      LOWBIT_WGMMA_RS(128, 64, "bf16", "{%64, %65, %66, %67}, %68", "%69");
    else
      LOWBIT_WGMMA_RS(128, 64, "f16", "{%64, %65, %66, %67}, %68", "%69");
  } else {
    if constexpr (kBf16)
      LOWBIT_WGMMA_RS(256, 128, "bf16", "{%128, %129, %130, %131}, %132", "%133");
    else
      LOWBIT_WGMMA_RS(256, 128, "f16", "{%128, %129, %130, %131}, %132", "%133");
  }
#undef LOWBIT_WGMMA_RS
}

// a * b on 16-bit pairs of type T, rounded once (the exact product: an integer of at most 5
// bits times a scale of x's dtype).
template <typename T>
__device__ __forceinline__ uint32_t mul2(uint32_t a, uint32_t b) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    const __nv_bfloat162 r = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&a),
                                     *reinterpret_cast<const __nv_bfloat162*>(&b));
    return *reinterpret_cast<const uint32_t*>(&r);
  } else {
    const __half2 r = __hmul2(*reinterpret_cast<const __half2*>(&a),
                              *reinterpret_cast<const __half2*>(&b));
    return *reinterpret_cast<const uint32_t*>(&r);
  }
}

#endif  // LOWBIT_SM90A

// Phase trace (built only with -DLOWBIT_WXA16_TRACE, by bench/wxa16_ab.cu): per CTA (index
// blockIdx.y * gridDim.x + blockIdx.x, the first kCtas), %globaltimer stamps of its start, the
// first chunk's arrival at the consumers, the end of the mainloop and the CTA's end, and SM
// cycles (32-bit %clock; differences wrap safely) summed over the chunks: the first consumer
// thread's waits on its full barriers and its time gathering and dequantizing the weight's
// fragments, the producer thread's waits on empty stages. It says where a chunk's time goes
// where ncu's stall sampling is not available.
namespace trace {
enum Slot { kStart, kFirstFull, kMainEnd, kEnd, kWaitFull, kFragments, kWaitEmpty, kSlots };
constexpr int kCtas = 2048;
#ifdef LOWBIT_WXA16_TRACE
__device__ unsigned long long stamps[kCtas][kSlots];
__device__ __forceinline__ void put(Slot s, unsigned long long v) {
  const unsigned cta = blockIdx.y * gridDim.x + blockIdx.x;
  if (cta < kCtas) stamps[cta][s] = v;
}
#endif
}  // namespace trace
// Trace hooks: nothing without LOWBIT_WXA16_TRACE.
#ifdef LOWBIT_WXA16_TRACE
#define WXA16_TRACE_NOW(slot) trace::put(trace::slot, sm90::globaltimer_ns())
#define WXA16_TRACE_PUT(slot, v) trace::put(trace::slot, (v))
#define WXA16_TRACE_CLOCK(name) const unsigned name = static_cast<unsigned>(clock())
#define WXA16_TRACE_ADD(sum, since) (sum) += static_cast<unsigned>(clock()) - (since)
#else
#define WXA16_TRACE_NOW(slot) (void)0
#define WXA16_TRACE_PUT(slot, v) (void)0
#define WXA16_TRACE_CLOCK(name) (void)0
#define WXA16_TRACE_ADD(sum, since) (void)0
#endif

#ifdef LOWBIT_SM90A
// Where a consumer thread's weight words lie in a stage (see "The weight's K order" at the
// top): natural k-step s takes the 4-byte words at off[s] and off[s] + 8, whose bytes
// __byte_perm(·, ·, sel) puts in the order the conversion takes (int4: [A.p, B.p, A.p + 2,
// B.p + 2], k = 16 s + 2 t, + 8, + 1, + 9: nibble pairs (k, k + 1) and (k + 8, k + 9) of
// rows g (low nibbles) and g + 8 (high); int8: [A.2p, A.2p + 1, B.2p, B.2p + 1]). int4: lane
// (g, s)'s 16 bytes of the warp's row tile wt lie in 128-byte line L = 4 wt + g / 2, 16-byte
// column 4 (g % 2) + s, the column XORed with L % 8 by the 128-byte swizzle. int8: row
// 16 wt + g (g + 8: 512 bytes on, the same swizzle) is one 64-byte line, the 16-byte column
// s XORed with (row / 2) % 4 by the 64-byte swizzle.
template <int Bits>
struct WeightWords {
  uint32_t off[4];
  uint32_t sel;
  __device__ __forceinline__ WeightWords(int wt, int g, int t) {
    const int h = t >> 1, p = t & 1;
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      if constexpr (Bits == 4) {
        const int line = 4 * wt + (g >> 1);
        off[s] = line * 128 + (((4 * (g & 1) + s) ^ (line & 7)) << 4) + 4 * h;
      } else {
        const int row = 16 * wt + g;
        off[s] = row * 64 + ((s ^ ((row >> 1) & 3)) << 4) + 4 * h;
      }
    }
    sel = Bits == 4 ? 0x6240u + 0x1111u * p : (p ? 0x7632u : 0x5410u);
  }
  // The four k-steps' words from stage `w` (+ `skip` bytes: int8's row g + 8).
  __device__ __forceinline__ uint4 gather(const uint8_t* w, int skip) const {
    uint32_t q[4];
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const uint8_t* at = w + skip + off[s];
      q[s] = __byte_perm(*reinterpret_cast<const uint32_t*>(at),
                         *reinterpret_cast<const uint32_t*>(at + 8), sel);
    }
    return make_uint4(q[0], q[1], q[2], q[3]);
  }
};

// A metadata thread's raw loads for one chunk: the scale bits of rows g and g + 8 and their
// int4 zero points.
struct Meta {
  uint32_t s[2];
  uint32_t z[2];
};
#endif  // LOWBIT_SM90A

#ifdef LOWBIT_SM90A
// The metadata of every chunk c_begin .. c_end - 1 into its stage's entry (wt, g) = (j / 8,
// j % 8): the scales and zero points of rows 16 (8 bx + wt) + g and + 8 (rows past N: scale 0,
// zero 8) formed as the consumers take them, then an arrival on the stage's full barrier
// (whose release orders the stores before the consumers' reads). The loads go kMetaBatch
// chunks at a time; the empty barrier is waited on as the TMA thread waits on it.
template <int Bits, typename T, bool kAcc, int kStages>
__device__ __forceinline__ void stage_metadata(const WXA16GemmArgs& p, uint8_t* meta_tiles,
                                               uint64_t* full, uint64_t* empty, int j, int bx,
                                               int c_begin, int c_end) {
  const int wt = j / 8, g = j % 8;
  const int64_t n0 = (static_cast<int64_t>(bx) * kRowTiles + wt) * 16 + g;
  const bool f32_scale = p.scale_dtype == FloatType::kF32;
  const uint8_t* srow[2];
  const uint8_t* zrow[2];
  bool row_ok[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t n = n0 + 8 * r;
    row_ok[r] = n < p.N;
    srow[r] = static_cast<const uint8_t*>(p.scales) +
              (row_ok[r] ? n * p.scale_ld * (f32_scale ? 4 : 2) : 0);
    zrow[r] = Bits == 4 && row_ok[r] && p.zeros != nullptr ? p.zeros + n * p.zero_ld : nullptr;
  }
  auto load = [&](int c, Meta& m) {
    const int gi = (c * kChunkK) >> p.group_shift;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const bool ok = row_ok[r] && c < c_end;
      m.s[r] = ok ? load_scale_bits(srow[r], f32_scale, gi) : 0u;
      m.z[r] = Bits == 4 && ok && zrow[r] != nullptr ? zrow[r][gi] : 8u;
    }
  };
  // The prescale (kAcc, int4 groups: scales of x's dtype multiplied into the weights) or ones:
  // multiplying by a selected pair costs the consumer fewer instructions than a branch.
  const bool prescale = kAcc && Bits == 4 && p.group != 0;
  constexpr uint32_t kOnes = std::is_same<T, __nv_bfloat16>::value ? 0x3f803f80u : 0x3c003c00u;
  uint8_t* entry = meta_tiles + j * kMetaWords * 4;
  // Chunk c_begin + it's entry from its loads m, once its stage is free.
  auto stage_one = [&](const Meta& m, int it) {
    const uint4 e0 = make_uint4(int4_zero_lo<T>(m.z[0]), int4_zero_hi<T>(m.z[1]),
                                prescale ? m.s[0] * 0x00010001u : kOnes,
                                prescale ? m.s[1] * 0x00010001u : kOnes);
    const uint2 e1 = make_uint2(__float_as_uint(scale_bits_to_float(m.s[0], p.scale_dtype)),
                                __float_as_uint(scale_bits_to_float(m.s[1], p.scale_dtype)));
    const int s = it % kStages;
    sm90::mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);
    *reinterpret_cast<uint4*>(entry + s * kMetaBytes) = e0;
    *reinterpret_cast<uint2*>(entry + s * kMetaBytes + 16) = e1;
    sm90::mbar_arrive(&full[s]);
  };
  for (int base = 0; c_begin + base < c_end; base += kMetaBatch) {
    Meta q[kMetaBatch];
#pragma unroll
    for (int a = 0; a < kMetaBatch; ++a) load(c_begin + base + a, q[a]);
#pragma unroll
    for (int a = 0; a < kMetaBatch; ++a) {
      const int it = base + a;
      if (c_begin + it < c_end) stage_one(q[a], it);
    }
  }
}
#endif  // LOWBIT_SM90A

#ifdef LOWBIT_SM90A
// A consumer warpgroup's 64 rows x kN tokens of out (+ bias) by one TMA store: the
// accumulator fragments, transposed by stmatrix into a staging tile laid out as out is
// ([kN tokens][64 rows], 128-byte rows, the 128-byte swizzle), then stored as one box from
// (n0, m0); TMA clips rows and tokens past the ends. Each thread writes 128-bit rows of 8
// outputs where store_tiles writes kN / 2 two-byte values to 4 tokens' rows at once: at
// kN = 256 the CTA's epilogue took 8-10 us of a 50 us tile that way (trace, H100).
template <typename T, int kN>
__device__ __forceinline__ void store_tile_tma(const WXA16GemmArgs& p, const CUtensorMap* map,
                                               const float (&acc)[kN / 2], uint8_t* stage,
                                               int rt, int m0, int n0, int warp, int lane) {
  const int g = lane / 4;
  float bias[2] = {0.f, 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int n = rt * 16 + g + 8 * r;
    if (p.bias != nullptr && n < p.N) bias[r] = load_bias(p.bias, p.bias_dtype, n);
  }
  // Lane l addresses row l % 8 of matrix l / 8: matrices (token block j, rows g), (j, g + 8),
  // (j + 1, g), (j + 1, g + 8), each stored transposed (tokens as rows).
  const uint32_t base = smem_u32(stage);
  const int mi = lane / 8;
  const int col = 16 * warp + 8 * (mi & 1);
#pragma unroll
  for (int j = 0; j < kN / 8; j += 2) {
    uint32_t q[4];
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        q[2 * e + r] = pack2<T>(acc[4 * (j + e) + 2 * r] + bias[r],
                                acc[4 * (j + e) + 2 * r + 1] + bias[r]);
    sm90::stmatrix_x4_trans(base + sm90::staged_offset<2>(8 * (j + (mi >> 1)) + lane % 8, col),
                            q);
  }
  sm90::fence_async_smem();
  const int wg = threadIdx.x / 128;
  sm90::named_sync(1 + wg, 128);
  if (threadIdx.x % 128 == 0 && n0 < p.N) {
    sm90::tma_store_2d(map, stage, n0, m0);
    sm90::bulk_commit();
    sm90::bulk_wait();  // the staging tile outlives the store's reads, the CTA its writes
  }
}
#endif  // LOWBIT_SM90A

template <int Bits, typename T, int kN, bool kAcc>
__global__ void __launch_bounds__(kThreads, 1)
wxa16_wgmma_kernel(const __grid_constant__ CUtensorMap map_w,
                   const __grid_constant__ CUtensorMap map_x,
                   const __grid_constant__ CUtensorMap map_out, const WXA16GemmArgs p,
                   bool tma_out) {
#ifdef LOWBIT_SM90A
  using C = Config<Bits, kN, kAcc>;
  constexpr int kStages = C::kStages, kWBytes = C::kWBytes;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* w_tiles = align_smem_1024(smem_raw);  // [stage][8 row tiles][512] (int4) or
                                                 // [stage][128 rows][64] (int8), swizzled
                                                 // (WeightWords)
  uint8_t* b_tiles = w_tiles + kStages * kWBytes;            // [stage][kN][128], swizzled
  uint8_t* meta_tiles = b_tiles + kStages * C::kActBytes;     // [stage][kMetaBytes]
  uint64_t* full = reinterpret_cast<uint64_t*>(meta_tiles + kStages * kMetaBytes);
  uint64_t* empty = full + kStages;
  // (In the dynamic allocation: a static __shared__ variable would put the dynamic base after
  // a 1 KB pad, for its alignment.)
  bool& last_cta = *reinterpret_cast<bool*>(empty + kStages);

  const int wg = threadIdx.x / 128;
  const int nk = (p.K + kChunkK - 1) / kChunkK;
  // This CTA's tile, and its part of K: the split along blockIdx.y, or with a tail split
  // (p.split_from > 0) the tiles before split_from whole and the CTAs past them the splits
  // of the tiles from it on, each tile's splits adjacent (slot: its workspace index).
  int tile = static_cast<int>(blockIdx.x), split = static_cast<int>(blockIdx.y);
  int splits = p.splits, slot = tile;
  if (p.split_from > 0) {
    const int i = tile - p.split_from;
    if (i < 0) {
      split = 0, splits = 1;
    } else {
      slot = i / p.splits, split = i % p.splits;
      tile = p.split_from + slot;
    }
  }
  const int c_begin = static_cast<int>(static_cast<int64_t>(nk) * split / splits);
  const int c_end = static_cast<int>(static_cast<int64_t>(nk) * (split + 1) / splits);
  const int steps = c_end - c_begin;
  const int token_tiles = (p.M + kN - 1) / kN;
  // The tile's row block (row tiles 8 bx ..) and first token: the tiles run over the row
  // blocks of a group of kRasterRows, then over its token tiles, then over the groups.
  const int row_blocks = (p.N + kRows - 1) / kRows;
  const int per_group = kRasterRows * token_tiles;
  const int first = tile / per_group * kRasterRows;
  const int in_group = min(kRasterRows, row_blocks - first);
  const int r_in = tile % per_group;
  const int bx = first + r_in % in_group;
  const int m0 = r_in / in_group * kN;

  if (threadIdx.x == 0) {
    WXA16_TRACE_NOW(kStart);
    // full: the TMA bytes and each metadata thread's arrival.
    sm90::init_ring(full, empty, kStages, kConsumerWarps, 1 + kMetaThreads);
    sm90::tma_prefetch_desc(&map_w);
    sm90::tma_prefetch_desc(&map_x);
  }
  __syncthreads();
  grid_dependency_wait();

  // 56 + 2 x 224 registers a thread (168 x 3 at launch): the consumers stay below 200.
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 56;");
    if (threadIdx.x == 0) {
      [[maybe_unused]] unsigned wait_empty = 0;
      for (int it = 0; it < steps; ++it) {
        const int s = it % kStages, c = c_begin + it;
        WXA16_TRACE_CLOCK(t0);
        sm90::mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);
        WXA16_TRACE_ADD(wait_empty, t0);
        sm90::mbar_expect_tx(&full[s], kWBytes + (kAbSkip == 3 ? 0 : C::kActBytes));
        if constexpr (Bits == 4)
          sm90::tma_load_3d(w_tiles + s * kWBytes, &map_w, &full[s], 0, c * kTileLines,
                            bx * kRowTiles);
        else
          sm90::tma_load_2d(w_tiles + s * kWBytes, &map_w, &full[s], c * kChunkK, bx * kRows);
        if constexpr (kAbSkip != 3)
          sm90::tma_load_2d(b_tiles + s * C::kActBytes, &map_x, &full[s], c * kChunkK, m0);
      }
      WXA16_TRACE_PUT(kWaitEmpty, wait_empty);
    } else if (threadIdx.x >= 32 && threadIdx.x < 32 + kMetaThreads) {
      stage_metadata<Bits, T, kAcc, kStages>(p, meta_tiles, full, empty, threadIdx.x - 32, bx,
                                             c_begin, c_end);
    }
    launch_dependents();
    // gather_splits holds CTA barriers: the producer joins them, with nothing to add (the
    // issuing lane rejoins its warp first: the barriers are warp-aligned).
    __syncwarp();
    float none[C::kRegs];
    if (splits > 1)
      gather_splits<C::kRegs, kConsumerThreads>(p, none, false, 0, last_cta, slot, split);
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 224;");
  const int cw = wg - 1, ctid = threadIdx.x - 128;
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int wt = cw * 4 + warp;  // this warp's row tile in the CTA
  const int rt = bx * kRowTiles + wt;

  // This lane's metadata entry in a stage (stage_metadata).
  const uint8_t* meta_entry = meta_tiles + (wt * 8 + g) * kMetaWords * 4;

  // How a chunk's products reach acc (the launcher picks kAcc):
  // - kAcc, one scale per row (group 0): the chunks accumulate in the tensor core, (u - z)
  //   being exact in x's dtype, and the rows' scales multiply acc once, after the mainloop;
  // - kAcc, int4 groups with scales of x's dtype: the weights are multiplied by their scales
  //   in registers, (u - z) * scale rounded once to x's dtype as the dequantize-then-GEMM
  //   path's weights are, and the chunks accumulate in the tensor core;
  // - else each chunk's partial, from zero, is promoted into acc with its rows' fp32 scales.
  // kAcc spares the promotion's kN / 2 FMAs a chunk and two partial tiles of registers
  // (bench/NOTES.md, "the tensor core keeps the sums").
  float acc[C::kRegs];
#pragma unroll
  for (int i = 0; i < C::kRegs; ++i) acc[i] = 0.f;
  // Each slot's sums: a partial tile, or (kAcc) acc itself.
  float part0_[kAcc ? 1 : C::kRegs], part1_[kAcc ? 1 : C::kRegs];
  float(&part0)[C::kRegs] = *reinterpret_cast<float(*)[C::kRegs]>(kAcc ? acc : part0_);
  float(&part1)[C::kRegs] = *reinterpret_cast<float(*)[C::kRegs]>(kAcc ? acc : part1_);
  uint32_t a0[4][4], a1[4][4];  // the A fragments of the chunk in flight in each slot
  float f0[2], f1[2];           // its rows' scales

  const uint32_t b_lo = sm90::desc_lo(b_tiles);
  constexpr uint32_t kBUnits = C::kActBytes / 16;
  const WeightWords<Bits> words(wt, g, t);
  [[maybe_unused]] unsigned wait_full = 0, fragments = 0;
  auto issue_into = [&](float(&d)[C::kRegs], uint32_t(&a)[4][4], float(&f)[2], int i) {
    const int s = (i) % kStages;
    WXA16_TRACE_CLOCK(t0);
    sm90::mbar_wait(&full[s], (i / kStages) & 1);
    WXA16_TRACE_ADD(wait_full, t0);
    if (i == 0 && ctid == 0) WXA16_TRACE_NOW(kFirstFull);
    WXA16_TRACE_CLOCK(t1);
    const uint8_t* wsm = w_tiles + s * kWBytes;
    // Zero pairs, prescale pairs (or ones), scales of rows g and g + 8.
    const uint4 e0 = *reinterpret_cast<const uint4*>(meta_entry + s * kMetaBytes);
    const uint2 e1 = *reinterpret_cast<const uint2*>(meta_entry + s * kMetaBytes + 16);
    const uint32_t z[2] = {e0.x, e0.y};
    const uint32_t sp[2] = {e0.z, e0.w};
    f[0] = __uint_as_float(e1.x);
    f[1] = __uint_as_float(e1.y);
    if constexpr (kAbSkip == 1 || kAbSkip == 3) {
#pragma unroll
      for (int k = 0; k < 4; ++k)
#pragma unroll
        for (int j = 0; j < 4; ++j) a[k][j] = 0x3c003c00u + static_cast<uint32_t>(i & 1);
    } else if constexpr (Bits == 4) {
      const uint4 v = words.gather(wsm, 0);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        int4_fragment<T>(v, k, z, a[k]);
        if constexpr (kAcc) {
#pragma unroll
          for (int j = 0; j < 4; ++j) a[k][j] = mul2<T>(a[k][j], sp[j & 1]);
        }
      }
    } else {  // rows g and g + 8 of the warp's tile
      const uint4 vg = words.gather(wsm, 0), vg8 = words.gather(wsm, 8 * kChunkK);
      (void)z;
      (void)sp;
#pragma unroll
      for (int k = 0; k < 4; ++k) int8_fragment<T>(vg, vg8, k, a[k]);
    }
    WXA16_TRACE_ADD(fragments, t1);
    sm90::fence_regs(d);
    sm90::wgmma_fence();
    // A partial starts from zero; in the tensor core the sums go on (zeroed above).
    if constexpr (kAbSkip != 2) {
      wgmma_rs<T, kN>(d, a[0], sm90::desc_of(b_lo + s * kBUnits), kAcc);
#pragma unroll
      for (int k = 1; k < 4; ++k)
        wgmma_rs<T, kN>(d, a[k], sm90::desc_of(b_lo + s * kBUnits + 2 * k), true);
    }
    sm90::wgmma_commit();
    sm90::fence_regs(d);
    return s;
  };
  auto finish_from = [&](float(&d)[C::kRegs], uint32_t(&a)[4][4], const float(&f)[2], int s) {
    sm90::fence_regs(d);
    // The wgmmas read their A registers asynchronously: keep them unchanged until here.
#pragma unroll
    for (int k = 0; k < 4; ++k)
#pragma unroll
      for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(a[k][j])::"memory");
    // Every lane's reads of the stage (its metadata entry's too, whose scales are used after
    // this) before the lane that releases it.
    __syncwarp();
    if (lane == 0) sm90::mbar_arrive(&empty[s]);
    if constexpr (!kAcc) {
#pragma unroll
      for (int j = 0; j < kN / 8; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[4 * j + r] = fmaf(d[4 * j + r], f[r / 2], acc[4 * j + r]);
    }
  };
  auto issue = [&](auto slot, int i) {
    if constexpr (decltype(slot)::value == 0)
      return issue_into(part0, a0, f0, i);
    else
      return issue_into(part1, a1, f1, i);
  };
  auto finish = [&](auto slot, int s) {
    if constexpr (decltype(slot)::value == 0)
      finish_from(part0, a0, f0, s);
    else
      finish_from(part1, a1, f1, s);
  };
  if (steps > 0) sm90::double_buffered_steps(steps, issue, finish, [] {});
  if (kAcc && p.group == 0 && steps > 0) {  // the rows' scales (f0: every chunk's)
#pragma unroll
    for (int j = 0; j < kN / 8; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[4 * j + r] *= f0[r / 2];
  }
  launch_dependents();
  if (ctid == 0) {
    WXA16_TRACE_NOW(kMainEnd);
    WXA16_TRACE_PUT(kWaitFull, wait_full);
    WXA16_TRACE_PUT(kFragments, fragments);
  }

  float(&flat)[C::kRegs] = acc;
  if (splits > 1 &&
      !gather_splits<C::kRegs, kConsumerThreads>(p, flat, true, ctid, last_cta, slot, split)) {
    if (ctid == 0) WXA16_TRACE_NOW(kEnd);
    return;
  }
  if constexpr (kN >= 128) {
    if (tma_out) {
      // The staging tiles reuse the ring's first stages: every consumer past its last reads
      // of them first (a split's gather has synchronized the CTA already).
      if (splits == 1) sm90::named_sync(1, kConsumerThreads);
      store_tile_tma<T, kN>(p, &map_out, acc, w_tiles + cw * kN * 128, rt, m0,
                            bx * kRows + cw * 64, warp, lane);
      if (ctid == 0) WXA16_TRACE_NOW(kEnd);
      return;
    }
  }
  store_tiles<1, kN / 8>(p, reinterpret_cast<const float(&)[1][kN / 8][4]>(acc), rt, m0, g, t);
  if (ctid == 0) WXA16_TRACE_NOW(kEnd);
#else
  __trap();  // built without sm_90a: the host never launches this
#endif
}

// The weight's map: the prepacked int4 tensor as [row tiles][chunks x 4][128 bytes], boxes
// of 8 row tiles x one chunk's 4 lines (4 KB) with the 128-byte swizzle; int8: w [N][K] bytes
// (row stride ldw) in boxes of 128 rows x 64 bytes with the 64-byte swizzle (see
// WeightWords). x's: [M][K] 16-bit elements in [kn][64] boxes with the 128-byte swizzle.
// Rows and chunks past the ends read as zero.
// Kept in the launch object's cache (p.map_cache) between calls.
inline bool make_maps(CUtensorMap* w, CUtensorMap* x, const WXA16GemmArgs& p, int kn) {
  const int nk = (p.K + kChunkK - 1) / kChunkK;
  auto slot = [&](TensorMapCache::Role r) {
    return p.map_cache != nullptr ? p.map_cache->slot(r) : nullptr;
  };
  const bool w_ok =
      p.bits == 4
          ? sm90::encode_3d(w, slot(TensorMapCache::kB), CU_TENSOR_MAP_DATA_TYPE_UINT32,
                            const_cast<void*>(p.w), kLineWords,
                            static_cast<uint64_t>(nk) * kTileLines,
                            static_cast<uint64_t>((p.N + 15) / 16), kLineWords * 4,
                            static_cast<uint64_t>(nk) * kTileBytes4, kLineWords, kTileLines,
                            kRowTiles, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B)
          : sm90::encode_2d(w, slot(TensorMapCache::kB), CU_TENSOR_MAP_DATA_TYPE_UINT8,
                            const_cast<void*>(p.w), static_cast<uint64_t>(p.K),
                            static_cast<uint64_t>(p.N), static_cast<uint64_t>(p.ldw), kChunkK,
                            kRows, CU_TENSOR_MAP_SWIZZLE_64B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
  return w_ok &&
         sm90::encode_2d(x, slot(TensorMapCache::kA), CU_TENSOR_MAP_DATA_TYPE_UINT16,
                         const_cast<void*>(p.x),
                         static_cast<uint64_t>(p.K), static_cast<uint64_t>(p.M),
                         static_cast<uint64_t>(p.ldx) * 2, kChunkK, static_cast<uint32_t>(kn),
                         CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

// Whether the chunks' sums may stay in the tensor core (kAcc): one scale per row, or int4
// groups whose scales are x's dtype (the prescale reads the scale bits as x's dtype).
template <int Bits>
inline bool sums_in_tensor_core(const WXA16GemmArgs& p) {
  return p.group == 0 || (Bits == 4 && p.scale_dtype == p.x_dtype);
}

template <int Bits, typename T, int kN, bool kAcc>
cudaError_t run(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  if (kAcc && !sums_in_tensor_core<Bits>(p)) return cudaErrorInvalidValue;
  using C = Config<Bits, kN, kAcc>;
  const auto kernel = wxa16_wgmma_kernel<Bits, T, kN, kAcc>;
  const int64_t row_blocks = (p.N + kRows - 1) / kRows, token_tiles = (p.M + kN - 1) / kN;
  if (row_blocks * token_tiles > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(row_blocks * token_tiles), 1, 1);
  int device = 0;
  static std::atomic<bool> opted[kMaxDevices];
  cudaError_t e = current_device(device);
  if (e == cudaSuccess) e = opt_in_smem(kernel, C::kSmemBytes, device, opted);
  if (e != cudaSuccess) return e;
  if (plan) {
    p.group_shift = group_shift(p.group);
    // One CTA per SM: split K until the grid fills whole waves, each split at least
    // kStages chunks (a full ring); fewer splits win ties, as the decode kernel plans. A grid
    // of a wave or more does not split every tile: the partials' round trip and each split's
    // ring fill cost more than the last wave's idle SMs (H100, w4a16 1024 x 14336 x 4096 in
    // 256-token tiles, 448 CTAs: 246 us in two splits, 178 in one); only its last partial
    // wave may be split (below).
    const int64_t sms = sm_count_or(device, 132);
    const int64_t tiles = grid.x;
    const int nk = (p.K + kChunkK - 1) / kChunkK;
    int best = 1;
    int64_t best_cost = -1;
    for (int s = 1; s <= (tiles >= sms ? 1 : 16) && s * C::kStages <= nk; ++s) {
      const int64_t waves = (tiles * s + sms - 1) / sms;
      const int64_t cost = waves * ((nk + s - 1) / s + C::kStages);
      if (best_cost < 0 || cost < best_cost) best = s, best_cost = cost;
    }
    p.splits = best;
    p.split_from = 0;
    // A grid of more than a wave whose last wave fills at most half the SMs: the tiles of
    // that wave split s ways (s x its tiles at most one wave), the others whole. Its cost
    // beside the whole last wave's: s-th of the chunks, the ring's fill, and the gather
    // (the last CTA reads s + 1 slots of partials, about 2 chunks' time each; a 256-token
    // tile's slot is 128 KB). w4a16 1024 x 14336 x 4096 (448 tiles on 132 SMs, 52 in the
    // last wave): 3 waves + 104 half tiles instead of 4 waves.
    const int64_t full = tiles / sms, rem = tiles % sms;
    const int s = rem > 0 ? static_cast<int>(std::min<int64_t>(4, sms / rem)) : 1;
    if (full > 0 && s >= 2 && s * C::kStages <= nk &&
        (nk + s - 1) / s + C::kStages + 2 * (s + 1) < nk + C::kStages) {
      p.splits = s;
      p.split_from = static_cast<int>(tiles - rem);
      plan_workspace(p, rem, kConsumerThreads, C::kRegs);
      return cudaSuccess;
    }
    plan_workspace(p, tiles, kConsumerThreads, C::kRegs);
    return cudaSuccess;
  }
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  e = check_launch_args(p, grid);
  if (e != cudaSuccess) return e;
  CUtensorMap map_w, map_x, map_out{};
  if (!make_maps(&map_w, &map_x, p, kN)) return cudaErrorInvalidValue;
  // 128- and 256-token tiles store through TMA where out's base and rows are 16-byte
  // aligned (store_tile_tma); else, and for smaller tiles, thread by thread.
  const bool tma_out =
      kN >= 128 && reinterpret_cast<uintptr_t>(p.out) % 16 == 0 && p.ldo % 8 == 0 &&
      sm90::make_map_out(&map_out, p.out,
                         p.x_dtype == FloatType::kBF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                       : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                         2, p.M, p.N, p.ldo, kN,
                         p.map_cache != nullptr ? p.map_cache->slot(TensorMapCache::kOut)
                                                : nullptr);
  if (p.split_from < 0 || p.split_from >= static_cast<int64_t>(grid.x))
    return cudaErrorInvalidValue;
  // A tail split's CTAs follow the whole tiles' along x (the kernel maps them back).
  const dim3 ctas = p.split_from > 0
                        ? dim3(static_cast<unsigned>(p.split_from +
                                                     (grid.x - p.split_from) * p.splits))
                        : dim3(grid.x, p.splits, 1);
  const LaunchConfig cfg(ctas, kThreads, C::kSmemBytes, stream, 1, programmatic_launch());
  return launch_status(
      cudaLaunchKernelEx(cfg.get(), kernel, map_w, map_x, map_out, p, tma_out));
}

// Whether 128-token tiles (kAcc) serve M: above M = 128, and from M = 65 for int4, whose
// dequantization the larger tile does once where two 64-token tiles do it twice (H100,
// w4a16: 42.2 against 63.0 us at 128 x 14336 x 4096, 45.5 against 57.2 at 128 x 4096 x
// 14336, 25.1 against 24.1 at 128 x 4096 x 4096). int8, with twice the bytes a chunk and
// less dequantization, only where 64-token tiles would take more than one wave of CTAs
// (46.6 against 57.7 us at 128 x 14336 x 4096); within one wave the 64-token grid splits K
// less and leads (31.9 against 36.9 us at 128 x 8192 x 4096). These were timed while x was
// still permuted in shared memory (before e1dc072), a cost that grew with the token tile.
// LOWBIT_WXA16_N128_ABOVE, a build flag for bench/wxa16_ab.sh, puts the start at a fixed M
// instead.
template <int Bits>
inline bool takes_128_token_tiles(const WXA16GemmArgs& p) {
#ifdef LOWBIT_WXA16_N128_ABOVE
  return p.M > LOWBIT_WXA16_N128_ABOVE;
#else
  if (p.M <= 64) return false;
  if (p.M > 128 || Bits == 4) return true;
  return (p.N + kRows - 1) / kRows * 2 > current_sm_count(132);
#endif
}

// Whether 256-token tiles (kAcc) serve M: each 64-K chunk of weight is dequantized once for
// twice the tokens of a 128-token tile, and one m64n256k16 wgmma does the work of two
// m64n128k16, so the conversion's share of a chunk halves (the tensor core then bounds the
// chunk). LOWBIT_WXA16_N256_ABOVE, a build flag for bench/wxa16_ab.sh, moves the start.
// They take M > 128 where they make at least half a wave of CTAs; below that the 128-token
// grid, split less, leads (H100, w4a16: 53.0 against 66.0 us at 256 x 14336 x 4096, 112
// CTAs; 54.5 against 65.7 at 1024 x 4096 x 4096, 128 CTAs; 35.4 against 28.2 at
// 256 x 4096 x 4096, 32 CTAs).
inline bool takes_256_token_tiles(const WXA16GemmArgs& p) {
#ifdef LOWBIT_WXA16_N256_ABOVE
  return p.M > LOWBIT_WXA16_N256_ABOVE;
#else
  if (p.M <= 128) return false;
  return (p.N + kRows - 1) / kRows * ((p.M + 255) / 256) * 2 >= current_sm_count(132);
#endif
}

// Token tiles: 32 up to M = 32, 64, or 128 and 256 above (takes_128_token_tiles,
// takes_256_token_tiles) where the tensor core keeps the sums (kAcc: 3 x 64 fp32 registers
// a thread, with partial tiles, would not fit).
// kAcc under one scale per row, and for int4 groups with scales of x's dtype from 33 tokens
// (at 32 the multiplies ahead of the wgmmas cost more than the promotion they spare).
template <int Bits, typename T>
cudaError_t run_of(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  const bool acc = sums_in_tensor_core<Bits>(p);
  if (p.M <= 32) {
    return p.group == 0 ? run<Bits, T, 32, true>(p, stream, plan)
                        : run<Bits, T, 32, false>(p, stream, plan);
  }
  if (acc && takes_256_token_tiles(p)) return run<Bits, T, 256, true>(p, stream, plan);
  if (acc && takes_128_token_tiles<Bits>(p)) return run<Bits, T, 128, true>(p, stream, plan);
  return acc ? run<Bits, T, 64, true>(p, stream, plan) : run<Bits, T, 64, false>(p, stream, plan);
}

// The checks of both launchers: G = 64, 128 or one scale per row; x 16-byte aligned rows;
// int8, w's rows too (TMA).
template <int Bits>
cudaError_t launch(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  if (p.bits != Bits || (p.group != 0 && p.group != 64 && p.group != 128) || p.K % 16 ||
      p.ldx % 8 || (!plan && reinterpret_cast<uintptr_t>(p.x) % 16))
    return cudaErrorInvalidValue;
  if (Bits == 8 && (p.ldw % 16 || (!plan && reinterpret_cast<uintptr_t>(p.w) % 16)))
    return cudaErrorInvalidValue;
  if (p.x_dtype == FloatType::kBF16) return run_of<Bits, __nv_bfloat16>(p, stream, plan);
  if (p.x_dtype == FloatType::kF16) return run_of<Bits, __half>(p, stream, plan);
  return cudaErrorInvalidValue;
}

}  // namespace wg
}  // namespace wxa16

// The launchers of the family table (wxa16_gemm.h).
cudaError_t sm90_w4a16_gemm_wgmma(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  return wxa16::wg::launch<4>(p, stream, plan);
}
cudaError_t sm90_w8a16_gemm_wgmma(WXA16GemmArgs& p, cudaStream_t stream, bool plan) {
  return wxa16::wg::launch<8>(p, stream, plan);
}

}  // namespace lowbit
