// INT8 quantization and dequantization launchers: torch-free, raw device pointers, sizes and
// strides in elements, enums, and a stream. Every launcher returns a cudaError_t and never
// synchronizes the host. The numbers are the SPEC's (python/lowbit/reference/quant.py),
// with inv = 1.0f / scale (one correctly rounded division per scale):
//   symmetric:  q = clamp(rint(x_fp32 * inv), -127, 127), NaN -> 0;
//               dynamic scale = max(absmax / 127, 2^-126) (an all-zero slice gets 1);
//   asymmetric: q = clamp(rint(x_fp32 * inv) + zero, -128, 127), a NaN product -> zero;
//               the range [min, max] widened to include 0, dynamic
//               scale = max((max - min) / 255, 2^-126) (a zero range gets 1),
//               zero = clamp(rint(-128 - min / scale), -128, 127) (0 where that is NaN);
//   a NaN in a slice makes its dynamic scale NaN; static scales and zeros are used as given;
//   dequantized x = (q - zero) * scale in fp32, rounded to the output type.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/dtypes.h"
#include "common/quant_args.h"

namespace lowbit {
namespace int8 {

using quant::Granularity;

struct QuantizeArgs : quant::QuantizeView {
  bool symmetric = true;
  // Asymmetric only, in the scales' layout: the static zero points (with scale_in), and the
  // zero points used (a copy of zero_in when static).
  const int32_t* zero_in = nullptr;
  int32_t* zero_out = nullptr;
};

struct DequantizeArgs : quant::DequantizeView {
  const int32_t* zero = nullptr;  // in the scale's layout, or nullptr (symmetric)
};

// Bytes of device workspace QuantizeArgs::workspace must point to (the per-tensor kernel's
// statistic: |x| max, or both ends of the range).
constexpr size_t kQuantizeWorkspaceBytes = 8;

// The quantize kernels of the family table (int8_kernels.cpp), one launcher each, as the FP8
// family's (fp8/fp8_quant.h): quantize_static (given scale and zero, any granularity),
// quantize_per_tensor (two passes), quantize_per_token (the row in registers),
// quantize_per_group (1 x group, also 1x128 blocks), quantize_per_block128. Each returns
// cudaErrorInvalidValue for arguments of another kernel.
using QuantizeFn = cudaError_t(const QuantizeArgs& args, cudaStream_t stream);
QuantizeFn quantize_static;
QuantizeFn quantize_per_tensor;
QuantizeFn quantize_per_token;
QuantizeFn quantize_per_group;
QuantizeFn quantize_per_block128;

using DequantizeFn = cudaError_t(const DequantizeArgs& args, cudaStream_t stream);
DequantizeFn dequantize;

}  // namespace int8
}  // namespace lowbit
