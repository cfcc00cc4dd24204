// fp8 mma.sync instantiation of the small-M FP8 GEMM: built for sm_89 and sm_90a only.
#include "common/gemm_smallm.cuh"
#include "fp8/fp8_gemm.h"

namespace lowbit {

cudaError_t sm89_fp8_gemm_smallm(const GemmArgs& args, cudaStream_t stream) {
  return smallm::launch<smallm::MmaE4M3>(args, stream);
}

}  // namespace lowbit
