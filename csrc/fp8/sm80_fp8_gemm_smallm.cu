// fp16-upconvert instantiation of the small-M FP8 GEMM: sm_80 has no fp8 tensor cores, so
// fp8 is widened to fp16 (exact: every e4m3 value is an fp16 value) in registers.
#include "common/gemm_smallm.cuh"
#include "fp8/fp8_gemm.h"

namespace lowbit {

cudaError_t sm80_fp8_gemm_smallm(const GemmArgs& args, cudaStream_t stream) {
  return smallm::launch<smallm::MmaF16Upconvert>(args, stream);
}

}  // namespace lowbit
