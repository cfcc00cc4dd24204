// What every quantizer family's launchers take (FP8: fp8/fp8_quant.h, INT8: int8/int8_quant.h,
// each adding its codec's fields): torch-free, raw device pointers, sizes and strides in
// elements. The families share one reduction + encode skeleton (common/quant_kernels.cuh)
// and one host-side planner (common/quant_launch.cu).
#pragma once

#include <cstdint>

#include "common/dtypes.h"

namespace lowbit {
namespace quant {

// How scales tile the input viewed as [rows, cols], as the launchers read it (the launch
// bindings map the (tile_rows, tile_cols) they are given to this).
enum class Granularity : int {
  kTensor = 0,    // one scale, shape ()
  kRow = 1,       // one per row (token / channel), [rows] (any [..., 1] view of it)
  kGroup = 2,     // one per 1 x group elements of a row, [rows, ceil(cols / group)]; covers
                  // `group` granularity (group = 32/64/128) and 1x128 activation blocks
  kBlock128 = 3,  // one per 128 x 128 tile, [ceil(rows / 128), ceil(cols / 128)]
};

struct QuantizeView {
  const void* x = nullptr;  // input, viewed as [rows, cols] with strides in elements
  FloatType x_type = FloatType::kBF16;
  int64_t rows = 0, cols = 0, row_stride = 0, col_stride = 1;
  void* q = nullptr;  // output codes (one byte each), [rows, cols] contiguous
  Granularity granularity = Granularity::kTensor;
  int64_t group = 128;  // kGroup only: 32, 64 or 128
  // Static scales in the granularity's layout (row-major, contiguous), or nullptr for
  // dynamic scales computed from the input.
  const float* scale_in = nullptr;
  // Receives the scales used (a copy of scale_in when static), same layout.
  float* scale_out = nullptr;
  // kTensor with dynamic scale: the family's workspace words of device memory (zeroed by the
  // launcher, on the stream).
  uint32_t* workspace = nullptr;
};

struct DequantizeView {
  const void* q = nullptr;  // codes (one byte each), viewed as [rows, cols] with strides
  int64_t rows = 0, cols = 0, row_stride = 0, col_stride = 1;
  // scale[(r / tile_rows) * scale_ld + c / tile_cols]; tile_rows is 1 or 128, tile_cols is
  // 32, 64 or 128; 0 in either means the whole extent (scale_ld is then ignored for columns:
  // use tile_cols = 0 for per-row scales, both 0 for a per-tensor scale).
  const float* scale = nullptr;
  int64_t scale_tile_rows = 0, scale_tile_cols = 0, scale_ld = 0;
  void* out = nullptr;  // [rows, cols] contiguous
  FloatType out_type = FloatType::kBF16;
};

}  // namespace quant
}  // namespace lowbit
