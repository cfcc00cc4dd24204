// The INT8 instantiation of the sm_90a swap-AB small-M GEMM (common/sm90_gemm_swapab.cuh):
// s8 operands, exact int32 accumulation (IGMMA) and split-K reduction, the int8_gemm epilogue
// or the raw int32 of int8_mm.
#include "common/sm90_gemm_swapab.cuh"
#include "int8/int8_gemm.h"

namespace lowbit {

cudaError_t sm90_int8_gemm_swapab(const GemmArgs& p, cudaStream_t stream) {
  return sm90::swapab::gemm_swapab<sm90::S8>(p, stream);
}

}  // namespace lowbit

#ifdef LOWBIT_SWAPAB_TRACE
// The phase trace of this unit's kernels (the INT8 GEMM's), for bench/swapab_trace.py.
LOWBIT_SWAPAB_TRACE_READER(lowbit_swapab_trace_int8)
#endif
