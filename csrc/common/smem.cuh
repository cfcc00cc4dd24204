// The 32-bit shared-state-space address of a generic pointer into shared memory: the form
// that ldmatrix, cp.async, mbarrier, TMA and the wgmma descriptors take. Shared by the
// mma.sync kernels (sm_80/sm_89) and the sm_90a ones.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace lowbit {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The dynamic shared memory `raw` advanced to the next 1024-byte boundary of the shared
// window (the 128-byte swizzle's atom; the launch reserves the 1 KB of slack). The result is
// `raw` plus an offset, so the compiler still knows it points into shared memory and accesses
// through it compile to LDS / STS with 32-bit addresses. Rounding the address as an integer
// (through uintptr_t) hid that: every access through it became a generic LD / ST with 64-bit
// address arithmetic.
__device__ __forceinline__ uint8_t* align_smem_1024(uint8_t* raw) {
  return raw + ((1024u - (smem_u32(raw) & 1023u)) & 1023u);
}

}  // namespace lowbit
