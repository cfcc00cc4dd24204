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
// The phase trace of this unit's kernels (the FP8 GEMM's; common/sm90_gemm_swapab.cuh), for
// bench/swapab_trace.py through ctypes: `ctas` rows of `stamps` 64-bit values into `dst`, or
// zeroes them where `dst` is null. 0 on success; -2 where the caller's sizes are not the
// build's; -1 on a CUDA error.
extern "C" __attribute__((visibility("default")))
int lowbit_swapab_trace(void* dst, int ctas, int stamps) {
  namespace tr = lowbit::sm90::swapab::trace;
  if (ctas != tr::kCtas || stamps != tr::kStamps) return -2;
  const size_t bytes = sizeof(unsigned long long) * tr::kCtas * tr::kStamps;
  cudaError_t e;
  if (dst == nullptr) {
    static unsigned long long zeros[tr::kCtas][tr::kStamps];
    e = cudaMemcpyToSymbol(tr::stamps, zeros, bytes);
  } else {
    e = cudaDeviceSynchronize();
    if (e == cudaSuccess) e = cudaMemcpyFromSymbol(dst, tr::stamps, bytes);
  }
  return e == cudaSuccess ? 0 : -1;
}
#endif
