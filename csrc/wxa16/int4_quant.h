// Group-wise int4 weight quantization (int4_quantize) into the canonical packed layout
// (SPEC "INT4 interchange layout"): torch-free, raw device pointers, sizes and strides in
// elements. Bit-exact with python/lowbit/reference/int4.py quantize_int4.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtypes.h"

namespace lowbit {

struct Int4QuantizeArgs {
  const void* w = nullptr;  // [rows, cols] fp32 / bf16 / fp16, strides in elements
  FloatType w_type = FloatType::kBF16;
  int64_t rows = 0, cols = 0, row_stride = 0, col_stride = 1;
  int group = 128;  // 32, 64 or 128; cols % group == 0
  bool symmetric = true;
  uint8_t* q = nullptr;       // [rows, cols / 2] contiguous: k = 2j low nibble of byte j
  void* scales = nullptr;     // [rows, cols / group] contiguous, in w's type (fp32 for fp32)
  uint8_t* zeros = nullptr;   // [rows, cols / group] contiguous; asymmetric only
};

using Int4QuantizeFn = cudaError_t(const Int4QuantizeArgs&, cudaStream_t);

Int4QuantizeFn cuda_int4_quantize;

}  // namespace lowbit
