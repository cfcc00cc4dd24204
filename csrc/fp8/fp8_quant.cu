// FP8 quantize / dequantize launchers: the FP8 codec's fields on the shared launchers
// (common/quant_launch.cu: validation, view, kernel choice; kernels in
// common/quant_kernels.cuh with the codecs of fp8_codec.cuh). Host code only; nothing here
// synchronizes the host.
#include <cuda_runtime.h>

#include "common/quant_launch.h"
#include "fp8/fp8_quant.h"
#include "fp8/fp8_quant_launch.h"

namespace lowbit {
namespace fp8 {

namespace {

namespace q = quant::detail;

const q::QuantFamily kFamily = {
    {detail::launch_quant_f32, detail::launch_quant_bf16, detail::launch_quant_f16},
    detail::launch_write_scale,
    1,  // the amax word
};

// The codec's fields of a launch; false for an unknown format.
bool codec_of(const QuantizeArgs& a, q::QuantLaunch& l) {
  if (!valid(a.fmt)) return false;
  l.hw_cvt = a.hw_cvt && a.saturate && a.fmt != Fp8Format::kE4M3FNUZ && q::device_has_fp8_cvt();
  l.p.fmt = a.fmt;
  l.p.saturate = a.saturate;
  return true;
}

template <q::SharedQuantizeFn* kLaunch>
cudaError_t quantize_with(const QuantizeArgs& a, cudaStream_t stream) {
  q::QuantLaunch l;
  if (!codec_of(a, l)) return cudaErrorInvalidValue;
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
  if (!valid(a.fmt)) return cudaErrorInvalidValue;
  q::DequantLaunch l;
  l.fmt = a.fmt;
  l.p.fmt = a.fmt;
  return q::dequantize(a, l, detail::launch_dequant, stream);
}

}  // namespace fp8
}  // namespace lowbit
