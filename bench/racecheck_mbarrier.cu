// Does compute-sanitizer's racecheck see mbarrier arrive / wait as ordering plain shared
// memory stores and loads? The weight-only wgmma kernel's metadata warp hands each stage's
// scales to the consumers that way (stage_metadata in csrc/wxa16/sm90_wxa16_gemm_wgmma.cu),
// and racecheck reports the pair as hazards. This program runs the same hand-off, with the
// library's own mbarrier helpers, in two forms:
//   ordered   the producer warp waits on empty[s], stores, arrives on full[s]; the consumer
//             warp waits on full[s], loads, arrives on empty[s]: race-free by the PTX memory
//             model (an arrive releases, a completed wait acquires);
//   racy      the same, but the consumer reads the other stage, which the producer may be
//             writing: a real race (its sums are not meant to be right).
// Run under racecheck (sm_90a):
//   nvcc -std=c++17 -O2 -arch=sm_90a -DLOWBIT_SM90A -Icsrc -o /tmp/rcm bench/racecheck_mbarrier.cu
//   compute-sanitizer --tool racecheck /tmp/rcm ordered; compute-sanitizer --tool racecheck /tmp/rcm racy
// The ordered form's sums check the hand-off.
#include <cstdio>
#include <cstring>

#include "common/sm90.cuh"

namespace {
constexpr int kStages = 2, kIters = 16;

__global__ void handoff(bool racy, float* out) {
#ifdef LOWBIT_SM90A
  __shared__ __align__(16) float data[kStages][32];
  __shared__ __align__(8) uint64_t full[kStages], empty[kStages];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) lowbit::sm90::init_ring(full, empty, kStages, 1, 32);
  __syncthreads();
  if (warp == 1) {  // producer: every lane stores its element, then arrives
    for (int it = 0; it < kIters; ++it) {
      const int s = it % kStages;
      lowbit::sm90::mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);
      data[s][lane] = static_cast<float>(it * 32 + lane);
      lowbit::sm90::mbar_arrive(&full[s]);
    }
  } else {  // consumer: each lane loads its element, then one arrival releases the stage
    float sum = 0.f;
    for (int it = 0; it < kIters; ++it) {
      const int s = it % kStages;
      lowbit::sm90::mbar_wait(&full[s], (it / kStages) & 1);
      sum += data[racy ? (s + 1) % kStages : s][lane];
      __syncwarp();
      if (lane == 0) lowbit::sm90::mbar_arrive(&empty[s]);
    }
    out[lane] = sum;
  }
#endif
}
}  // namespace

int main(int argc, char** argv) {
  const bool racy = argc > 1 && std::strcmp(argv[1], "racy") == 0;
  float* out;
  cudaMalloc(&out, 32 * sizeof(float));
  handoff<<<1, 64>>>(racy, out);
  float h[32];
  const cudaError_t e = cudaMemcpy(h, out, sizeof(h), cudaMemcpyDeviceToHost);
  int wrong = 0;
  for (int l = 0; l < 32; ++l) {
    float want = 0.f;
    for (int it = 0; it < kIters; ++it) want += static_cast<float>(it * 32 + l);
    wrong += h[l] != want;
  }
  std::printf("%s: %s, %d of 32 sums wrong\n", racy ? "racy" : "ordered",
              cudaGetErrorString(e), wrong);
  return e == cudaSuccess ? 0 : 1;
}
