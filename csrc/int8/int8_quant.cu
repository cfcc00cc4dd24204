// INT8 quantize / dequantize launchers: the INT8 codec's fields on the shared launchers
// (common/quant_launch.cu: validation, view, kernel choice; kernels in
// common/quant_kernels.cuh with the codecs of int8_codec.cuh). Host code only; nothing here
// synchronizes the host.
#include <cuda_runtime.h>

#include "common/quant_launch.h"
#include "int8/int8_quant.h"
#include "int8/int8_quant_launch.h"

namespace lowbit {
namespace int8 {

namespace {

namespace q = quant::detail;

const q::QuantFamily kFamily = {
    {detail::launch_quant_f32, detail::launch_quant_bf16, detail::launch_quant_f16},
    detail::launch_write_scale,
    2,  // RangeKey's words (the symmetric kernels use the first)
};

// The codec's fields of a launch; zero points only with symmetric=false.
template <q::SharedQuantizeFn* kLaunch>
cudaError_t quantize_with(const QuantizeArgs& a, cudaStream_t stream) {
  if (a.symmetric && (a.zero_in != nullptr || a.zero_out != nullptr)) return cudaErrorInvalidValue;
  q::QuantLaunch l;
  l.asymmetric = !a.symmetric;
  l.p.zero_in = a.zero_in;
  l.p.zero_out = a.zero_out;
  return kLaunch(a, l, kFamily, stream);
}

}  // namespace

cudaError_t quantize_static(const QuantizeArgs& a, cudaStream_t stream) {
  return quantize_with<q::quantize_static>(a, stream);
}

cudaError_t quantize_per_tensor(const QuantizeArgs& a, cudaStream_t stream) {
  return quantize_with<q::quantize_per_tensor>(a, stream);
}

cudaError_t quantize_per_token(const QuantizeArgs& a, cudaStream_t stream) {
  return quantize_with<q::quantize_per_token>(a, stream);
}

cudaError_t quantize_per_group(const QuantizeArgs& a, cudaStream_t stream) {
  return quantize_with<q::quantize_per_group>(a, stream);
}

cudaError_t quantize_per_block128(const QuantizeArgs& a, cudaStream_t stream) {
  return quantize_with<q::quantize_per_block128>(a, stream);
}

cudaError_t dequantize(const DequantizeArgs& a, cudaStream_t stream) {
  q::DequantLaunch l;
  l.p.zero_in = a.zero;
  return q::dequantize(a, l, detail::launch_dequant, stream);
}

}  // namespace int8
}  // namespace lowbit
