// mma.sync building blocks shared by lowbit's GEMMs for sm_80 and sm_89: the fp8, int8, fp16
// and bf16 tensor-core instructions and the fp8 -> fp16 widening of the sm_80 path.
//
// Fragments (PTX ISA, "Matrix fragments for mma.m16n8k32" / "m16n8k16"): with g = lane / 4
// and t = lane % 4, an e4m3 A fragment of m16n8k32 is four 32-bit words holding row g
// (words 0, 2) and row g + 8 (words 1, 3), k bytes 4t..4t+3 (words 0, 1) and 16 + 4t..
// (words 2, 3); the B fragment is two words of column g, k bytes 4t.. and 16 + 4t..; the fp32
// accumulator holds rows g (c0, c1) and g + 8 (c2, c3), columns 2t and 2t + 1. The s8
// m16n8k32 (IMMA) fragments are laid out the same way, with an s32 accumulator.
#pragma once
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace lowbit {

// c += a (16 x 32 e4m3) x b (32 x 8 e4m3); sm_89 and newer.
__device__ __forceinline__ void mma_e4m3_k32(float (&c)[4], uint32_t a0, uint32_t a1,
                                             uint32_t a2, uint32_t a3, uint32_t b0,
                                             uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();  // never launched: the host picks fp8 mma.sync kernels only on sm_89+
#endif
}

// c += a (16 x 32 s8) x b (32 x 8 s8), exactly in int32; sm_80 and newer.
__device__ __forceinline__ void mma_s8_k32(int32_t (&c)[4], uint32_t a0, uint32_t a1,
                                           uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// c += a (16 x 16 fp16) x b (16 x 8 fp16); sm_80 and newer.
__device__ __forceinline__ void mma_f16_k16(float (&c)[4], uint32_t a0, uint32_t a1,
                                            uint32_t a2, uint32_t a3, uint32_t b0,
                                            uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// c += a (16 x 16 bf16) x b (16 x 8 bf16); sm_80 and newer.
__device__ __forceinline__ void mma_bf16_k16(float (&c)[4], uint32_t a0, uint32_t a1,
                                             uint32_t a2, uint32_t a3, uint32_t b0,
                                             uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Two e4m3 codes (the low 16 bits) -> two fp16 (exact: every e4m3 value is an fp16 value,
// NaN stays NaN).
__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t pair) {
  __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(pair), __NV_E4M3);
  return static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
}

// One 4-byte word of A rows g and g + 8 and of B column g, as an fp16 m16n8k16: the word's
// bytes 0-1 take logical k 2t, 2t + 1 and bytes 2-3 take 8 + 2t, 9 + 2t. A dot product does
// not care in which order k is visited as long as both operands agree, and both use this map.
__device__ __forceinline__ void mma_e4m3_word_as_f16(float (&c)[4], uint32_t a_g, uint32_t a_g8,
                                                     uint32_t b) {
  mma_f16_k16(c, e4m3x2_to_f16x2(a_g & 0xFFFF), e4m3x2_to_f16x2(a_g8 & 0xFFFF),
              e4m3x2_to_f16x2(a_g >> 16), e4m3x2_to_f16x2(a_g8 >> 16),
              e4m3x2_to_f16x2(b & 0xFFFF), e4m3x2_to_f16x2(b >> 16));
}

}  // namespace lowbit
