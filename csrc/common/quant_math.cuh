// Exact fp32 arithmetic and the dynamic-scale rule shared by every quantizer family (FP8,
// INT8): bit casts, one-rounding fp32 ops, 16-bit float conversions, and the absmax key.
// Device and host functions, so host-side tests can use the same definitions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace lowbit {

#if defined(__CUDACC__)
#define LOWBIT_HD __host__ __device__ __forceinline__
#else
#define LOWBIT_HD inline
#endif

// ------------------------------------------------------------------ bit casts, exact fp32 ops
LOWBIT_HD uint32_t f2u(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

LOWBIT_HD float u2f(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// One IEEE fp32 operation each, round to nearest even, never fused with a neighbour.
LOWBIT_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  volatile float r = a + b;
  return r;
#endif
}

LOWBIT_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  volatile float r = a * b;
  return r;
#endif
}

LOWBIT_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  volatile float r = a / b;
  return r;
#endif
}

// ----------------------------------------------------------------- 16-bit float conversions
// bf16 / fp16 -> fp32 are exact.
LOWBIT_HD float bf16_bits_to_f32(uint32_t h) { return u2f(h << 16); }

__device__ __forceinline__ float f16_bits_to_f32(uint32_t h) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
}

// Two fp32 -> two bf16 / fp16 packed (a in the low half): one cvt.rn per pair, IEEE round to
// nearest even with subnormals kept and overflow to Inf, as torch's casts round. A NaN
// stays a NaN; its payload is not part of the contract (torch's own CPU casts write
// different NaN bits across versions and code paths).
__device__ __forceinline__ uint32_t f32x2_to_bf16x2(float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ uint32_t f32x2_to_f16x2(float a, float b) {
  const __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// ------------------------------------------------------------------------- dynamic scales
// |x| as an unsigned key: ordered like |x| for every fp32, NaN above +Inf (so a max over
// keys propagates NaN, as torch.amax / np.max do), and usable with atomicMax.
LOWBIT_HD uint32_t abs_key(float v) { return f2u(v) & 0x7FFFFFFFu; }

// The floor of a dynamic scale: 2^-126, the smallest normal fp32 (reference.quant.MIN_SCALE).
// Below about 2^-128 the reciprocal __frcp_rn(scale) rounds to +Inf and 0 * Inf makes the
// slice's zeros NaN; with the floor, inv <= 2^126. It also makes the scale the same under
// flush-to-zero: a subnormal absmax or quotient is under the floor either way.
constexpr uint32_t kMinScaleBits = 0x00800000u;  // 2^-126

// scale = max(extent / levels, 2^-126), correctly rounded, for an extent (absmax, or a
// max - min range) given as its abs_key; a zero extent (all zeros) gives 1; NaN stays NaN.
// The floor is a compare on the bits (the quotient is >= +0 or a NaN, whose bits lie above
// every finite value), not fmaxf, which would replace a NaN.
LOWBIT_HD float scale_from_key(uint32_t key, float levels) {
  const uint32_t s = f2u(div_rn(u2f(key), levels)) & 0x7FFFFFFFu;
  return key == 0u ? 1.0f : u2f(s < kMinScaleBits ? kMinScaleBits : s);
}

}  // namespace lowbit
