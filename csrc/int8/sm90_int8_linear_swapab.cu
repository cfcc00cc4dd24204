// The INT8 linear layer's forward at M <= 64 as one kernel (common/sm90_gemm_swapab.cuh with
// its fused quantizer): symmetric activations quantized in the swap-AB GEMM's prologue by the
// per-token / static quantizer's codec, then the s8 GEMM with exact int32 accumulation.
// Asymmetric activations (zero points) keep the quantizer kernel.
#include "common/sm90_gemm_swapab.cuh"
#include "int8/int8_codec.cuh"
#include "int8/int8_gemm.h"

namespace lowbit {

cudaError_t sm90_int8_linear_swapab(const GemmArgs& p, const ActQuantArgs& act,
                                    cudaStream_t stream) {
  return sm90::swapab::linear_swapab<sm90::S8, int8::detail::SymCodec>(p, act, stream);
}

}  // namespace lowbit
