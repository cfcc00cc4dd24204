// FP8 quantization kernels for f16 inputs (one input dtype per translation unit).
#include "fp8/fp8_quant_dispatch.cuh"

namespace lowbit {
namespace fp8 {
namespace detail {

cudaError_t launch_quant_f16(const QuantLaunch& l, cudaStream_t stream) {
  return launch_quant<FloatType::kF16>(l, stream);
}

}  // namespace detail
}  // namespace fp8
}  // namespace lowbit
