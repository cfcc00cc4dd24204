// The INT8 codecs of the quantizer skeleton (common/quant_kernels.cuh), bit-exact with
// python/lowbit/reference/quant.py: every step is one IEEE fp32 operation the reference also
// makes (x * inv, rint half-even, + zero, the scale and zero-point divisions).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/quant_kernels.cuh"

namespace lowbit {
namespace int8 {
namespace detail {

using quant::detail::AbsmaxCodec;
using quant::detail::KernelParams;
using quant::detail::RangeKey;

// Four codes (low byte of each) packed little-endian, a in byte 0.
__device__ __forceinline__ uint32_t pack4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  return __byte_perm(__byte_perm(a, b, 0x0040), __byte_perm(c, d, 0x0040), 0x5410);
}

// rint(v) (half to even) in the low byte, two's complement, for v in [-128, 127]: 1.5 * 2^23
// + v lies in one binade whose ulp is 1, so the fp32 add rounds v half to even and the sum's
// bits are 0x4B400000 + rint(v). One add on the FMA pipe where a conversion (F2I) would take
// the slower conversion pipe, for every element.
__device__ __forceinline__ uint32_t byte_code(float v) { return f2u(add_rn(v, 12582912.0f)); }

// Symmetric element encoder (wrapped by AbsmaxCodec: scale from |x| max / 127):
// clamp(rint(v), -127, 127), NaN -> 0. The clamp bounds are integers, so clamping before the
// rounding gives the same code; the NaN goes first, as fminf would drop it.
struct SymEncoder {
  static constexpr bool kRunsHere = true;
  __device__ __forceinline__ SymEncoder(Fp8Format, bool) {}
  __device__ __forceinline__ float qmax() const { return 127.0f; }
  __device__ __forceinline__ static uint32_t code(float v) {
    v = v == v ? v : 0.0f;
    return byte_code(fminf(fmaxf(v, -127.0f), 127.0f));
  }
  __device__ __forceinline__ uint32_t encode4(float a, float b, float c, float d) const {
    return pack4(code(a), code(b), code(c), code(d));
  }
  // Values from a slice's own finite scale lie within 127 (1 + 3 ulp): neither the NaN rule
  // nor the clamp can change a code (four ALU instructions per element fewer; the per-token
  // kernel was bound by that pipe). A slice with an Inf or NaN has a NaN or Inf scale, and
  // every code is 0 (x / Inf is 0, NaN products are 0), as in the reference.
  static constexpr uint32_t kNonFinite4 = 0u;
  __device__ __forceinline__ uint32_t encode4_in_range(float a, float b, float c, float d) const {
    return pack4(byte_code(a), byte_code(b), byte_code(c), byte_code(d));
  }
};
using SymCodec = AbsmaxCodec<SymEncoder>;

// Asymmetric: min / max scales and int32 zero points.
struct AsymCodec {
  using Key = RangeKey;
  struct Scale {
    float s, inv, zf;  // zf: the zero point as the reference adds it (int32 -> fp32)
    int32_t z;
  };
  static constexpr bool kRunsHere = true;

  __device__ __forceinline__ explicit AsymCodec(const KernelParams&) {}

  // k.w[0] = max(x, 0), k.w[1] = -min(x, 0) (both NaN for a NaN slice). max - min is one fp32
  // add of the two magnitudes; -128 - min / scale = -128 + (-min) / scale exactly.
  __device__ __forceinline__ Scale dynamic(const Key& k) const {
    const float hi = u2f(k.w[0]), neg_lo = u2f(k.w[1]);
    Scale r;
    r.s = scale_from_key(abs_key(add_rn(hi, neg_lo)), 255.0f);
    r.inv = __frcp_rn(r.s);
    float z = rintf(add_rn(-128.0f, div_rn(neg_lo, r.s)));
    z = z == z ? fminf(fmaxf(z, -128.0f), 127.0f) : 0.0f;
    r.z = static_cast<int32_t>(z);
    r.zf = z;
    return r;
  }
  __device__ __forceinline__ Scale given(const KernelParams& p, int64_t sidx) const {
    Scale r;
    r.s = p.scale_in[sidx];
    r.inv = __frcp_rn(r.s);
    r.z = p.zero_in[sidx];
    r.zf = __int2float_rn(r.z);
    return r;
  }
  __device__ __forceinline__ void store(const KernelParams& p, int64_t sidx, const Scale& sc) const {
    p.scale_out[sidx] = sc.s;
    p.zero_out[sidx] = sc.z;
  }
  // clamp(rint(x * inv) + zero, -128, 127) with a NaN product counted as 0; the sum is one
  // fp32 add (exact wherever the clamp does not decide the code).
  __device__ __forceinline__ static uint32_t code(float x, const Scale& sc) {
    float r = rintf(mul_rn(x, sc.inv));
    r = r == r ? r : 0.0f;
    return byte_code(fminf(fmaxf(add_rn(r, sc.zf), -128.0f), 127.0f));
  }
  __device__ __forceinline__ uint32_t encode4(const Scale& sc, float a, float b, float c,
                                              float d) const {
    return pack4(code(a, sc), code(b, sc), code(c, sc), code(d, sc));
  }
};

// (q - zero) * scale in fp32 for four packed codes; no zero points: zero 0 (q - 0 is exact).
struct Decoder {
  struct Scale {
    float s, zf;
  };
  __device__ __forceinline__ explicit Decoder(const KernelParams&) {}
  __device__ __forceinline__ Scale at(const KernelParams& p, int64_t sidx) const {
    return {p.scale_in[sidx], p.zero_in != nullptr ? __int2float_rn(p.zero_in[sidx]) : 0.0f};
  }
  // Byte j, sign bit flipped, as the low mantissa byte of 2^23 is 2^23 + 128 + q exactly.
  __device__ __forceinline__ void decode4(uint32_t w, const Scale& sc, float (&v)[4]) const {
    const uint32_t biased = w ^ 0x80808080u;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float q = add_rn(u2f(__byte_perm(biased, 0x4B000000u, 0x7540u | j)), -8388736.0f);
      v[j] = mul_rn(add_rn(q, -sc.zf), sc.s);
    }
  }
};

}  // namespace detail
}  // namespace int8
}  // namespace lowbit
