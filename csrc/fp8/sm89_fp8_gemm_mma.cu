// fp8 mma.sync instantiation of the tiled FP8 GEMM: built for sm_89 and newer only.
#include "common/gemm_mma.cuh"
#include "fp8/fp8_gemm.h"

namespace lowbit {

cudaError_t sm89_fp8_gemm_mma(const GemmArgs& args, cudaStream_t stream) {
  return mma_tiled::launch<mma_tiled::Fp8Mma>(args, stream);
}

}  // namespace lowbit
