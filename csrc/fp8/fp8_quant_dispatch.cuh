// Kernel dispatch for one input dtype: picks the codec (format x saturation x hardware cvt)
// and the kernel, and launches. Included by fp8_quant_{f32,bf16,f16}.cu, one dtype each, so
// the three sets of instantiations compile in parallel.
#pragma once

#include "fp8/fp8_quant_kernels.cuh"

namespace lowbit {
namespace fp8 {
namespace detail {

template <FloatType T, class C>
cudaError_t launch_with_codec(const QuantLaunch& l, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(l.grid));
  const dim3 block(static_cast<unsigned>(l.threads));
  switch (l.kernel) {
    case QuantKernel::kStream:
      quant_rows_kernel<T, C, QuantKernel::kStream><<<grid, block, 0, stream>>>(l.p);
      break;
    case QuantKernel::kDynRow:
      quant_rows_kernel<T, C, QuantKernel::kDynRow><<<grid, block, 0, stream>>>(l.p);
      break;
    case QuantKernel::kDynBlock128:
      quant_block128_kernel<T, C><<<grid, block, 0, stream>>>(l.p);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <FloatType T>
cudaError_t launch_quant(const QuantLaunch& l, cudaStream_t stream) {
  if (l.kernel == QuantKernel::kAmax) {
    amax_kernel<T><<<dim3(static_cast<unsigned>(l.grid)), dim3(kAmaxThreads), 0, stream>>>(l.p);
    return cudaGetLastError();
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
