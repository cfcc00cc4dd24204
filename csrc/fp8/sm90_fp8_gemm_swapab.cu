// The FP8 instantiation of the sm_90a swap-AB small-M GEMM (common/sm90_gemm_swapab.cuh):
// e4m3 operands, fp32 accumulation promoted every 128 K (or fast_accum), any scale mode.
#include "common/sm90_gemm_swapab.cuh"
#include "fp8/fp8_gemm.h"

namespace lowbit {

cudaError_t sm90_fp8_gemm_swapab(const GemmArgs& p, cudaStream_t stream) {
  return sm90::swapab::gemm_swapab<sm90::E4M3>(p, stream);
}

}  // namespace lowbit

#ifdef LOWBIT_SWAPAB_TRACE
// The phase trace of this unit's kernels (the FP8 GEMM's), for bench/swapab_trace.py.
LOWBIT_SWAPAB_TRACE_READER(lowbit_swapab_trace)
#endif
