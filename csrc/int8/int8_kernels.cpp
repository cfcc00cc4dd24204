// The INT8 family's kernel table: every INT8 kernel compiled into this build, with the op kind
// it implements, the oldest arch it runs on and its launcher. Rows for arch-specific kernels
// exist only inside their arch guard. The names are the ones lowbit.explain reports; the
// Python side keys its table of M ranges and priorities (python/lowbit/backends/cuda/
// __init__.py) by them.
#include "int8/int8_kernels.h"

#include <iterator>

#include "int8/int8_gemm.h"

namespace lowbit {

namespace {

constexpr OpKind kGemm = OpKind::kInt8Gemm;

const KernelEntry kInt8Kernels[] = {
#ifdef LOWBIT_HAVE_SM90A
    {"sm90_int8_gemm_wgmma", kGemm, 90, as_entry(&sm90_int8_gemm_wgmma)},
#endif
    {"sm80_int8_gemm_smallm", kGemm, 80, as_entry(&sm80_int8_gemm_smallm)},
    {"sm80_int8_gemm_mma", kGemm, 80, as_entry(&sm80_int8_gemm_mma)},
};

}  // namespace

KernelTable int8_kernel_table() { return {kInt8Kernels, std::size(kInt8Kernels)}; }

}  // namespace lowbit
