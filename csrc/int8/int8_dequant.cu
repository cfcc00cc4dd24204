// INT8 dequantization kernels: codes -> fp32 / bf16 / fp16 (3 instantiations; the zero
// point, when given, is read with the scale), and the quantizers' write-scale kernels (they
// read no input, so they live here rather than once per input dtype).
#include "int8/int8_codec.cuh"
#include "int8/int8_quant_launch.h"

namespace lowbit {
namespace int8 {
namespace detail {

cudaError_t launch_write_scale(const QuantLaunch& l, cudaStream_t stream) {
  if (l.asymmetric)
    return launch_plain(quant::detail::write_scale_kernel<AsymCodec>, dim3(1), dim3(1), 0,
                        stream, l.p);
  return launch_plain(quant::detail::write_scale_kernel<SymCodec>, dim3(1), dim3(1), 0, stream,
                      l.p);
}

cudaError_t launch_dequant(const DequantLaunch& l, cudaStream_t stream) {
  return quant::detail::launch_dequant_rows<Decoder>(l, stream);
}

}  // namespace detail
}  // namespace int8
}  // namespace lowbit
