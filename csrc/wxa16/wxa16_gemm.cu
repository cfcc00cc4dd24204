// The one instantiation list of the mixed-input GEMM family (wxa16_gemm.cuh): 2 bit widths x
// (decode at 1 or 2 token tiles x 3 group sizes and wide at 8 token tiles x 2 group sizes
// (each x zero points or not, int4), tiled) x 2 activation dtypes, and the dequantizers of
// the large-M path; every arch from sm_80.
#include "wxa16/wxa16_gemm.cuh"

namespace lowbit {

cudaError_t cuda_w4a16_gemm_decode(WXA16GemmArgs& args, cudaStream_t stream, bool plan) {
  return wxa16::decode<4>(args, stream, plan);
}
cudaError_t cuda_w8a16_gemm_decode(WXA16GemmArgs& args, cudaStream_t stream, bool plan) {
  return wxa16::decode<8>(args, stream, plan);
}
cudaError_t cuda_w4a16_gemm_wide(WXA16GemmArgs& args, cudaStream_t stream, bool plan) {
  return wxa16::wide<4>(args, stream, plan);
}
cudaError_t cuda_w8a16_gemm_wide(WXA16GemmArgs& args, cudaStream_t stream, bool plan) {
  return wxa16::wide<8>(args, stream, plan);
}
cudaError_t cuda_w4a16_gemm_tiled(WXA16GemmArgs& args, cudaStream_t stream, bool plan) {
  return wxa16::tiled<4>(args, stream, plan);
}
cudaError_t cuda_w8a16_gemm_tiled(WXA16GemmArgs& args, cudaStream_t stream, bool plan) {
  return wxa16::tiled<8>(args, stream, plan);
}
cudaError_t cuda_w4a16_gemm_dequant(WXA16GemmArgs& args, cudaStream_t stream, bool plan) {
  return wxa16::dequant<4>(args, stream, plan);
}
cudaError_t cuda_w8a16_gemm_dequant(WXA16GemmArgs& args, cudaStream_t stream, bool plan) {
  return wxa16::dequant<8>(args, stream, plan);
}

}  // namespace lowbit
