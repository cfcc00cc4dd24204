// The FP8 quantizers' kernels: the shared skeleton (common/quant_kernels.cuh) with the FP8
// codecs of fp8_codec.cuh, instantiated one input dtype per translation unit by
// fp8_quant_{f32,bf16,f16}.cu and fp8_dequant.cu.
#pragma once

#include "common/quant_kernels.cuh"
#include "fp8/fp8_codec.cuh"
#include "fp8/fp8_quant_launch.h"

namespace lowbit {
namespace fp8 {
namespace detail {

// The symmetric absmax codec around an FP8 element encoder (Codec<...> or GenericCodec).
template <class Enc>
using Fp8Codec = AbsmaxCodec<Enc>;

// decode(q) * scale for four packed codes of format F.
template <Fp8Format F>
struct Fp8Decoder {
  using Scale = float;
  __device__ __forceinline__ explicit Fp8Decoder(const KernelParams&) {}
  __device__ __forceinline__ float at(const KernelParams& p, int64_t sidx) const {
    return p.scale_in[sidx];
  }
  __device__ __forceinline__ void decode4(uint32_t w, float s, float (&v)[4]) const {
    fp8::decode4<F>(w, v);
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = mul_rn(v[j], s);
  }
};

}  // namespace detail
}  // namespace fp8
}  // namespace lowbit
