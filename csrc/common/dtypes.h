// The value types every kernel family shares, one enum per idea. Python reads the codes
// from _C.enums() (bindings.cpp), never from a copy of these numbers.
#pragma once

namespace lowbit {

// A floating-point tensor's element type: inputs of the quantizers, outputs of the
// dequantizers and GEMMs, GEMM biases.
enum class FloatType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// An FP8 encoding (lowbit's format names).
enum class Fp8Format : int { kE4M3FN = 0, kE5M2 = 1, kE4M3FNUZ = 2 };

inline bool valid(FloatType t) {
  return t == FloatType::kF32 || t == FloatType::kBF16 || t == FloatType::kF16;
}
inline bool valid(Fp8Format f) {
  return f == Fp8Format::kE4M3FN || f == Fp8Format::kE5M2 || f == Fp8Format::kE4M3FNUZ;
}
inline int elem_bytes(FloatType t) { return t == FloatType::kF32 ? 4 : 2; }

// The names _C.enums() exports, in code order.
struct EnumName {
  const char* name;
  int value;
};
constexpr EnumName kFloatTypeNames[] = {
    {"float32", 0}, {"bfloat16", 1}, {"float16", 2}};
constexpr EnumName kFp8FormatNames[] = {
    {"e4m3fn", 0}, {"e5m2", 1}, {"e4m3fnuz", 2}};

}  // namespace lowbit
