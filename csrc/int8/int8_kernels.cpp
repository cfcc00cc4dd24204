// The INT8 family's kernel table: every INT8 kernel compiled into this build, with the op kind
// it implements, the oldest arch it runs on and its launcher. Rows for arch-specific kernels
// exist only inside their arch guard. The names are the ones lowbit.explain reports; the
// Python side keys its table of M ranges and priorities (python/lowbit/backends/cuda/
// __init__.py) by them.
#include "int8/int8_kernels.h"

#include <iterator>

#include "int8/int8_gemm.h"
#include "int8/int8_quant.h"

namespace lowbit {

namespace {

constexpr OpKind kQ = OpKind::kInt8Quantize;
constexpr OpKind kGemm = OpKind::kInt8Gemm;

const KernelEntry kInt8Kernels[] = {
    {"cuda_int8_quant_static", kQ, 80, as_entry(&int8::quantize_static)},
    {"cuda_int8_quant_per_tensor", kQ, 80, as_entry(&int8::quantize_per_tensor)},
    {"cuda_int8_quant_per_token", kQ, 80, as_entry(&int8::quantize_per_token)},
    {"cuda_int8_quant_per_group", kQ, 80, as_entry(&int8::quantize_per_group)},
    {"cuda_int8_quant_per_block128", kQ, 80, as_entry(&int8::quantize_per_block128)},
    {"cuda_int8_dequant", OpKind::kInt8Dequantize, 80, as_entry(&int8::dequantize)},
#ifdef LOWBIT_HAVE_SM90A
    {"sm90_int8_gemm_wgmma", kGemm, 90, as_entry(&sm90_int8_gemm_wgmma)},
    {"sm90_int8_gemm_swapab", kGemm, 90, as_entry(&sm90_int8_gemm_swapab)},
    {"sm90_int8_linear_swapab", OpKind::kInt8Linear, 90, as_entry(&sm90_int8_linear_swapab)},
#endif
    {"sm80_int8_gemm_smallm", kGemm, 80, as_entry(&sm80_int8_gemm_smallm)},
    {"sm80_int8_gemm_mma", kGemm, 80, as_entry(&sm80_int8_gemm_mma)},
};

}  // namespace

KernelTable int8_kernel_table() { return {kInt8Kernels, std::size(kInt8Kernels)}; }

}  // namespace lowbit
