// Epilogue helpers shared by lowbit's GEMM kernels: bias loads and output stores in the
// three output dtypes, scalar and as pairs of adjacent columns; the INT8 accumulator's value.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtypes.h"
#include "common/gemm_args.h"

namespace lowbit {

__device__ __forceinline__ float load_bias(const void* p, FloatType d, int64_t i) {
  switch (d) {
    case FloatType::kF32: return static_cast<const float*>(p)[i];
    case FloatType::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return __half2float(static_cast<const __half*>(p)[i]);
  }
}

__device__ __forceinline__ void store_out(void* p, FloatType d, int64_t i, float v) {
  switch (d) {
    case FloatType::kF32: static_cast<float*>(p)[i] = v; break;
    case FloatType::kBF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
  }
}

// Two values of one output row as a register of 16-bit pairs (the lower column in the low
// half), as mma fragments and stmatrix hold them.
__device__ __forceinline__ uint32_t pack2(FloatType d, float v0, float v1) {
  if (d == FloatType::kBF16) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(v0, v1);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  const __half2 h = __floats2half2_rn(v0, v1);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// Elements i and i + 1 in one store; i even and the output's base aligned to two elements
// (checked by the caller, see pair_store_ok).
__device__ __forceinline__ void store_out2(void* p, FloatType d, int64_t i, float v0, float v1) {
  switch (d) {
    case FloatType::kF32:
      *reinterpret_cast<float2*>(static_cast<float*>(p) + i) = make_float2(v0, v1);
      break;
    case FloatType::kBF16:
      *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(p) + i) =
          __floats2bfloat162_rn(v0, v1);
      break;
    default:
      *reinterpret_cast<__half2*>(static_cast<__half*>(p) + i) = __floats2half2_rn(v0, v1);
      break;
  }
}

// Whether (row, even column) pairs of out may be written with store_out2.
__host__ __device__ __forceinline__ bool pair_store_ok(const void* out, FloatType d, int64_t ldo) {
  const uintptr_t align = d == FloatType::kF32 ? 8 : 4;
  return (reinterpret_cast<uintptr_t>(out) % align) == 0 && ldo % 2 == 0;
}

// acc - zero * b_sum exactly, rounded once to fp32: |zero * b_sum| <= 128 * 127 * K stays
// inside int32 for the K an int32 accumulator allows (K < 131072); only the difference
// needs 64 bits.
__device__ __forceinline__ float zero_corrected(int32_t acc, int32_t zero, int32_t b_sum) {
  return __ll2float_rn(static_cast<int64_t>(acc) - zero * b_sum);
}

// Token m's activation zero point (one per token or one for all).
__device__ __forceinline__ int32_t a_zero_of(const GemmArgs& p, int m) {
  return __ldg(&p.a_zero[p.a_zero_row ? m : 0]);
}

// An INT8 accumulator as the epilogue's fp32 value: acc, or with asymmetric activations
// (`zeros`) zero_corrected(acc, zero, b_sum); for epilogues that load the terms ahead.
__device__ __forceinline__ float int_acc_value(int32_t acc, bool zeros, int32_t zero,
                                               int32_t b_sum) {
  return zeros ? zero_corrected(acc, zero, b_sum) : __int2float_rn(acc);
}

// The same, loading a_zero[m] and b_sum[n] itself.
__device__ __forceinline__ float int_acc_value(const GemmArgs& p, int32_t acc, int m, int n) {
  if (p.a_zero == nullptr) return __int2float_rn(acc);
  return int_acc_value(acc, true, a_zero_of(p, m), __ldg(&p.b_sum[n]));
}

// int8_mm's output: the int32 accumulators of columns n and n + 1 of a row (n + 1 < N
// tells whether the second exists), one 8-byte store when `pair` (aligned, see
// pair_store_ok with an fp32 output).
__device__ __forceinline__ void store_i32_pair(void* out, int64_t i, int32_t v0, int32_t v1,
                                               bool second, bool pair) {
  int32_t* o = static_cast<int32_t*>(out) + i;
  if (pair && second) {
    *reinterpret_cast<int2*>(o) = make_int2(v0, v1);
  } else {
    o[0] = v0;
    if (second) o[1] = v1;
  }
}

}  // namespace lowbit
