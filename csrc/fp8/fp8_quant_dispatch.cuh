// Kernel dispatch for one input dtype: picks the codec (format x saturation x hardware cvt)
// and the kernel, and launches. Included by fp8_quant_{f32,bf16,f16}.cu, one dtype each, so
// the three sets of instantiations compile in parallel.
#pragma once

#include "fp8/fp8_quant_kernels.cuh"

namespace lowbit {
namespace fp8 {
namespace detail {

template <FloatType T, class Enc>
cudaError_t launch_with_codec(const QuantLaunch& l, cudaStream_t stream) {
  return launch_rows<T, Fp8Codec<Enc>>(l, stream);
}

template <FloatType T>
cudaError_t launch_quant(const QuantLaunch& l, cudaStream_t stream) {
  if (l.kernel == QuantKernel::kAmax) {
    return launch_amax<T, AbsKey>(l, stream);
  }
  // Templated codecs for the saturating e4m3fn / e5m2 casts real models run; one generic
  // codec for e4m3fnuz and saturate=False (fp8_codec.cuh).
  const Fp8Format f = l.p.fmt;
  if (l.p.saturate && f == Fp8Format::kE4M3FN) {
    return l.hw_cvt ? launch_with_codec<T, Codec<Fp8Format::kE4M3FN, true, true>>(l, stream)
                    : launch_with_codec<T, Codec<Fp8Format::kE4M3FN, true, false>>(l, stream);
  }
  if (l.p.saturate && f == Fp8Format::kE5M2) {
    return l.hw_cvt ? launch_with_codec<T, Codec<Fp8Format::kE5M2, true, true>>(l, stream)
                    : launch_with_codec<T, Codec<Fp8Format::kE5M2, true, false>>(l, stream);
  }
  if (f == Fp8Format::kE4M3FN || f == Fp8Format::kE5M2 || f == Fp8Format::kE4M3FNUZ) {
    return launch_with_codec<T, GenericCodec>(l, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace detail
}  // namespace fp8
}  // namespace lowbit
