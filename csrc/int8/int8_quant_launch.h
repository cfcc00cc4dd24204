// Internal interface between the INT8 launchers (int8_quant.cu) and the translation units
// that hold the kernel instantiations (int8_quant_{f32,bf16,f16}.cu, int8_dequant.cu). The
// kernel arguments and launch records are the shared skeleton's (common/quant_launch.h).
// Host-only: no device code here.
#pragma once

#include <cuda_runtime.h>

#include "common/quant_launch.h"
#include "int8/int8_quant.h"

namespace lowbit {
namespace int8 {
namespace detail {

using quant::detail::DequantLaunch;
using quant::detail::QuantLaunch;

// The codec is l.asymmetric's: symmetric (AbsKey) or asymmetric (RangeKey, zero points).
cudaError_t launch_quant_f32(const QuantLaunch& l, cudaStream_t stream);
cudaError_t launch_quant_bf16(const QuantLaunch& l, cudaStream_t stream);
cudaError_t launch_quant_f16(const QuantLaunch& l, cudaStream_t stream);
cudaError_t launch_dequant(const DequantLaunch& l, cudaStream_t stream);
// The per-tensor dynamic scale (and zero point) of an empty input: one thread.
cudaError_t launch_write_scale(const QuantLaunch& l, cudaStream_t stream);

}  // namespace detail
}  // namespace int8
}  // namespace lowbit
