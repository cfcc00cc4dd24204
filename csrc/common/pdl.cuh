// Programmatic dependent launch, device side. A kernel launched with the
// programmatic-serialization attribute (common/launch.h) may start while the kernel before it
// in the stream is still running; grid_dependency_wait returns once that kernel has completed
// and its writes are visible, so every global read or write of such a kernel comes after it
// (a no-op in a launch without the attribute). launch_dependents lets the next such kernel
// start as soon as every CTA of this grid has run it (CTAs that have exited count too); that
// kernel then does its own setup on SMs this grid leaves idle or frees, and waits in its turn.
// The instructions exist from sm_90 on; for older targets both compile to nothing (their
// launchers never ask for the attribute).
#pragma once

namespace lowbit {

__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace lowbit
