// int4_quantize on the GPU, bit-exact with the reference (python/lowbit/reference/int4.py):
// every step is the fp32 operation the reference makes, in its order: the group's statistic,
// scale = max(extent / levels, 2^-126) (1 for a zero extent), rounded to the scales' storage
// type (a scale that rounds to 0 becomes 1), inv = 1 / stored scale, the zero point from the
// stored scale, then per element rint(w * inv) (a NaN product counts as 0), clamped.
//
// A thread takes 8 consecutive elements of a row (one 32-bit word of packed codes); the
// G / 8 lanes of a group reduce its statistic with xor-shuffles (G = 32, 64, 128: 4, 8 or 16
// lanes, aligned inside the warp because every row holds whole groups). Warps stride over
// the [rows, cols / 8] pieces; contiguous, 16-byte aligned rows load in 16-byte vectors,
// anything else element by element through the strides. 64-bit indexing throughout.
#include "wxa16/int4_quant.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/launch.h"
#include "common/quant_math.cuh"

namespace lowbit {
namespace {

constexpr int kThreads = 256;
constexpr int kPiece = 8;  // elements per thread

template <FloatType T>
struct Raw {
  using type = uint16_t;
};
template <>
struct Raw<FloatType::kF32> {
  using type = uint32_t;
};

template <FloatType T>
__device__ __forceinline__ float to_f32(typename Raw<T>::type r) {
  if constexpr (T == FloatType::kF32) {
    return u2f(r);
  } else if constexpr (T == FloatType::kBF16) {
    return bf16_bits_to_f32(r);
  } else {
    return f16_bits_to_f32(r);
  }
}

template <FloatType T>
__device__ __forceinline__ void load_piece(float (&v)[kPiece], const Int4QuantizeArgs& p,
                                           int64_t row, int64_t col, bool vec) {
  using R = typename Raw<T>::type;
  const R* src = static_cast<const R*>(p.w) + row * p.row_stride;
  if (vec) {
    const uint4* s = reinterpret_cast<const uint4*>(src + col);
    if constexpr (sizeof(R) == 4) {
      const uint4 a = __ldg(s), b = __ldg(s + 1);
      const uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
      for (int j = 0; j < kPiece; ++j) v[j] = u2f(w[j]);
    } else {
      const uint4 a = __ldg(s);
      const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
      for (int j = 0; j < kPiece; ++j)
        v[j] = to_f32<T>(static_cast<R>((j & 1) ? (w[j >> 1] >> 16) : (w[j >> 1] & 0xFFFFu)));
    }
  } else {
#pragma unroll
    for (int j = 0; j < kPiece; ++j) v[j] = to_f32<T>(__ldg(src + (col + j) * p.col_stride));
  }
}

// The scale as stored (rounded to the storage type; 0 -> 1), as fp32, and its storage bits.
template <FloatType T>
__device__ __forceinline__ float stored_scale(float s, uint32_t& bits) {
  float r;
  if constexpr (T == FloatType::kF32) {
    r = s;
  } else if constexpr (T == FloatType::kBF16) {
    r = __bfloat162float(__float2bfloat16_rn(s));
  } else {
    r = __half2float(__float2half_rn(s));
  }
  if (r == 0.0f) r = 1.0f;
  if constexpr (T == FloatType::kF32) {
    bits = f2u(r);
  } else if constexpr (T == FloatType::kBF16) {
    bits = __bfloat16_as_ushort(__float2bfloat16_rn(r));
  } else {
    bits = __half_as_ushort(__float2half_rn(r));
  }
  return r;
}

__device__ __forceinline__ uint32_t group_max(uint32_t k, int lanes) {
  for (int o = 1; o < lanes; o <<= 1) k = max(k, __shfl_xor_sync(0xFFFFFFFFu, k, o));
  return k;
}

template <FloatType T>
__global__ void __launch_bounds__(kThreads) int4_quantize_kernel(const Int4QuantizeArgs p,
                                                                 bool vec) {
  const int lane = threadIdx.x & 31;
  const int lanes = p.group / kPiece;
  const int64_t per_row = p.cols / kPiece, total = p.rows * per_row;
  const int64_t warps = int64_t(gridDim.x) * (kThreads / 32);
  for (int64_t base = (int64_t(blockIdx.x) * kThreads + threadIdx.x - lane); base < total;
       base += warps * 32) {
    const int64_t piece = base + lane;
    const bool live = piece < total;  // whole groups are live or not (per_row % lanes == 0)
    const int64_t row = live ? piece / per_row : 0, col = live ? (piece % per_row) * kPiece : 0;
    float v[kPiece];
    if (live) {
      load_piece<T>(v, p, row, col, vec);
    } else {
#pragma unroll
      for (int j = 0; j < kPiece; ++j) v[j] = 0.0f;
    }
    // The statistic as abs_keys (NaN above +Inf, so a max propagates it as np.max does):
    // symmetric max |w|; asymmetric max(w, 0) and -min(w, 0), the range widened to hold 0.
    uint32_t hi = 0, lo = 0;
#pragma unroll
    for (int j = 0; j < kPiece; ++j) {
      const float x = v[j];
      if (p.symmetric) {
        hi = max(hi, abs_key(x));
      } else if (x != x) {
        hi = lo = max(hi, abs_key(x));
      } else {
        hi = max(hi, x > 0.0f ? f2u(x) : 0u);
        lo = max(lo, x < 0.0f ? f2u(-x) : 0u);
      }
    }
    hi = group_max(hi, lanes);
    float zf = 8.0f, inv;
    uint32_t sbits;
    if (p.symmetric) {
      inv = div_rn(1.0f, stored_scale<T>(scale_from_key(hi, 7.0f), sbits));
    } else {
      lo = group_max(lo, lanes);
      const float neg_lo = u2f(lo);
      const float s = stored_scale<T>(scale_from_key(abs_key(add_rn(u2f(hi), neg_lo)), 15.0f),
                                      sbits);
      inv = div_rn(1.0f, s);
      const float z = rintf(div_rn(neg_lo, s));  // -(lo / s): the sign flip is exact
      zf = z == z ? fminf(fmaxf(z, 0.0f), 15.0f) : 0.0f;
    }
    uint32_t word = 0;
#pragma unroll
    for (int j = 0; j < kPiece; ++j) {
      float r = rintf(mul_rn(v[j], inv));
      r = r == r ? r : 0.0f;
      // Symmetric: clamp(r, -8, 7) + 8; asymmetric: clamp(r + z, 0, 15) (one fp32 add, exact
      // wherever the clamp does not decide the code).
      const float u = p.symmetric ? fminf(fmaxf(r, -8.0f), 7.0f) + 8.0f
                                  : fminf(fmaxf(add_rn(r, zf), 0.0f), 15.0f);
      word |= static_cast<uint32_t>(u) << (4 * j);
    }
    if (!live) continue;
    *reinterpret_cast<uint32_t*>(p.q + row * (p.cols / 2) + col / 2) = word;
    if (lane % lanes == 0) {
      const int64_t sidx = row * (p.cols / p.group) + col / p.group;
      if constexpr (T == FloatType::kF32) {
        static_cast<uint32_t*>(p.scales)[sidx] = sbits;
      } else {
        static_cast<uint16_t*>(p.scales)[sidx] = static_cast<uint16_t>(sbits);
      }
      if (!p.symmetric) p.zeros[sidx] = static_cast<uint8_t>(zf);
    }
  }
}

template <FloatType T>
cudaError_t launch(const Int4QuantizeArgs& p, cudaStream_t stream) {
  const int64_t pieces = p.rows * (p.cols / kPiece);
  if (pieces == 0) return cudaSuccess;
  const int eb = elem_bytes(T);
  const bool vec = p.col_stride == 1 && reinterpret_cast<uintptr_t>(p.w) % 16 == 0 &&
                   (p.row_stride * eb) % 16 == 0;
  // A few waves of CTAs on any current GPU; the warps stride over the rest.
  const int64_t ctas = (pieces + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(ctas < 4096 ? ctas : 4096);
  return launch_plain(int4_quantize_kernel<T>, dim3(grid), dim3(kThreads), 0, stream, p, vec);
}

}  // namespace

cudaError_t cuda_int4_quantize(const Int4QuantizeArgs& p, cudaStream_t stream) {
  if (p.group != 32 && p.group != 64 && p.group != 128) return cudaErrorInvalidValue;
  if (p.rows < 0 || p.cols < 0 || p.cols % p.group) return cudaErrorInvalidValue;
  if (!p.symmetric && p.zeros == nullptr && p.rows * p.cols > 0) return cudaErrorInvalidValue;
  switch (p.w_type) {
    case FloatType::kF32: return launch<FloatType::kF32>(p, stream);
    case FloatType::kBF16: return launch<FloatType::kBF16>(p, stream);
    case FloatType::kF16: return launch<FloatType::kF16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace lowbit
