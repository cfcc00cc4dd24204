// INT8 quantization kernels for bf16 inputs (one input dtype per translation unit).
#include "int8/int8_quant_dispatch.cuh"

namespace lowbit {
namespace int8 {
namespace detail {

cudaError_t launch_quant_bf16(const QuantLaunch& l, cudaStream_t stream) {
  return launch_quant<FloatType::kBF16>(l, stream);
}

}  // namespace detail
}  // namespace int8
}  // namespace lowbit
