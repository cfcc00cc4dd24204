// INT8 quantization kernels for fp32 inputs (one input dtype per translation unit).
#include "int8/int8_quant_dispatch.cuh"

namespace lowbit {
namespace int8 {
namespace detail {

cudaError_t launch_quant_f32(const QuantLaunch& l, cudaStream_t stream) {
  return launch_quant<FloatType::kF32>(l, stream);
}

}  // namespace detail
}  // namespace int8
}  // namespace lowbit
