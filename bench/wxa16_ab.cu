// A/B timing of the W4A16 / W8A16 decode kernels without building the package: compiled
// against a copy of csrc/wxa16/wxa16_gemm.cuh (bench/wxa16_ab.sh picks which), it times
// wxa16::decode<4> (int4 prepacked, group 128, bf16 scales, symmetric) and decode<8> (int8,
// fp32 scale per channel) on the decode benchmark weights at M = 1, 8 and 16, bf16
// activations, with a 256 MB memset between repetitions so that the weight comes from DRAM.
// Prints per shape the planned split, the median of 25 launches (CUDA events), the weight
// stream's rate and two sums of the bf16 outputs: variants that keep the kernel's summation
// order print the same sums. The data are hash-filled, not meaningful numbers.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "wxa16/wxa16_gemm.cuh"

using namespace lowbit;

namespace {

__global__ void fill(uint32_t* p, size_t n, uint32_t seed, uint32_t mask, uint32_t bits) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    p[i] = (h & mask) | bits;
  }
}

void check(cudaError_t e, int line) {
  if (e != cudaSuccess) {
    std::printf("CUDA error %s at line %d\n", cudaGetErrorString(e), line);
    std::exit(1);
  }
}
#define CHECK(x) check((x), __LINE__)

struct Shape {
  int m, n, k;
};

}  // namespace

int main(int argc, char** argv) {
  const char* name = argc > 1 ? argv[1] : "-";
  const Shape shapes[] = {{1, 28672, 8192}, {8, 28672, 8192}, {16, 28672, 8192},
                          {1, 14336, 4096}, {16, 14336, 4096}, {1, 4096, 14336},
                          {1, 4096, 4096},  {16, 4096, 4096}};
  void* flush;
  CHECK(cudaMalloc(&flush, 256 << 20));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  for (int bits : {4, 8}) {
    for (const Shape& s : shapes) {
      const size_t wbytes = bits == 4 ? static_cast<size_t>((s.n + 15) / 16) * ((s.k + 63) / 64) * 512
                                      : static_cast<size_t>(s.n) * s.k;
      const size_t scales = bits == 4 ? static_cast<size_t>(s.n) * (s.k / 128) : s.n;
      void *w, *sc, *x, *out;
      CHECK(cudaMalloc(&w, wbytes));
      CHECK(cudaMalloc(&sc, scales * 4 + 16));
      CHECK(cudaMalloc(&x, static_cast<size_t>(s.m) * s.k * 2));
      CHECK(cudaMalloc(&out, static_cast<size_t>(s.m) * s.n * 2));
      fill<<<1024, 256>>>(static_cast<uint32_t*>(w), wbytes / 4, 1, 0xffffffffu, 0);
      if (bits == 4)  // bf16 pairs near 2^-8
        fill<<<1024, 256>>>(static_cast<uint32_t*>(sc), scales / 2, 2, 0x003f003fu, 0x3b803b80u);
      else  // fp32 near 2^-8
        fill<<<1024, 256>>>(static_cast<uint32_t*>(sc), scales, 2, 0x007fffffu, 0x3b800000u);
      // bf16 pairs in [-1, 1)
      fill<<<1024, 256>>>(static_cast<uint32_t*>(x), static_cast<size_t>(s.m) * s.k / 2, 3,
                          0x807f807fu, 0x3f003f00u);
      WXA16GemmArgs a{};
      a.bits = bits;
      a.M = s.m;
      a.N = s.n;
      a.K = s.k;
      a.x = x;
      a.ldx = s.k;
      a.x_dtype = FloatType::kBF16;
      a.w = w;
      a.ldw = s.k;
      a.scales = sc;
      a.scale_dtype = bits == 4 ? FloatType::kBF16 : FloatType::kF32;
      a.scale_ld = bits == 4 ? s.k / 128 : 1;
      a.group = bits == 4 ? 128 : 0;
      a.bias_dtype = FloatType::kBF16;
      a.out = out;
      a.ldo = s.n;
      auto fn = bits == 4 ? wxa16::decode<4> : wxa16::decode<8>;
      CHECK(fn(a, nullptr, true));
      if (a.counter_bytes) {
        CHECK(cudaMalloc(&a.counters, a.counter_bytes));
        CHECK(cudaMemset(a.counters, 0, a.counter_bytes));
      }
      if (a.partial_bytes) CHECK(cudaMalloc(&a.partials, a.partial_bytes));
      for (int i = 0; i < 3; ++i) CHECK(fn(a, nullptr, false));
      std::vector<float> us;
      for (int r = 0; r < 25; ++r) {
        CHECK(cudaMemsetAsync(flush, r, 256 << 20));
        CHECK(cudaEventRecord(e0));
        CHECK(fn(a, nullptr, false));
        CHECK(cudaEventRecord(e1));
        CHECK(cudaEventSynchronize(e1));
        float ms = 0.f;
        CHECK(cudaEventElapsedTime(&ms, e0, e1));
        us.push_back(ms * 1000.f);
      }
      std::sort(us.begin(), us.end());
      std::vector<uint16_t> h(static_cast<size_t>(s.m) * s.n);
      CHECK(cudaMemcpy(h.data(), out, h.size() * 2, cudaMemcpyDeviceToHost));
      double sum = 0, asum = 0;
      for (uint16_t v : h) {
        const uint32_t b = static_cast<uint32_t>(v) << 16;
        float f;
        std::memcpy(&f, &b, 4);
        sum += f;
        asum += std::fabs(f);
      }
      const double t = us[us.size() / 2];
      std::printf("%-12s w%da16 %3d x %5d x %5d  splits %2d  %7.1f us  %5.2f TB/s  sum %.6e  abs %.6e\n",
                  name, bits, s.m, s.n, s.k, a.splits, t, wbytes / t * 1e-6, sum, asum);
      CHECK(cudaFree(w));
      CHECK(cudaFree(sc));
      CHECK(cudaFree(x));
      CHECK(cudaFree(out));
      if (a.counters) CHECK(cudaFree(a.counters));
      if (a.partials) CHECK(cudaFree(a.partials));
    }
  }
  return 0;
}
