// Internal interface between the FP8 launchers (fp8_quant.cu) and the per-dtype translation
// units that hold the kernel instantiations (fp8_quant_{f32,bf16,f16}.cu, fp8_dequant.cu).
// The kernel arguments and launch records are the shared skeleton's (common/quant_launch.h).
// Host-only: no device code here.
#pragma once

#include <cuda_runtime.h>

#include "common/quant_launch.h"
#include "fp8/fp8_quant.h"

namespace lowbit {
namespace fp8 {
namespace detail {

using namespace quant::detail;  // NOLINT: the skeleton's records and launch constants

cudaError_t launch_quant_f32(const QuantLaunch& l, cudaStream_t stream);
cudaError_t launch_quant_bf16(const QuantLaunch& l, cudaStream_t stream);
cudaError_t launch_quant_f16(const QuantLaunch& l, cudaStream_t stream);
cudaError_t launch_dequant(const DequantLaunch& l, cudaStream_t stream);
// The per-tensor dynamic scale of an empty input (from l.p.amax_key into l.p.scale_out): one
// thread, one kernel per format l.p.fmt (it depends on nothing else).
cudaError_t launch_write_scale(const QuantLaunch& l, cudaStream_t stream);

}  // namespace detail
}  // namespace fp8
}  // namespace lowbit
