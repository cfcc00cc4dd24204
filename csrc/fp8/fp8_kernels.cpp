// The FP8 family's kernel table: every FP8 kernel compiled into this build, with the op kind
// it implements, the oldest arch it runs on and its launcher. Rows for arch-specific kernels
// exist only inside their arch guard (defined by CMake when the arch's library is built).
// The names are the ones lowbit.explain reports; the Python side keys its table of M ranges
// and priorities (python/lowbit/backends/cuda/__init__.py) by them.
#include "fp8/fp8_kernels.h"

#include <iterator>

#include "fp8/fp8_gemm.h"
#include "fp8/fp8_quant.h"

namespace lowbit {

namespace {

constexpr OpKind kQ = OpKind::kFp8Quantize;
constexpr OpKind kGemm = OpKind::kFp8Gemm;

const KernelEntry kFp8Kernels[] = {
    {"cuda_fp8_quant_static", kQ, 80, as_entry(&fp8::quantize_static)},
    {"cuda_fp8_quant_per_tensor", kQ, 80, as_entry(&fp8::quantize_per_tensor)},
    {"cuda_fp8_quant_per_token", kQ, 80, as_entry(&fp8::quantize_per_token)},
    {"cuda_fp8_quant_per_group", kQ, 80, as_entry(&fp8::quantize_per_group)},
    {"cuda_fp8_quant_per_block128", kQ, 80, as_entry(&fp8::quantize_per_block128)},
    {"cuda_fp8_dequant", OpKind::kFp8Dequantize, 80, as_entry(&fp8::dequantize)},
#ifdef LOWBIT_HAVE_SM90A
    {"sm90_fp8_gemm_wgmma", kGemm, 90, as_entry(&sm90_fp8_gemm_wgmma)},
    {"sm90_fp8_gemm_swapab", kGemm, 90, as_entry(&sm90_fp8_gemm_swapab)},
    {"sm90_fp8_linear_swapab", OpKind::kFp8Linear, 90, as_entry(&sm90_fp8_linear_swapab)},
#endif
#ifdef LOWBIT_HAVE_SM89
    {"sm89_fp8_gemm_smallm", kGemm, 89, as_entry(&sm89_fp8_gemm_smallm)},
    {"sm89_fp8_gemm_mma", kGemm, 89, as_entry(&sm89_fp8_gemm_mma)},
#endif
    {"sm80_fp8_gemm_smallm", kGemm, 80, as_entry(&sm80_fp8_gemm_smallm)},
    {"sm80_fp8_gemm_mma", kGemm, 80, as_entry(&sm80_fp8_gemm_mma)},
};

}  // namespace

KernelTable fp8_kernel_table() { return {kFp8Kernels, std::size(kFp8Kernels)}; }

}  // namespace lowbit
