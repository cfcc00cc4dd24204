// IMMA instantiation of the tiled mma.sync GEMM (common/gemm_mma.cuh): s8 m16n8k32 into
// int32, every arch from sm_80 (the A100's int8 tensor cores).
#include "common/gemm_mma.cuh"
#include "int8/int8_gemm.h"

namespace lowbit {

cudaError_t sm80_int8_gemm_mma(const GemmArgs& args, cudaStream_t stream) {
  return mma_tiled::launch<mma_tiled::S8Mma>(args, stream);
}

}  // namespace lowbit
