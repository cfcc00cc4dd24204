// Kernel dispatch for one input dtype: the symmetric or asymmetric codec, and the kernel.
// Included by int8_quant_{f32,bf16,f16}.cu, one dtype each, so the three sets of
// instantiations compile in parallel.
#pragma once

#include "int8/int8_codec.cuh"
#include "int8/int8_quant_launch.h"

namespace lowbit {
namespace int8 {
namespace detail {

template <FloatType T>
cudaError_t launch_quant(const QuantLaunch& l, cudaStream_t stream) {
  namespace q = quant::detail;
  if (l.kernel == q::QuantKernel::kAmax) {
    return l.asymmetric ? q::launch_amax<T, q::RangeKey>(l, stream)
                        : q::launch_amax<T, q::AbsKey>(l, stream);
  }
  return l.asymmetric ? q::launch_rows<T, AsymCodec>(l, stream)
                      : q::launch_rows<T, SymCodec>(l, stream);
}

}  // namespace detail
}  // namespace int8
}  // namespace lowbit
