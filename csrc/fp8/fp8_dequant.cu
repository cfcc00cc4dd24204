// FP8 dequantization kernels: codes of any format -> fp32 / bf16 / fp16 (9 instantiations),
// and the quantizers' write-scale kernel (it reads no input, so it lives here rather than
// once per input dtype).
#include "fp8/fp8_quant_kernels.cuh"

namespace lowbit {
namespace fp8 {
namespace detail {

cudaError_t launch_write_scale(const QuantLaunch& l, cudaStream_t stream) {
  if (!valid(l.p.fmt)) return cudaErrorInvalidValue;
  // The generic codec reads the format from l.p: one kernel for every format.
  return launch_plain(write_scale_kernel<Fp8Codec<GenericCodec>>, dim3(1), dim3(1), 0, stream,
                      l.p);
}

cudaError_t launch_dequant(const DequantLaunch& l, cudaStream_t stream) {
  switch (l.fmt) {
    case Fp8Format::kE4M3FN:
      return launch_dequant_rows<Fp8Decoder<Fp8Format::kE4M3FN>>(l, stream);
    case Fp8Format::kE5M2:
      return launch_dequant_rows<Fp8Decoder<Fp8Format::kE5M2>>(l, stream);
    case Fp8Format::kE4M3FNUZ:
      return launch_dequant_rows<Fp8Decoder<Fp8Format::kE4M3FNUZ>>(l, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace detail
}  // namespace fp8
}  // namespace lowbit
