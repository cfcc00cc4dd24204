// One row of a kernel family's table: what _C.kernels() exports and what the launch
// bindings index by kernel id. Each family builds its table inside the arch guards
// (LOWBIT_HAVE_SM89, LOWBIT_HAVE_SM90A), so a row exists only for a kernel in this build.
#pragma once

#include <cstddef>

namespace lowbit {

// The kinds of operation a kernel implements; each has one launch binding and one entry-point
// type (declared by the family that owns it).
enum class OpKind : int {
  kFp8Quantize,
  kFp8Dequantize,
  kFp8Gemm,
  kInt8Quantize,
  kInt8Dequantize,
  kInt8Gemm,
  kWxa16Gemm,
  kInt4Quantize,
  kFp8Linear,   // a quantizer fused into a GEMM (LinearFn)
  kInt8Linear,
};

inline const char* op_kind_name(OpKind k) {
  switch (k) {
    case OpKind::kFp8Quantize: return "fp8_quantize";
    case OpKind::kFp8Dequantize: return "fp8_dequantize";
    case OpKind::kFp8Gemm: return "fp8_gemm";
    case OpKind::kInt8Quantize: return "int8_quantize";
    case OpKind::kInt8Dequantize: return "int8_dequantize";
    case OpKind::kInt8Gemm: return "int8_gemm";
    case OpKind::kWxa16Gemm: return "wxa16_gemm";
    case OpKind::kInt4Quantize: return "int4_quantize";
    case OpKind::kFp8Linear: return "fp8_linear";
    case OpKind::kInt8Linear: return "int8_linear";
  }
  return "?";
}

struct KernelEntry {
  const char* name;  // as lowbit.explain reports it
  OpKind kind;
  int min_arch;       // 80, 89 or 90: the oldest compute capability it runs on
  void (*entry)();    // the launcher, cast from the entry-point type of `kind`
};

// A launcher as a table entry, and back (a round trip through one function-pointer type,
// which C++ defines).
template <class Fn>
inline auto as_entry(Fn* fn) {
  return reinterpret_cast<void (*)()>(fn);
}
template <class Fn>
Fn* entry_as(const KernelEntry& k) {
  return reinterpret_cast<Fn*>(k.entry);
}

struct KernelTable {
  const KernelEntry* rows;
  size_t size;
};

}  // namespace lowbit
