// The FP8 linear layer's forward at M <= 64 as one kernel (common/sm90_gemm_swapab.cuh with
// its fused quantizer): the activations quantized in the swap-AB GEMM's prologue by the
// per-token / static quantizer's codec (saturating e4m3fn, the format Fp8Linear runs), then
// the e4m3 GEMM with fp32 promotion. Its own translation unit, built in parallel with the
// GEMM's.
#include "common/sm90_gemm_swapab.cuh"
#include "fp8/fp8_gemm.h"
#include "fp8/fp8_quant_kernels.cuh"

namespace lowbit {

cudaError_t sm90_fp8_linear_swapab(const GemmArgs& p, const ActQuantArgs& act,
                                   cudaStream_t stream) {
  // The hardware cvt encoder: sm_90 has it, and it gives the software encoder's codes.
  using ActCodec = fp8::detail::Fp8Codec<fp8::Codec<Fp8Format::kE4M3FN, true, true>>;
  return sm90::swapab::linear_swapab<sm90::E4M3, ActCodec>(p, act, stream);
}

}  // namespace lowbit
