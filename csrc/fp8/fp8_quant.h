// FP8 quantization and dequantization launchers: torch-free, raw device pointers, sizes and
// strides in elements, enums, and a stream. Every launcher returns a cudaError_t and never
// synchronizes the host. The numbers are the SPEC's (python/lowbit/reference/quant.py):
//   q = encode(x_fp32 * inv),  inv = 1.0f / scale (one correctly rounded division per scale),
//   dynamic scale = max(absmax / fmt max, 2^-126) (correctly rounded; NaN propagates; an
//   all-zero slice gets 1); a static scale is used as given,
//   dequantized x = decode(q) * scale in fp32, rounded to the output type.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/dtypes.h"
#include "common/quant_args.h"

namespace lowbit {
namespace fp8 {

using quant::Granularity;

struct QuantizeArgs : quant::QuantizeView {
  Fp8Format fmt = Fp8Format::kE4M3FN;
  bool saturate = true;
  // sm_89+: use cvt.rn.satfinite for saturate=True e4m3fn / e5m2 (ignored elsewhere).
  bool hw_cvt = false;
};

struct DequantizeArgs : quant::DequantizeView {
  Fp8Format fmt = Fp8Format::kE4M3FN;
};

// Bytes of device workspace QuantizeArgs::workspace must point to (the amax word).
constexpr size_t kQuantizeWorkspaceBytes = 4;

// The quantize kernels of the family table (fp8_kernels.cpp), one launcher each:
// - quantize_static: a given scale (scale_in) of any granularity, one pass;
// - quantize_per_tensor: dynamic per-tensor scale, two passes (amax into the workspace word,
//   then scale + quantize);
// - quantize_per_token: dynamic per-row scale, the row held in registers, one read;
// - quantize_per_group: dynamic per 1 x group scale (also 1x128 blocks), one pass;
// - quantize_per_block128: dynamic per 128 x 128 tile scale, one pass.
// Each returns cudaErrorInvalidValue for arguments of another kernel (a static scale given to
// a dynamic one, another granularity).
using QuantizeFn = cudaError_t(const QuantizeArgs& args, cudaStream_t stream);
QuantizeFn quantize_static;
QuantizeFn quantize_per_tensor;
QuantizeFn quantize_per_token;
QuantizeFn quantize_per_group;
QuantizeFn quantize_per_block128;

using DequantizeFn = cudaError_t(const DequantizeArgs& args, cudaStream_t stream);
DequantizeFn dequantize;

}  // namespace fp8
}  // namespace lowbit
