// FP8 dequantization kernels: codes of any format -> fp32 / bf16 / fp16 (9 instantiations),
// and the quantizers' write-scale kernel (one per format: it reads no input, so it lives here
// rather than once per input dtype).
#include "fp8/fp8_quant_kernels.cuh"

namespace lowbit {
namespace fp8 {
namespace detail {

namespace {

template <Fp8Format F>
cudaError_t launch_for_format(const DequantLaunch& l, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(l.grid));
  const dim3 block(static_cast<unsigned>(l.threads));
  switch (l.out_type) {
    case FloatType::kF32:
      dequant_rows_kernel<F, FloatType::kF32><<<grid, block, 0, stream>>>(l.p);
      break;
    case FloatType::kBF16:
      dequant_rows_kernel<F, FloatType::kBF16><<<grid, block, 0, stream>>>(l.p);
      break;
    case FloatType::kF16:
      dequant_rows_kernel<F, FloatType::kF16><<<grid, block, 0, stream>>>(l.p);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_write_scale(Fp8Format fmt, const QuantLaunch& l, cudaStream_t stream) {
  switch (fmt) {
    case Fp8Format::kE4M3FN:
      write_scale_kernel<Fp8Format::kE4M3FN><<<1, 1, 0, stream>>>(l.p);
      break;
    case Fp8Format::kE5M2:
      write_scale_kernel<Fp8Format::kE5M2><<<1, 1, 0, stream>>>(l.p);
      break;
    case Fp8Format::kE4M3FNUZ:
      write_scale_kernel<Fp8Format::kE4M3FNUZ><<<1, 1, 0, stream>>>(l.p);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_dequant(const DequantLaunch& l, cudaStream_t stream) {
  switch (l.fmt) {
    case Fp8Format::kE4M3FN:
      return launch_for_format<Fp8Format::kE4M3FN>(l, stream);
    case Fp8Format::kE5M2:
      return launch_for_format<Fp8Format::kE5M2>(l, stream);
    case Fp8Format::kE4M3FNUZ:
      return launch_for_format<Fp8Format::kE4M3FNUZ>(l, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace detail
}  // namespace fp8
}  // namespace lowbit
