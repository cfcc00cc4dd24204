// The quantizers' reduction + encode skeleton (templates; each family instantiates it with
// its codec, one input dtype per translation unit: fp8/fp8_quant_{f32,bf16,f16}.cu,
// int8/int8_quant_{f32,bf16,f16}.cu, and the dequantizers in fp8/fp8_dequant.cu,
// int8/int8_dequant.cu).
//
// Work unit: a *chunk* of 16 consecutive elements of one row, so that the 16 one-byte codes
// leave in one 16-byte store. A chunk is loaded with 16-byte vector loads when the row is
// contiguous and aligned (2 x LDG.128 for bf16/fp16, 4 for fp32), else element by element
// through the strides (non-contiguous last dim, odd offsets, ragged tails). Everything is
// indexed in 64-bit.
//
// A *team* of 2^k threads covers a row (several rows per CTA when rows are short); long rows
// of the streaming kernels are cut into segments, one CTA each.
// - kStream: the scale of each chunk comes from a static scale tensor (any granularity), from
//   the per-tensor amax words of pass 1, or (dyn_group: group and 1x128-block granularity)
//   from the chunk's group: 2/4/8 consecutive chunks held by consecutive lanes, whose
//   statistic is a few xor-shuffles. One read of the input.
// - kDynRow (token / channel): the team keeps its row in registers (up to kCache chunks per
//   thread), reduces the statistic across the team, then encodes from the registers: one
//   DRAM read. Rows longer than team * kCache chunks read the remainder twice (the second
//   time from L1/L2).
// - quant_block128_kernel: one 256-thread CTA per 128x128 tile, the tile in registers.
// - amax_kernel: pass 1 of per-tensor dynamic scaling, one atomicMax per word per CTA.
//
// The codec (a template parameter) is what differs between families:
//   using Key;     the statistic a dynamic scale needs: AbsKey (max |x|) or RangeKey (the
//                  range widened to include 0), each a few uint32 words reduced by max
//   struct Scale;  what encoding one slice needs (scale, 1 / scale, zero point)
//   static constexpr bool kRunsHere;  false where this arch lacks the codec's instructions
//   Codec(const KernelParams&);
//   Scale dynamic(const Key&);                          the dynamic scale of a statistic
//   Scale given(const KernelParams&, int64_t sidx);     a static scale (and zero point)
//   void store(const KernelParams&, int64_t sidx, const Scale&);  scale_out (and zero_out)
//   uint32_t encode4(const Scale&, float a, float b, float c, float d);  4 codes, packed
// A dequantizer's decoder: Dec(const KernelParams&); Scale at(const KernelParams&, sidx);
//   void decode4(uint32_t four_codes, const Scale&, float (&v)[4]).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/launch.h"
#include "common/pdl.cuh"
#include "common/quant_launch.h"
#include "common/quant_math.cuh"

namespace lowbit {
namespace quant {
namespace detail {

constexpr int kChunk = 16;

// ------------------------------------------------------------------------- element types
template <FloatType T>
struct Elem;  // kCache must agree with cache_chunks() in common/quant_launch.h

template <>
struct Elem<FloatType::kF32> {
  using Raw = uint32_t;
  static constexpr int kCache = 2;  // chunks a thread keeps in registers (16 regs each)
};
template <>
struct Elem<FloatType::kBF16> {
  using Raw = uint16_t;
  static constexpr int kCache = 4;  // 8 regs each
};
template <>
struct Elem<FloatType::kF16> {
  using Raw = uint16_t;
  static constexpr int kCache = 4;
};

static_assert(Elem<FloatType::kF32>::kCache == 2 && Elem<FloatType::kBF16>::kCache == 4 &&
                  Elem<FloatType::kF16>::kCache == 4,
              "cache_chunks() in common/quant_launch.h plans with these numbers");

// 16 raw input elements, packed as the memory holds them.
template <FloatType T>
struct Chunk {
  static constexpr int kWords = kChunk * int(sizeof(typename Elem<T>::Raw)) / 4;
  uint32_t w[kWords];
};

// Element j (0: the low half) of a packed pair of 16-bit elements of type T as fp32, exactly.
template <FloatType T>
__device__ __forceinline__ float pair_elem_f32(uint32_t w, int j) {
  static_assert(T != FloatType::kF32, "16-bit elements");
  if constexpr (T == FloatType::kBF16)
    return j ? u2f(w & 0xFFFF0000u) : u2f(w << 16);
  else
    return f16_bits_to_f32(j ? (w >> 16) : (w & 0xFFFFu));
}

template <FloatType T>
__device__ __forceinline__ float elem_f32(const Chunk<T>& c, int j) {
  if constexpr (T == FloatType::kF32)
    return u2f(c.w[j]);
  else
    return pair_elem_f32<T>(c.w[j >> 1], j & 1);
}

// |x| of 16-bit inputs, on packed pairs: their 15-bit magnitudes order exactly like the fp32
// values (NaN above Inf), so a max of pairs (pair_abs_max: both halves at once) then of the two
// halves gives the max |x|, as an abs_key (pair_abs_key).
__device__ __forceinline__ uint32_t pair_abs_max(uint32_t k2, uint32_t w) {
  return __vmaxu2(k2, w & 0x7FFF7FFFu);
}
template <FloatType T>
__device__ __forceinline__ uint32_t pair_abs_key(uint32_t k2) {
  static_assert(T != FloatType::kF32, "16-bit elements");
  const uint32_t k16 = max(k2 >> 16, k2 & 0xFFFFu);
  if constexpr (T == FloatType::kBF16)
    return k16 << 16;
  else
    return abs_key(f16_bits_to_f32(k16));
}

// max |x| over the chunk as an abs_key (NaN above Inf).
template <FloatType T>
__device__ __forceinline__ uint32_t chunk_key(const Chunk<T>& c) {
  if constexpr (T == FloatType::kF32) {
    uint32_t k = 0;
#pragma unroll
    for (int j = 0; j < kChunk; ++j) k = max(k, c.w[j] & 0x7FFFFFFFu);
    return k;
  } else {
    uint32_t k2 = 0;
#pragma unroll
    for (int i = 0; i < Chunk<T>::kWords; ++i) k2 = pair_abs_max(k2, c.w[i]);
    return pair_abs_key<T>(k2);
  }
}

// Loads `count` (<= 16) elements p[0], p[stride], ...; the rest of the chunk is zero.
// vec: p is 16-byte aligned and stride is 1, so a full chunk is read with 16-byte loads.
template <FloatType T>
__device__ __forceinline__ void load_chunk(Chunk<T>& c, const typename Elem<T>::Raw* p,
                                           int64_t stride, int count, bool vec) {
  using Raw = typename Elem<T>::Raw;
  if (vec && count == kChunk) {
    const uint4* v = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < Chunk<T>::kWords / 4; ++i) {
      const uint4 t = __ldg(v + i);
      c.w[4 * i + 0] = t.x;
      c.w[4 * i + 1] = t.y;
      c.w[4 * i + 2] = t.z;
      c.w[4 * i + 3] = t.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < Chunk<T>::kWords; ++i) c.w[i] = 0;
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      if (j < count) {
        const uint32_t r = __ldg(p + j * stride);
        if constexpr (sizeof(Raw) == 4) {
          c.w[j] = r;
        } else {
          c.w[j >> 1] |= (j & 1) ? (r << 16) : r;
        }
      }
    }
  }
}

// Stores `count` codes at q (contiguous); vec: q is 16-byte aligned.
__device__ __forceinline__ void store_codes(uint8_t* q, const uint32_t (&o)[4], int count,
                                            bool vec) {
  if (vec && count == kChunk) {
    *reinterpret_cast<uint4*>(q) = make_uint4(o[0], o[1], o[2], o[3]);
  } else {
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      if (j < count) q[j] = static_cast<uint8_t>(o[j >> 2] >> (8 * (j & 3)));
    }
  }
}

__device__ __forceinline__ int chunk_count(int64_t cols, int64_t c) {
  const int64_t left = cols - c * kChunk;
  return left >= kChunk ? kChunk : static_cast<int>(left);
}

// Max over the team of `team` threads (a power of two; several teams may share a warp or
// a CTA). Every thread of the CTA must call it (it may hold __syncthreads).
__device__ __forceinline__ uint32_t team_max(uint32_t v, int team, uint32_t* red) {
  if (team >= 32) {
    v = __reduce_max_sync(0xFFFFFFFFu, v);
  } else {
    for (int off = team >> 1; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(0xFFFFFFFFu, v, off));
  }
  if (team > 32) {
    const int warp = threadIdx.x >> 5;
    __syncthreads();  // `red` may still be read from a previous call
    if ((threadIdx.x & 31) == 0) red[warp] = v;
    __syncthreads();
    const int nw = team >> 5;
    const int first = (threadIdx.x / team) * nw;
    v = 0;
    for (int i = 0; i < nw; ++i) v = max(v, red[first + i]);
  }
  return v;
}

template <FloatType T>
__device__ __forceinline__ const typename Elem<T>::Raw* row_ptr(const KernelParams& p, int64_t row) {
  return static_cast<const typename Elem<T>::Raw*>(p.x) + row * p.row_stride;
}

// ------------------------------------------------------------------------ statistics
// kN uint32 words, each reduced by max (so atomicMax merges CTAs); 0 is the identity.
template <int kN>
struct MaxWords {
  static constexpr int kWords = kN;
  uint32_t w[kN] = {};
};

template <class K>
__device__ __forceinline__ void merge(K& a, const K& b) {
#pragma unroll
  for (int i = 0; i < K::kWords; ++i) a.w[i] = max(a.w[i], b.w[i]);
}

// Max with the lane `off` away (xor), every word.
template <class K>
__device__ __forceinline__ void merge_lane(K& a, int off) {
#pragma unroll
  for (int i = 0; i < K::kWords; ++i) a.w[i] = max(a.w[i], __shfl_xor_sync(0xFFFFFFFFu, a.w[i], off));
}

// team_max of every word.
template <class K>
__device__ __forceinline__ K team_max(K k, int team, uint32_t* red) {
#pragma unroll
  for (int i = 0; i < K::kWords; ++i) k.w[i] = team_max(k.w[i], team, red);
  return k;
}

template <class K>
__device__ __forceinline__ K load_key(const uint32_t* words) {
  K k;
#pragma unroll
  for (int i = 0; i < K::kWords; ++i) k.w[i] = words[i];
  return k;
}

// max |x| as an abs_key (NaN above Inf): symmetric scales.
struct AbsKey : MaxWords<1> {
  template <FloatType T>
  __device__ __forceinline__ static AbsKey of(const Chunk<T>& c) {
    AbsKey k;
    k.w[0] = chunk_key<T>(c);
    return k;
  }
};

// The range [min(x, 0), max(x, 0)] as two magnitudes: w[0] = max(x, 0), w[1] = -min(x, 0),
// as fp32 bit patterns (ordered like the values); a NaN goes into both words, above every
// finite value and Inf, so it propagates to both ends, as np.min / np.max do.
struct RangeKey : MaxWords<2> {
  template <FloatType T>
  __device__ __forceinline__ static RangeKey of(const Chunk<T>& c) {
    RangeKey k;
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      const uint32_t b = f2u(elem_f32(c, j));
      const uint32_t mag = b & 0x7FFFFFFFu;
      const bool nan = mag > 0x7F800000u;
      const bool neg = (b >> 31) != 0u;
      k.w[0] = max(k.w[0], (!neg || nan) ? mag : 0u);
      k.w[1] = max(k.w[1], (neg || nan) ? mag : 0u);
    }
    return k;
  }
};

// -------------------------------------------------------------------- absmax codecs
// A symmetric codec from an element encoder: scale = max(absmax / qmax, 2^-126), codes =
// encode(x * (1 / scale)). Enc(fmt, saturate) gives qmax() and encode4 of four products.
// Whether an element encoder has encode4_in_range: encode4 for finite values known to lie
// within [-qmax, qmax] (AbsmaxCodec::DynScale).
template <class E, class = void>
struct HasInRange : std::false_type {};
template <class E>
struct HasInRange<E, std::void_t<decltype(&E::encode4_in_range)>> : std::true_type {};

template <class Enc>
struct AbsmaxCodec {
  using Key = AbsKey;
  struct Scale {
    float s, inv;
  };
  // A scale made from the slice's own |x| max. With a finite max every x * inv is finite and
  // within qmax (1 + 3 ulp), so an encoder's NaN rule and clamp cannot change a code; with
  // an Inf or NaN in the slice (the max is NaN then: NaN keys lie above Inf) the scale is
  // not finite and every product is 0 or NaN. Code that keeps this type takes the encoder's
  // encode4_in_range and kNonFinite4 (its packed codes of such a slice) where it has them.
  struct DynScale : Scale {
    bool finite;
  };
  static constexpr bool kRunsHere = Enc::kRunsHere;
  Enc enc;

  __device__ __forceinline__ explicit AbsmaxCodec(const KernelParams& p) : enc(p.fmt, p.saturate) {}
  __device__ __forceinline__ DynScale dynamic(const Key& k) const {
    const float s = scale_from_key(k.w[0], enc.qmax());
    return {{s, __frcp_rn(s)}, (f2u(s) & 0x7F800000u) != 0x7F800000u};
  }
  __device__ __forceinline__ Scale given(const KernelParams& p, int64_t sidx) const {
    const float s = p.scale_in[sidx];
    return {s, __frcp_rn(s)};
  }
  __device__ __forceinline__ void store(const KernelParams& p, int64_t sidx, const Scale& sc) const {
    p.scale_out[sidx] = sc.s;
  }
  __device__ __forceinline__ uint32_t encode4(const Scale& sc, float a, float b, float c,
                                              float d) const {
    return enc.encode4(mul_rn(a, sc.inv), mul_rn(b, sc.inv), mul_rn(c, sc.inv), mul_rn(d, sc.inv));
  }
  __device__ __forceinline__ uint32_t encode4(const DynScale& sc, float a, float b, float c,
                                              float d) const {
    if constexpr (HasInRange<Enc>::value) {
      if (!sc.finite) return Enc::kNonFinite4;  // uniform over the slice
      return enc.encode4_in_range(mul_rn(a, sc.inv), mul_rn(b, sc.inv), mul_rn(c, sc.inv),
                                  mul_rn(d, sc.inv));
    } else {
      return encode4(static_cast<const Scale&>(sc), a, b, c, d);
    }
  }
};

// Encodes a chunk: 4 codes per word.
// Scale: the codec's Scale, or a type it derives (AbsmaxCodec::DynScale), which picks its
// own encode4 overload.
template <class Codec, FloatType T, class Scale>
__device__ __forceinline__ void encode_chunk(const Codec& codec, const Chunk<T>& c,
                                             const Scale& sc, uint32_t (&o)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    o[i] = codec.encode4(sc, elem_f32(c, 4 * i + 0), elem_f32(c, 4 * i + 1),
                         elem_f32(c, 4 * i + 2), elem_f32(c, 4 * i + 3));
  }
}

// ------------------------------------------------------------------------ quantize rows
template <FloatType T, class Codec, QuantKernel kMode>
__device__ __forceinline__ void quant_rows_body(const KernelParams& p);

// The streaming mode runs 256-thread CTAs (common/quant_heuristics.h).
template <FloatType T, class Codec, QuantKernel kMode>
__global__ void __launch_bounds__(kStreamThreads, kStreamMinBlocks)
    quant_rows_kernel(const KernelParams p) {
  static_assert(kMode == QuantKernel::kStream, "per-row scales: quant_dynrow_kernel");
  if constexpr (!Codec::kRunsHere) {
    __trap();  // never launched: the launcher checks the device
  } else {
    // Launched programmatically on sm_90+ (launch_quant_kernel): wait for the kernel before
    // (it may have written x), then let the next one (the GEMM reading q) start its setup.
    // Wait first, then trigger, in every quantizer kernel: a layer's GEMM loads its weight
    // before its own wait (GemmArgs::b_static) on the strength of that order.
    grid_dependency_wait();
    launch_dependents();
    quant_rows_body<T, Codec, kMode>(p);
  }
}

// Per-row dynamic scales: teams of up to kDynRowMaxThreads keep the row in registers, three
// CTAs per SM (common/quant_launch.h). Code for archs below sm_89 keeps two: there the
// software fp8 encoder and the asymmetric int8 codec spill at the 80 registers three leave.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
constexpr int kDynRowCtas = 2;
#else
constexpr int kDynRowCtas = kDynRowMinBlocks;
#endif

template <FloatType T, class Codec>
__global__ void __launch_bounds__(kDynRowMaxThreads, kDynRowCtas)
    quant_dynrow_kernel(const KernelParams p) {
  if constexpr (!Codec::kRunsHere) {
    __trap();  // never launched: the launcher checks the device
  } else {
    grid_dependency_wait();  // as in quant_rows_kernel
    launch_dependents();
    quant_rows_body<T, Codec, QuantKernel::kDynRow>(p);
  }
}

template <FloatType T, class Codec, QuantKernel kMode>
__device__ __forceinline__ void quant_rows_body(const KernelParams& p) {
  static_assert(kMode == QuantKernel::kStream || kMode == QuantKernel::kDynRow,
                "quant_rows_kernel runs the streaming and the per-row modes");
  constexpr int kCache = Elem<T>::kCache;
  __shared__ uint32_t red[32];
  const Codec codec(p);

  const int team = p.team;
  const int t = threadIdx.x & (team - 1);
  const int rows_per_cta = blockDim.x / team;
  const int64_t nchunks = (p.cols + kChunk - 1) / kChunk;
  const int64_t nrowgroups = (p.rows + rows_per_cta - 1) / rows_per_cta;
  const int64_t nwork = nrowgroups * p.nsegs;
  const int64_t sc = p.col_stride;
  uint8_t* const q = static_cast<uint8_t*>(p.out);

  using Key = typename Codec::Key;
  using Scale = typename Codec::Scale;
  // One scale for the whole input (static per tensor, or pass 2 of dynamic per tensor):
  // read and inverted once.
  const bool uniform = !p.dyn_group && p.th_shift == kShiftAll && p.tw_shift == kShiftAll;
  Scale scl_uniform{};
  if constexpr (kMode == QuantKernel::kStream) {
    if (uniform) {
      scl_uniform = p.amax_key != nullptr ? codec.dynamic(load_key<Key>(p.amax_key))
                                         : codec.given(p, 0);
    }
  }

  // The loop bounds are uniform across the CTA: team_max's barriers and the group
  // shuffles see every thread.
  for (int64_t b = blockIdx.x; b < nwork; b += gridDim.x) {
    const int64_t rg = b / p.nsegs;
    const int64_t seg = b - rg * p.nsegs;
    const int64_t row = rg * rows_per_cta + threadIdx.x / team;
    const bool row_ok = row < p.rows;
    const auto* xrow = row_ptr<T>(p, row_ok ? row : 0);
    uint8_t* qrow = q + (row_ok ? row : 0) * p.cols;

    if constexpr (kMode == QuantKernel::kDynRow) {
      Chunk<T> v[kCache];
      Key key;
      // Issue every load before the first use: a use between two loads (inside the branchy
      // load code) would make each wait for the previous one.
#pragma unroll
      for (int i = 0; i < kCache; ++i) {
        const int64_t c = int64_t(i) * team + t;
        if (row_ok && c < nchunks) {
          load_chunk<T>(v[i], xrow + c * kChunk * sc, sc, chunk_count(p.cols, c), p.vec_load);
        }
      }
#pragma unroll
      for (int i = 0; i < kCache; ++i) {
        const int64_t c = int64_t(i) * team + t;
        if (row_ok && c < nchunks) merge(key, Key::of(v[i]));
      }
      for (int64_t c = int64_t(kCache) * team + t; row_ok && c < nchunks; c += team) {
        Chunk<T> u;
        load_chunk<T>(u, xrow + c * kChunk * sc, sc, chunk_count(p.cols, c), p.vec_load);
        merge(key, Key::of(u));
      }
      key = team_max(key, team, red);
      const auto scl = codec.dynamic(key);  // its own type: encoders may skip the clamp
      if (row_ok && t == 0) codec.store(p, row, scl);
#pragma unroll
      for (int i = 0; i < kCache; ++i) {
        const int64_t c = int64_t(i) * team + t;
        if (row_ok && c < nchunks) {
          uint32_t o[4];
          encode_chunk(codec, v[i], scl, o);
          store_codes(qrow + c * kChunk, o, chunk_count(p.cols, c), p.vec_store);
        }
      }
      // Rows longer than the registers: the second read of the rest comes from L1/L2.
      for (int64_t c = int64_t(kCache) * team + t; row_ok && c < nchunks; c += team) {
        Chunk<T> u;
        load_chunk<T>(u, xrow + c * kChunk * sc, sc, chunk_count(p.cols, c), p.vec_load);
        uint32_t o[4];
        encode_chunk(codec, u, scl, o);
        store_codes(qrow + c * kChunk, o, chunk_count(p.cols, c), p.vec_store);
      }
    } else {
      // kStream. The scale of chunk c is at sidx: a static tensor's entry, the per-tensor
      // amax word's (pass 2), or the chunk's group, reduced here (dyn_group).
      const int64_t c_begin = seg * p.seg_chunks;
      const int64_t c_end = min(nchunks, c_begin + p.seg_chunks);
      const uint64_t th_mask = (uint64_t(1) << p.th_shift) - 1;
      const uint64_t tw_mask = (uint64_t(1) << p.tw_shift) - 1;
      for (int64_t base = c_begin; base < c_end; base += int64_t(kCache) * team) {
        // All loads of the batch first, so kCache chunks per thread are in flight.
        Chunk<T> v[kCache];
        Key key[kCache];
#pragma unroll
        for (int i = 0; i < kCache; ++i) {
          const int64_t c = base + int64_t(i) * team + t;
          if (row_ok && c < c_end) {
            load_chunk<T>(v[i], xrow + c * kChunk * sc, sc, chunk_count(p.cols, c), p.vec_load);
          }
        }
        if (p.dyn_group) {
          // A group's chunks sit on group_lanes consecutive lanes of one warp.
#pragma unroll
          for (int i = 0; i < kCache; ++i) {
            const int64_t c = base + int64_t(i) * team + t;
            if (row_ok && c < c_end) key[i] = Key::of(v[i]);
            for (int off = p.group_lanes >> 1; off > 0; off >>= 1) merge_lane(key[i], off);
          }
        }
#pragma unroll
        for (int i = 0; i < kCache; ++i) {
          const int64_t c = base + int64_t(i) * team + t;
          if (row_ok && c < c_end) {
            const int64_t col = c * kChunk;
            const int64_t sidx = (row >> p.th_shift) * p.s_ld + (col >> p.tw_shift);
            Scale scl = scl_uniform;
            if (!uniform) scl = p.dyn_group ? codec.dynamic(key[i]) : codec.given(p, sidx);
            // The chunk at a scale tile's top-left corner writes the scale out.
            if (((uint64_t(row) & th_mask) | (uint64_t(col) & tw_mask)) == 0) {
              codec.store(p, sidx, scl);
            }
            uint32_t o[4];
            encode_chunk(codec, v[i], scl, o);
            store_codes(qrow + c * kChunk, o, chunk_count(p.cols, c), p.vec_store);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------- quantize 128x128 blocks
// 256 threads: 32 rows x 8 chunks per pass, 4 passes per tile.
constexpr int kBlockThreads = kBlock128Threads;

template <FloatType T, class Codec>
__device__ __forceinline__ void quant_block128_body(const KernelParams& p);

template <FloatType T, class Codec>
__global__ void __launch_bounds__(kBlockThreads, kStreamMinBlocks) quant_block128_kernel(const KernelParams p) {
  if constexpr (!Codec::kRunsHere) {
    __trap();  // never launched: the launcher checks the device
  } else {
    grid_dependency_wait();  // as in quant_rows_kernel
    launch_dependents();
    quant_block128_body<T, Codec>(p);
  }
}

template <FloatType T, class Codec>
__device__ __forceinline__ void quant_block128_body(const KernelParams& p) {
  __shared__ uint32_t red[32];
  const Codec codec(p);
  const int64_t ntc = (p.cols + 127) / 128;
  const int64_t ntiles = ((p.rows + 127) / 128) * ntc;
  const int cc = threadIdx.x & 7;
  const int r0 = threadIdx.x >> 3;
  const int64_t sc = p.col_stride;
  uint8_t* const q = static_cast<uint8_t*>(p.out);

  for (int64_t b = blockIdx.x; b < ntiles; b += gridDim.x) {
    const int64_t tr = b / ntc;
    const int64_t tc = b - tr * ntc;
    const int64_t col = tc * 128 + cc * kChunk;
    const int64_t left = p.cols - col;
    const int count = left >= kChunk ? kChunk : (left > 0 ? static_cast<int>(left) : 0);
    Chunk<T> v[4];
    typename Codec::Key key;
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // all loads first (see quant_rows_body)
      const int64_t row = tr * 128 + r0 + 32 * i;
      if (row < p.rows && count > 0) {
        load_chunk<T>(v[i], row_ptr<T>(p, row) + col * sc, sc, count, p.vec_load);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = tr * 128 + r0 + 32 * i;
      if (row < p.rows && count > 0) merge(key, Codec::Key::of(v[i]));
    }
    key = team_max(key, kBlockThreads, red);
    const auto scl = codec.dynamic(key);  // its own type: encoders may skip the clamp
    if (threadIdx.x == 0) codec.store(p, b, scl);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = tr * 128 + r0 + 32 * i;
      if (row < p.rows && count > 0) {
        uint32_t o[4];
        encode_chunk(codec, v[i], scl, o);
        store_codes(q + row * p.cols + col, o, count, p.vec_store);
      }
    }
  }
}

// -------------------------------------------------------------------- per-tensor amax
constexpr int kAmaxThreads = kAmaxBlockThreads;

template <FloatType T, class Key>
__global__ void __launch_bounds__(kAmaxThreads) amax_kernel(const KernelParams p) {
  grid_dependency_wait();  // as in quant_rows_kernel; pass 2 waits for this grid in turn
  launch_dependents();
  constexpr int kCache = Elem<T>::kCache;
  __shared__ uint32_t red[32];
  const int64_t nchunks = (p.cols + kChunk - 1) / kChunk;
  const int64_t total = p.rows * nchunks;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t sc = p.col_stride;
  Key key;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; base < total;
       base += stride * kCache) {
    Chunk<T> v[kCache];
#pragma unroll
    for (int i = 0; i < kCache; ++i) {  // all loads first (see quant_rows_body)
      const int64_t g = base + i * stride;
      if (g < total) {
        int64_t row = 0, c = g;
        if (p.rows != 1) {
          row = g / nchunks;
          c = g - row * nchunks;
        }
        load_chunk<T>(v[i], row_ptr<T>(p, row) + c * kChunk * sc, sc, chunk_count(p.cols, c),
                      p.vec_load);
      }
    }
#pragma unroll
    for (int i = 0; i < kCache; ++i) {
      if (base + i * stride < total) merge(key, Key::of(v[i]));
    }
  }
  key = team_max(key, kAmaxThreads, red);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < Key::kWords; ++i) {
      if (key.w[i] != 0) atomicMax(p.workspace + i, key.w[i]);
    }
  }
}

// The per-tensor dynamic scale of an empty input (all-zero statistic).
template <class Codec>
__global__ void write_scale_kernel(const KernelParams p) {
  const Codec codec(p);
  codec.store(p, 0, codec.dynamic(load_key<typename Codec::Key>(p.amax_key)));
}

// ------------------------------------------------------------------------- dequantize
template <FloatType T>
struct OutTraits;
template <>
struct OutTraits<FloatType::kF32> {
  static constexpr int kBytes = 4;
};
template <>
struct OutTraits<FloatType::kBF16> {
  static constexpr int kBytes = 2;
};
template <>
struct OutTraits<FloatType::kF16> {
  static constexpr int kBytes = 2;
};

constexpr int kDequantCache = kDequantCacheChunks;

template <class Dec, FloatType TOut>
__global__ void __launch_bounds__(kStreamThreads, kStreamMinBlocks) dequant_rows_kernel(const KernelParams p) {
  const Dec dec(p);
  constexpr int kOutWords = kChunk * OutTraits<TOut>::kBytes / 4;
  const int team = p.team;
  const int t = threadIdx.x & (team - 1);
  const int rows_per_cta = blockDim.x / team;
  const int64_t nchunks = (p.cols + kChunk - 1) / kChunk;
  const int64_t nrowgroups = (p.rows + rows_per_cta - 1) / rows_per_cta;
  const int64_t nwork = nrowgroups * p.nsegs;
  const int64_t sc = p.col_stride;

  for (int64_t b = blockIdx.x; b < nwork; b += gridDim.x) {
    const int64_t rg = b / p.nsegs;
    const int64_t seg = b - rg * p.nsegs;
    const int64_t row = rg * rows_per_cta + threadIdx.x / team;
    if (row >= p.rows) continue;  // no barriers or shuffles below
    const uint8_t* qrow = static_cast<const uint8_t*>(p.x) + row * p.row_stride;
    const int64_t c_begin = seg * p.seg_chunks;
    const int64_t c_end = min(nchunks, c_begin + p.seg_chunks);
    for (int64_t base = c_begin; base < c_end; base += int64_t(kDequantCache) * team) {
      uint32_t w[kDequantCache][4];
#pragma unroll
      for (int i = 0; i < kDequantCache; ++i) {
        const int64_t c = base + int64_t(i) * team + t;
        if (c < c_end) {
          const uint8_t* src = qrow + c * kChunk * sc;
          const int count = chunk_count(p.cols, c);
          if (p.vec_load && count == kChunk) {
            const uint4 u = __ldg(reinterpret_cast<const uint4*>(src));
            w[i][0] = u.x;
            w[i][1] = u.y;
            w[i][2] = u.z;
            w[i][3] = u.w;
          } else {
#pragma unroll
            for (int k = 0; k < 4; ++k) w[i][k] = 0;
#pragma unroll
            for (int j = 0; j < kChunk; ++j) {
              if (j < count) w[i][j >> 2] |= uint32_t(__ldg(src + j * sc)) << (8 * (j & 3));
            }
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kDequantCache; ++i) {
        const int64_t c = base + int64_t(i) * team + t;
        if (c < c_end) {
          const int64_t col = c * kChunk;
          const typename Dec::Scale scl = dec.at(p, (row >> p.th_shift) * p.s_ld + (col >> p.tw_shift));
          uint32_t o[kOutWords];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            float v[4];
            dec.decode4(w[i][k], scl, v);
            if constexpr (TOut == FloatType::kF32) {
#pragma unroll
              for (int j = 0; j < 4; ++j) o[4 * k + j] = f2u(v[j]);
            } else if constexpr (TOut == FloatType::kBF16) {
              o[2 * k] = f32x2_to_bf16x2(v[0], v[1]);
              o[2 * k + 1] = f32x2_to_bf16x2(v[2], v[3]);
            } else {
              o[2 * k] = f32x2_to_f16x2(v[0], v[1]);
              o[2 * k + 1] = f32x2_to_f16x2(v[2], v[3]);
            }
          }
          const int count = chunk_count(p.cols, c);
          if (p.vec_store && count == kChunk) {
            uint4* dst = reinterpret_cast<uint4*>(static_cast<uint8_t*>(p.out) +
                                                  (row * p.cols + col) * OutTraits<TOut>::kBytes);
#pragma unroll
            for (int k = 0; k < kOutWords / 4; ++k) {
              dst[k] = make_uint4(o[4 * k], o[4 * k + 1], o[4 * k + 2], o[4 * k + 3]);
            }
          } else if constexpr (OutTraits<TOut>::kBytes == 4) {
            uint32_t* dst = static_cast<uint32_t*>(p.out) + row * p.cols + col;
#pragma unroll
            for (int j = 0; j < kChunk; ++j) {
              if (j < count) dst[j] = o[j];
            }
          } else {
            uint16_t* dst = static_cast<uint16_t*>(p.out) + row * p.cols + col;
#pragma unroll
            for (int j = 0; j < kChunk; ++j) {
              if (j < count) dst[j] = static_cast<uint16_t>(o[j >> 1] >> (16 * (j & 1)));
            }
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------- launches
// A quantize kernel's launch: programmatic (l.programmatic, set by the shared launcher on
// sm_90+ devices) or in plain stream order.
template <class Kernel>
cudaError_t launch_quant_kernel(Kernel kernel, const QuantLaunch& l, int threads,
                                cudaStream_t stream) {
  const LaunchConfig cfg(dim3(static_cast<unsigned>(l.grid)), threads, 0, stream, 1,
                         l.programmatic);
  return launch_status(cudaLaunchKernelEx(cfg.get(), kernel, l.p));
}

// The row / block kernels of codec C for input type T, as l.kernel says.
template <FloatType T, class C>
cudaError_t launch_rows(const QuantLaunch& l, cudaStream_t stream) {
  switch (l.kernel) {
    case QuantKernel::kStream:
      return launch_quant_kernel(quant_rows_kernel<T, C, QuantKernel::kStream>, l, l.threads,
                                 stream);
    case QuantKernel::kDynRow:
      return launch_quant_kernel(quant_dynrow_kernel<T, C>, l, l.threads, stream);
    case QuantKernel::kDynBlock128:
      return launch_quant_kernel(quant_block128_kernel<T, C>, l, l.threads, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// Pass 1 of per-tensor dynamic scaling: the statistic Key of the whole input.
template <FloatType T, class Key>
cudaError_t launch_amax(const QuantLaunch& l, cudaStream_t stream) {
  return launch_quant_kernel(amax_kernel<T, Key>, l, kAmaxThreads, stream);
}

// The dequantize kernel of decoder Dec for l.out_type.
template <class Dec>
cudaError_t launch_dequant_rows(const DequantLaunch& l, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(l.grid));
  const dim3 block(static_cast<unsigned>(l.threads));
  switch (l.out_type) {
    case FloatType::kF32:
      return launch_plain(dequant_rows_kernel<Dec, FloatType::kF32>, grid, block, 0, stream, l.p);
    case FloatType::kBF16:
      return launch_plain(dequant_rows_kernel<Dec, FloatType::kBF16>, grid, block, 0, stream,
                          l.p);
    case FloatType::kF16:
      return launch_plain(dequant_rows_kernel<Dec, FloatType::kF16>, grid, block, 0, stream, l.p);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace detail
}  // namespace quant
}  // namespace lowbit
