// IMMA instantiation of the small-M split-K GEMM (common/gemm_smallm.cuh): s8 m16n8k32 into
// int32, every arch from sm_80.
#include "common/gemm_smallm.cuh"
#include "int8/int8_gemm.h"

namespace lowbit {

cudaError_t sm80_int8_gemm_smallm(const GemmArgs& args, cudaStream_t stream) {
  return smallm::launch<smallm::MmaS8>(args, stream);
}

}  // namespace lowbit
