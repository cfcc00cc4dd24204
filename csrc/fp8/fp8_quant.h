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

namespace lowbit {
namespace fp8 {

// How scales tile the input viewed as [rows, cols], as the launchers read it (the launch
// binding maps the (tile_rows, tile_cols) it is given to this).
enum class Granularity : int {
  kTensor = 0,    // one scale, shape ()
  kRow = 1,       // one per row (token / channel), [rows] (any [..., 1] view of it)
  kGroup = 2,     // one per 1 x group elements of a row, [rows, ceil(cols / group)]; covers
                  // `group` granularity (group = 32/64/128) and 1x128 activation blocks
  kBlock128 = 3,  // one per 128 x 128 tile, [ceil(rows / 128), ceil(cols / 128)]
};

struct QuantizeArgs {
  const void* x = nullptr;  // input, viewed as [rows, cols] with strides in elements
  FloatType x_type = FloatType::kBF16;
  int64_t rows = 0, cols = 0, row_stride = 0, col_stride = 1;
  void* q = nullptr;  // output codes, [rows, cols] contiguous
  Fp8Format fmt = Fp8Format::kE4M3FN;
  bool saturate = true;
  Granularity granularity = Granularity::kTensor;
  int64_t group = 128;  // kGroup only: 32, 64 or 128
  // Static scales in the granularity's layout (row-major, contiguous), or nullptr for
  // dynamic scales computed from the input.
  const float* scale_in = nullptr;
  // Receives the scales used (a copy of scale_in when static), same layout.
  float* scale_out = nullptr;
  // kTensor with dynamic scale: one uint32 of device memory (zeroed here, on the stream).
  uint32_t* workspace = nullptr;
  // sm_89+: use cvt.rn.satfinite for saturate=True e4m3fn / e5m2 (ignored elsewhere).
  bool hw_cvt = false;
};

struct DequantizeArgs {
  const void* q = nullptr;  // codes, viewed as [rows, cols] with strides in elements
  Fp8Format fmt = Fp8Format::kE4M3FN;
  int64_t rows = 0, cols = 0, row_stride = 0, col_stride = 1;
  // scale[(r / tile_rows) * scale_ld + c / tile_cols]; tile_rows is 1 or 128, tile_cols is
  // 32, 64 or 128; 0 in either means the whole extent (scale_ld is then ignored for columns:
  // use tile_cols = 0 for per-row scales, both 0 for a per-tensor scale).
  const float* scale = nullptr;
  int64_t scale_tile_rows = 0, scale_tile_cols = 0, scale_ld = 0;
  void* out = nullptr;  // [rows, cols] contiguous
  FloatType out_type = FloatType::kBF16;
};

// Bytes of device workspace QuantizeArgs::workspace must point to.
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
