// fp8 mma.sync instantiation of the tiled FP8 GEMM: built for sm_89 and newer only.
#include "fp8/fp8_gemm_mma.cuh"

namespace lowbit {

cudaError_t sm89_fp8_gemm_mma(const Fp8GemmArgs& args, cudaStream_t stream) {
  return mma_tiled::launch<mma_tiled::Fp8Mma>(args, stream);
}

}  // namespace lowbit
