// FP8 encode / decode as device (and host) functions, bit-exact with
// python/lowbit/reference/fp8.py for every fp32 input, every format and both saturation modes.
//
// The software encoder is the reference's integer algorithm reorganised to be branch-free:
//   - a result that is normal in fp8: round the fp32 bit pattern to `mbits` mantissa bits by
//     integer addition (ties to even via the kept LSB); the exponent rebias is folded into the
//     same add, and a rounding carry walks into the exponent field by itself;
//   - a result that is subnormal in fp8: one correctly rounded fp32 add of the magnitude to
//     2^(24 - bias - mbits), whose ulp is exactly the fp8 subnormal step, so the hardware's
//     round-to-nearest-even does the rounding; the code is the bit distance to that constant;
//   - overflow is "code > max_code", the reference's own test, so no threshold constants.
// It runs on every arch. On sm_89+ the hardware `cvt.rn.satfinite.{e4m3,e5m2}x2.f32` may
// be used instead for saturate=True e4m3fn / e5m2 (Codec<..., kHw = true>); its NaN output is
// rewritten to the canonical 0x7F afterwards, so that path depends only on the PTX contract
// (RNE, subnormals kept, |x| > max and +-Inf -> +-max, NaN -> some NaN code).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/quant_math.cuh"
#include "fp8/fp8_quant.h"

namespace lowbit {
namespace fp8 {

// --------------------------------------------------------------------------- format traits
template <Fp8Format F>
struct Fp8Traits;

template <>
struct Fp8Traits<Fp8Format::kE4M3FN> {
  static constexpr int kMantBits = 3;
  static constexpr int kBias = 7;
  static constexpr uint32_t kMaxCode = 0x7E;  // 448
  static constexpr uint32_t kNanCode = 0x7F;
  static constexpr bool kHasInf = false;
  static constexpr uint32_t kInfCode = 0;
  static constexpr bool kNegZero = true;
  static constexpr float kMax = 448.0f;
};

template <>
struct Fp8Traits<Fp8Format::kE5M2> {
  static constexpr int kMantBits = 2;
  static constexpr int kBias = 15;
  static constexpr uint32_t kMaxCode = 0x7B;  // 57344
  static constexpr uint32_t kNanCode = 0x7F;
  static constexpr bool kHasInf = true;
  static constexpr uint32_t kInfCode = 0x7C;
  static constexpr bool kNegZero = true;
  static constexpr float kMax = 57344.0f;
};

template <>
struct Fp8Traits<Fp8Format::kE4M3FNUZ> {
  static constexpr int kMantBits = 3;
  static constexpr int kBias = 8;
  static constexpr uint32_t kMaxCode = 0x7F;  // 240
  static constexpr uint32_t kNanCode = 0x80;  // the only NaN; so there is no -0
  static constexpr bool kHasInf = false;
  static constexpr uint32_t kInfCode = 0;
  static constexpr bool kNegZero = false;
  static constexpr float kMax = 240.0f;
};

// ----------------------------------------------------------------------- software encoder
// fp32 -> fp8 code (0..255), exactly reference.fp8_encode(v, fmt, saturate).
template <Fp8Format F, bool kSat>
LOWBIT_HD uint32_t encode_sw(float v) {
  using T = Fp8Traits<F>;
  constexpr int kShift = 23 - T::kMantBits;  // fp32 mantissa bits dropped for a normal result
  // Smallest fp8 normal, 2^(1 - bias), as an fp32 bit pattern.
  constexpr uint32_t kMinNormBits = uint32_t(127 + 1 - T::kBias) << 23;
  // 2^(24 - bias - mbits): its fp32 ulp, 2^(1 - bias - mbits), is the fp8 subnormal step.
  constexpr uint32_t kMagicBits = uint32_t(127 + 24 - T::kBias - T::kMantBits) << 23;
  // Adds half an ulp minus one (the RNE bias before the LSB term) and rebiases the exponent
  // from 127 to kBias; wraps mod 2^32, which is exact for every magnitude >= kMinNormBits.
  constexpr uint32_t kNormAdd =
      ((1u << (kShift - 1)) - 1u) - (uint32_t(127 - T::kBias) << 23);
  static_assert(kMagicBits > kMinNormBits, "the subnormal magic must exceed every subnormal input");

  const uint32_t bits = f2u(v);
  const uint32_t mag = bits & 0x7FFFFFFFu;
  const uint32_t sign = (bits >> 24) & 0x80u;

  const uint32_t code_n = (mag + kNormAdd + ((mag >> kShift) & 1u)) >> kShift;
  const uint32_t code_s = f2u(add_rn(u2f(mag), u2f(kMagicBits))) - kMagicBits;
  uint32_t code = mag < kMinNormBits ? code_s : code_n;
  // `code` grows monotonically with mag, and every NaN or Inf magnitude gives a code above
  // max_code, so overflow is the reference's own test: code > max_code.
  const bool is_nan = mag > 0x7F800000u;

  if constexpr (kSat) {
    code = code < T::kMaxCode ? code : T::kMaxCode;
  } else if constexpr (T::kHasInf) {
    code = code < T::kInfCode ? code : T::kInfCode;
  } else {
    // No Inf in the format: overflow (and Inf) become NaN, which carries no sign.
    if (code > T::kMaxCode) return T::kNanCode;
  }
  if constexpr (T::kNegZero) {
    code |= sign;
  } else {
    code |= code != 0 ? sign : 0u;  // e4m3fnuz: 0x80 is NaN, a negative zero is +0
  }
  return is_nan ? T::kNanCode : code;
}

// ----------------------------------------------------------------------- hardware encoder
// Canonicalises the NaN bytes of 4 packed codes, whatever NaN code the hardware wrote.
template <Fp8Format F>
__device__ __forceinline__ uint32_t canonical_nan4(uint32_t w) {
  const uint32_t low7 = w & 0x7F7F7F7Fu;
  if constexpr (F == Fp8Format::kE4M3FN) {
    // NaN bytes are exactly those with low 7 bits 0x7F; +1 carries into bit 7 of that byte only.
    const uint32_t m = (low7 + 0x01010101u) & 0x80808080u;
    return w & ~m;  // 0xFF -> 0x7F, 0x7F stays
  } else {
    static_assert(F == Fp8Format::kE5M2, "hardware cvt exists for e4m3fn and e5m2 only");
    // NaN bytes have low 7 bits 0x7D..0x7F.
    const uint32_t m = (low7 + 0x03030303u) & 0x80808080u;
    const uint32_t bytes = (m >> 7) * 0xFFu;
    return (w & ~bytes) | (bytes & 0x7F7F7F7Fu);
  }
}

// Four fp32 values -> four saturated codes packed little-endian (a in byte 0).
template <Fp8Format F>
__device__ __forceinline__ uint32_t encode4_hw(float a, float b, float c, float d) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 890)
  unsigned short lo, hi;
  // cvt's first source goes to the upper byte.
  if constexpr (F == Fp8Format::kE4M3FN) {
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %2, %1;" : "=h"(lo) : "f"(a), "f"(b));
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %2, %1;" : "=h"(hi) : "f"(c), "f"(d));
  } else {
    static_assert(F == Fp8Format::kE5M2, "hardware cvt exists for e4m3fn and e5m2 only");
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %2, %1;" : "=h"(lo) : "f"(a), "f"(b));
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %2, %1;" : "=h"(hi) : "f"(c), "f"(d));
  }
  return canonical_nan4<F>(__byte_perm(uint32_t(lo), uint32_t(hi), 0x5410));
#else
  return encode_sw<F, true>(a) | (encode_sw<F, true>(b) << 8) | (encode_sw<F, true>(c) << 16) |
         (encode_sw<F, true>(d) << 24);
#endif
}

// Whether this compilation pass has the fp8 cvt instructions (sm_89+). The host pass says
// yes; the launcher asks the device before it picks a hardware-cvt kernel.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 890)
constexpr bool kArchHasFp8Cvt = false;
#else
constexpr bool kArchHasFp8Cvt = true;
#endif

// A codec turns four fp32 values into four packed codes. The kernels construct one from
// their format / saturation parameters and call encode4; the templated codecs ignore the
// parameters (everything is a constant), the generic one reads them.
//
// Codec<F, true, kHw>: saturate=True e4m3fn / e5m2, the formats of real models, each with
// its own kernels; kHw selects the sm_89+ cvt instruction.
template <Fp8Format F, bool kSat, bool kHw>
struct Codec {
  static_assert(!kHw || (kSat && F != Fp8Format::kE4M3FNUZ),
                "the hardware cvt path is for saturate=True e4m3fn / e5m2 only");
  static constexpr bool kUsesHw = kHw;
  static constexpr bool kRunsHere = !kHw || kArchHasFp8Cvt;  // see kArchHasFp8Cvt

  __device__ __forceinline__ Codec(Fp8Format, bool) {}
  __device__ __forceinline__ float qmax() const { return Fp8Traits<F>::kMax; }

  // Four fp32 values -> four codes, packed little-endian (a in byte 0).
  __device__ __forceinline__ uint32_t encode4(float a, float b, float c, float d) const {
    if constexpr (kHw) {
      return encode4_hw<F>(a, b, c, d);
    } else {
      // Bytes 2-3 of ab and cd are don't-cares: the last permute keeps bytes 0-1 of each.
      const uint32_t ab = __byte_perm(encode_sw<F, kSat>(a), encode_sw<F, kSat>(b), 0x0040);
      const uint32_t cd = __byte_perm(encode_sw<F, kSat>(c), encode_sw<F, kSat>(d), 0x0040);
      return __byte_perm(ab, cd, 0x5410);
    }
  }
};

// Every other (format, saturate) pair: e4m3fnuz, and saturate=False. The same algorithm as
// encode_sw with the format's constants held in registers, so these six modes share one set
// of kernels (a few more instructions per element, far less code to build).
struct GenericCodec {
  static constexpr bool kUsesHw = false;
  static constexpr bool kRunsHere = true;
  uint32_t shift, min_norm, magic, norm_add, max_code, nan_code, clamp_code;
  bool overflow_is_nan, neg_zero;
  float qmax_;

  template <Fp8Format F>
  LOWBIT_HD void set(bool sat) {
    using T = Fp8Traits<F>;
    shift = 23 - T::kMantBits;
    min_norm = uint32_t(127 + 1 - T::kBias) << 23;
    magic = uint32_t(127 + 24 - T::kBias - T::kMantBits) << 23;
    norm_add = ((1u << (shift - 1)) - 1u) - (uint32_t(127 - T::kBias) << 23);
    max_code = T::kMaxCode;
    nan_code = T::kNanCode;
    overflow_is_nan = !sat && !T::kHasInf;
    clamp_code = sat ? T::kMaxCode : (T::kHasInf ? T::kInfCode : 0xFFFFFFFFu);
    neg_zero = T::kNegZero;
    qmax_ = T::kMax;
  }

  LOWBIT_HD GenericCodec(Fp8Format f, bool sat) {
    if (f == Fp8Format::kE4M3FN) {
      set<Fp8Format::kE4M3FN>(sat);
    } else if (f == Fp8Format::kE5M2) {
      set<Fp8Format::kE5M2>(sat);
    } else {
      set<Fp8Format::kE4M3FNUZ>(sat);
    }
  }
  LOWBIT_HD float qmax() const { return qmax_; }

  // Exactly encode_sw<F, sat> for the format and mode this codec was built with.
  LOWBIT_HD uint32_t encode(float v) const {
    const uint32_t bits = f2u(v);
    const uint32_t mag = bits & 0x7FFFFFFFu;
    const uint32_t sign = (bits >> 24) & 0x80u;
    const uint32_t code_n = (mag + norm_add + ((mag >> shift) & 1u)) >> shift;
    const uint32_t code_s = f2u(add_rn(u2f(mag), u2f(magic))) - magic;
    uint32_t code = mag < min_norm ? code_s : code_n;
    const bool nan_out = mag > 0x7F800000u || (overflow_is_nan && code > max_code);
    code = code < clamp_code ? code : clamp_code;
    code |= (neg_zero || code != 0) ? sign : 0u;
    return nan_out ? nan_code : code;
  }

  __device__ __forceinline__ uint32_t encode4(float a, float b, float c, float d) const {
    const uint32_t ab = __byte_perm(encode(a), encode(b), 0x0040);
    const uint32_t cd = __byte_perm(encode(c), encode(d), 0x0040);
    return __byte_perm(ab, cd, 0x5410);
  }
};

// ------------------------------------------------------------------------------- decoder
// fp8 code -> fp32, exactly reference.fp8_decode (NaN is 0x7FC00000).
template <Fp8Format F>
LOWBIT_HD float decode(uint32_t c) {
  using T = Fp8Traits<F>;
  constexpr int kShift = 23 - T::kMantBits;
  const uint32_t mag = c & 0x7Fu;
  // The fields placed into an fp32 pattern read as 2^(e - 127)(1 + m) for e > 0, or as an
  // fp32 subnormal m * 2^-149 * 2^(23 - kShift) for e = 0; one exact power-of-two product
  // rebiases both to the fp8 value.
  constexpr float kRebias = float(1ull << (127 - T::kBias - 64)) * 18446744073709551616.0f;
  float v = mul_rn(u2f(((c & 0x80u) << 24) | (mag << kShift)), kRebias);
  if constexpr (F == Fp8Format::kE4M3FN) {
    if (mag == 0x7Fu) v = u2f(0x7FC00000u);
  } else if constexpr (F == Fp8Format::kE5M2) {
    if (mag == 0x7Cu) v = u2f(((c & 0x80u) << 24) | 0x7F800000u);
    if (mag > 0x7Cu) v = u2f(0x7FC00000u);
  } else {
    if (c == 0x80u) v = u2f(0x7FC00000u);
  }
  return v;
}

// Four packed codes (byte j = code j) -> four fp32 values, exactly decode<F> each.
// e5m2 is fp16 with the low mantissa byte cut off, so a byte permute makes two fp16 per
// instruction; sm_89+ converts e4m3fn pairs to fp16 in hardware (every e4m3 value is an
// fp16 value); otherwise the integer decoder.
template <Fp8Format F>
__device__ __forceinline__ void decode4(uint32_t w, float (&v)[4]) {
  if constexpr (F == Fp8Format::kE5M2) {
    const uint32_t lo = __byte_perm(w, 0u, 0x1404);  // halves (b0 << 8, b1 << 8)
    const uint32_t hi = __byte_perm(w, 0u, 0x3424);  // halves (b2 << 8, b3 << 8)
    const float2 f0 = __half22float2(*reinterpret_cast<const __half2*>(&lo));
    const float2 f1 = __half22float2(*reinterpret_cast<const __half2*>(&hi));
    v[0] = f0.x;
    v[1] = f0.y;
    v[2] = f1.x;
    v[3] = f1.y;
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 890)
  } else if constexpr (F == Fp8Format::kE4M3FN) {
    uint32_t lo, hi;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(lo) : "h"(static_cast<unsigned short>(w & 0xFFFFu)));
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(hi) : "h"(static_cast<unsigned short>(w >> 16)));
    const float2 f0 = __half22float2(*reinterpret_cast<const __half2*>(&lo));
    const float2 f1 = __half22float2(*reinterpret_cast<const __half2*>(&hi));
    v[0] = f0.x;
    v[1] = f0.y;
    v[2] = f1.x;
    v[3] = f1.y;
#endif
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = decode<F>((w >> (8 * j)) & 0xFFu);
  }
}

}  // namespace fp8
}  // namespace lowbit
