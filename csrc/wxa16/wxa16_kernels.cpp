// The mixed-input family's kernel table: every W4A16 / W8A16 kernel of this build and the
// int4 weight quantizer (every arch from sm_80, but the sm_90a wgmma kernels, whose rows exist
// only in a build with sm_90a), with its op kind and launcher. The Python side
// (python/lowbit/backends/cuda/wxa16_gemm.py) keys its M ranges and priorities by these names.
#include "wxa16/wxa16_kernels.h"

#include <iterator>

#include "wxa16/int4_quant.h"
#include "wxa16/wxa16_gemm.h"

namespace lowbit {

namespace {

constexpr OpKind kGemm = OpKind::kWxa16Gemm;

const KernelEntry kWxa16Kernels[] = {
    {"cuda_w4a16_gemm_decode", kGemm, 80, as_entry(&cuda_w4a16_gemm_decode)},
    {"cuda_w4a16_gemm_wide", kGemm, 80, as_entry(&cuda_w4a16_gemm_wide)},
    {"cuda_w4a16_gemm_tiled", kGemm, 80, as_entry(&cuda_w4a16_gemm_tiled)},
    {"cuda_w4a16_gemm_dequant", kGemm, 80, as_entry(&cuda_w4a16_gemm_dequant)},
    {"cuda_w8a16_gemm_decode", kGemm, 80, as_entry(&cuda_w8a16_gemm_decode)},
    {"cuda_w8a16_gemm_wide", kGemm, 80, as_entry(&cuda_w8a16_gemm_wide)},
    {"cuda_w8a16_gemm_tiled", kGemm, 80, as_entry(&cuda_w8a16_gemm_tiled)},
    {"cuda_w8a16_gemm_dequant", kGemm, 80, as_entry(&cuda_w8a16_gemm_dequant)},
#ifdef LOWBIT_HAVE_SM90A
    {"sm90_w4a16_gemm_wgmma", kGemm, 90, as_entry(&sm90_w4a16_gemm_wgmma)},
    {"sm90_w8a16_gemm_wgmma", kGemm, 90, as_entry(&sm90_w8a16_gemm_wgmma)},
#endif
    {"cuda_int4_quantize", OpKind::kInt4Quantize, 80, as_entry(&cuda_int4_quantize)},
};

}  // namespace

KernelTable wxa16_kernel_table() { return {kWxa16Kernels, std::size(kWxa16Kernels)}; }

}  // namespace lowbit
