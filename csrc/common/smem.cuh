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

}  // namespace lowbit
