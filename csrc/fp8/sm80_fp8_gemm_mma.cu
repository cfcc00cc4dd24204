// fp16-widening instantiation of the tiled FP8 GEMM: sm_80 has no fp8 tensor cores, so fp8
// is widened to fp16 (exact) in registers; runs on every arch from sm_80.
#include "common/gemm_mma.cuh"
#include "fp8/fp8_gemm.h"

namespace lowbit {

cudaError_t sm80_fp8_gemm_mma(const GemmArgs& args, cudaStream_t stream) {
  return mma_tiled::launch<mma_tiled::F16WidenMma>(args, stream);
}

}  // namespace lowbit
