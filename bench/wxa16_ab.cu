// A/B timing of the W4A16 / W8A16 decode kernels without building the package: compiled
// against a copy of csrc/wxa16/wxa16_gemm.cuh (bench/wxa16_ab.sh picks which), it times
// wxa16::decode<4> (int4 prepacked, group 128 or $GROUP, bf16 scales, symmetric) and decode<8> (int8,
// fp32 scale per channel) on the decode benchmark weights at M = 1, 8 and 16 (or the shapes
// of $SHAPES, e.g. "32x4096x4096,64x28672x8192"), bf16 activations, with a 256 MB memset
// between repetitions so that the weight comes from DRAM. With $BF16 set, each shape also
// times cuBLAS's bf16 GEMM of the same M x N x K (the dense baseline, in the same process).
// A shape the variant's decode declines is printed as such. Built with -DAB_WIDE (a variant's
// flags: `bash bench/wxa16_ab.sh tree tree:-DAB_WIDE`), it times wxa16::wide<4> / wide<8>, the
// 64-token kernel, instead of decode; with -DAB_WGMMA, the sm_90a wgmma kernels
// (csrc/wxa16/sm90_wxa16_gemm_wgmma.cu, compiled in here). Adding -DLOWBIT_WXA16_TRACE to
// -DAB_WGMMA (`bash bench/wxa16_ab.sh tree:-DAB_WGMMA,-DLOWBIT_WXA16_TRACE`) builds that
// kernel with its phase trace, and each shape prints, from one more launch, where its CTAs'
// time went: the spread of their starts, the first chunk's arrival, the mainloop, the
// epilogue (the K split's gather included), and the cycles per chunk that the consumers
// waited for stages and spent gathering and dequantizing their weight fragments, and that
// the producer waited for empty slots. -DLOWBIT_WXA16_DECODE_TRACE (without -DAB_WGMMA or
// -DAB_WIDE: the decode kernel) prints the decode kernel's trace the same way: when its CTAs
// started, had their first stage's activations and scales in shared memory, ended their
// mainloop and took the K split's counter, and how long the gathering CTAs took from there.
// -DLOWBIT_WXA16_AB_SKIP=1, 2 or 3 beside -DAB_WGMMA
// times that kernel's chunk without its fragments, without its wgmmas, or without its
// fragments and x's loads (outputs then wrong). -DLOWBIT_WXA16_DECODE_SPLITS=S forces the
// decode kernel's K split (at most its stages; no K parts then); -DLOWBIT_WXA16_NO_PARTS
// keeps the split over CTAs where the plan would take K parts (M <= 2). Prints first an empty kernel's time under
// the same method (the floor a small weight's time is read against), then per shape the
// planned split, the median of 25 launches (CUDA events), the weight stream's rate and two
// sums of the bf16 outputs: variants that keep the kernel's summation order print the same
// sums. The data are hash-filled, not meaningful numbers.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifdef WITH_CUBLAS
#include <cublas_v2.h>
#endif

#include "wxa16/wxa16_gemm.cuh"
#ifdef AB_WGMMA
#include "wxa16/sm90_wxa16_gemm_wgmma.cu"
#endif

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

__global__ void empty_kernel() {}

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

// The median of 25 timed calls of `call` (CUDA events), each after a 256 MB memset of
// `flush`, so that the weight comes from DRAM.
template <class Call>
float median_us(void* flush, cudaEvent_t e0, cudaEvent_t e1, Call&& call) {
  std::vector<float> us;
  for (int r = 0; r < 25; ++r) {
    CHECK(cudaMemsetAsync(flush, r, 256 << 20));
    CHECK(cudaEventRecord(e0));
    call();
    CHECK(cudaEventRecord(e1));
    CHECK(cudaEventSynchronize(e1));
    float ms = 0.f;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    us.push_back(ms * 1000.f);
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

#if defined(LOWBIT_WXA16_TRACE) || defined(LOWBIT_WXA16_DECODE_TRACE)
// One launch of `call` after a flush, its trace buffer `stamps` zeroed before and read into
// `h` after.
template <class Stamps, class Call>
void traced_launch(void* flush, Stamps& stamps, Stamps& h, Call&& call) {
  std::memset(h, 0, sizeof(h));
  CHECK(cudaMemcpyToSymbol(stamps, h, sizeof(h)));
  CHECK(cudaMemsetAsync(flush, 7, 256 << 20));
  call();
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaMemcpyFromSymbol(h, stamps, sizeof(h)));
}
#endif

#ifdef LOWBIT_WXA16_TRACE
// One launch's phase trace (sm90_wxa16_gemm_wgmma.cu, namespace trace): medians and maxima
// over the CTAs, in us from the first CTA's start, and cycles per chunk of `chunks`.
template <class Call>
void print_trace(void* flush, int chunks, Call&& call) {
  namespace tr = wxa16::wg::trace;
  static unsigned long long h[tr::kCtas][tr::kSlots];
  traced_launch(flush, tr::stamps, h, call);
  std::vector<int> ctas;
  unsigned long long t0 = ~0ull;
  for (int c = 0; c < tr::kCtas; ++c)
    if (h[c][tr::kStart] != 0) ctas.push_back(c), t0 = std::min(t0, h[c][tr::kStart]);
  if (ctas.empty()) return;
  auto stat = [&](const char* what, auto value, double unit) {
    std::vector<double> v;
    for (int c : ctas) v.push_back(static_cast<double>(value(h[c])) / unit);
    std::sort(v.begin(), v.end());
    std::printf("  %-34s median %9.2f  max %9.2f\n", what, v[v.size() / 2], v.back());
  };
  auto ns = [](unsigned long long a, unsigned long long b) { return a > b ? a - b : 0ull; };
  const double per_chunk = chunks > 0 ? chunks : 1;
  std::printf("  trace: %zu CTAs, %d chunks each (us from the first start; cycles per chunk)\n",
              ctas.size(), chunks);
  stat("start", [&](auto& r) { return ns(r[tr::kStart], t0); }, 1e3);
  stat("first chunk at the consumers", [&](auto& r) { return ns(r[tr::kFirstFull], t0); }, 1e3);
  stat("mainloop end", [&](auto& r) { return ns(r[tr::kMainEnd], t0); }, 1e3);
  stat("end", [&](auto& r) { return ns(r[tr::kEnd], t0); }, 1e3);
  stat("mainloop (first chunk to end)",
       [&](auto& r) { return ns(r[tr::kMainEnd], r[tr::kFirstFull]); }, 1e3);
  stat("epilogue (gather, store)", [&](auto& r) { return ns(r[tr::kEnd], r[tr::kMainEnd]); },
       1e3);
  stat("consumer wait for a stage", [&](auto& r) { return r[tr::kWaitFull]; }, per_chunk);
  stat("consumer weight fragments", [&](auto& r) { return r[tr::kFragments]; }, per_chunk);
  stat("producer wait for a slot", [&](auto& r) { return r[tr::kWaitEmpty]; }, per_chunk);
}
#endif

#ifdef LOWBIT_WXA16_DECODE_TRACE
// One launch's decode trace (wxa16_gemm.cuh, namespace dtrace): medians and maxima in us
// from the first CTA's start, over all CTAs and over the CTAs that gathered a split.
template <class Call>
void print_decode_trace(void* flush, Call&& call) {
  namespace tr = wxa16::dtrace;
  static unsigned long long h[tr::kCtas][tr::kSlots];
  traced_launch(flush, tr::stamps, h, call);
  std::vector<int> all, last;
  unsigned long long t0 = ~0ull;
  for (int c = 0; c < tr::kCtas; ++c)
    if (h[c][tr::kStart] != 0) {
      all.push_back(c), t0 = std::min(t0, h[c][tr::kStart]);
      if (h[c][tr::kLast] == 1) last.push_back(c);
    }
  if (all.empty()) return;
  auto ns = [](unsigned long long a, unsigned long long b) { return a > b ? a - b : 0ull; };
  auto stat = [&](const char* what, const std::vector<int>& ctas, auto value) {
    if (ctas.empty()) return;
    std::vector<double> v;
    for (int c : ctas) v.push_back(static_cast<double>(value(h[c])) / 1e3);
    std::sort(v.begin(), v.end());
    std::printf("  %-40s min %7.2f  median %7.2f  max %7.2f\n", what, v.front(), v[v.size() / 2],
                v.back());
  };
  std::printf("  decode trace: %zu CTAs, %zu gathered (us from the first start)\n", all.size(),
              last.size());
  stat("start", all, [&](auto& r) { return ns(r[tr::kStart], t0); });
  stat("stage 0 in shared memory", all, [&](auto& r) { return ns(r[tr::kStage0], t0); });
  stat("warp 0's first weight chunk (after it)", all, [&](auto& r) { return ns(r[tr::kWeight0], t0); });
  stat("mainloop end (warp 0)", all, [&](auto& r) { return ns(r[tr::kMainEnd], t0); });
  stat("split counter taken", all, [&](auto& r) { return ns(r[tr::kArrive], t0); });
  stat("end", all, [&](auto& r) { return ns(r[tr::kEnd], t0); });
  stat("own: start -> stage 0", all, [&](auto& r) { return ns(r[tr::kStage0], r[tr::kStart]); });
  stat("own: stage 0 -> mainloop end", all, [&](auto& r) { return ns(r[tr::kMainEnd], r[tr::kStage0]); });
  stat("own: mainloop end -> counter", all, [&](auto& r) { return ns(r[tr::kArrive], r[tr::kMainEnd]); });
  stat("gatherer: counter -> end", last, [&](auto& r) { return ns(r[tr::kEnd], r[tr::kArrive]); });
  stat("gatherer: end", last, [&](auto& r) { return ns(r[tr::kEnd], t0); });
}
#endif

}  // namespace

int main(int argc, char** argv) {
  const char* name = argc > 1 ? argv[1] : "-";
  std::vector<Shape> shapes = {{1, 28672, 8192}, {8, 28672, 8192}, {16, 28672, 8192},
                               {1, 14336, 4096}, {16, 14336, 4096}, {1, 4096, 14336},
                               {1, 4096, 4096},  {16, 4096, 4096}};
  if (const char* env = std::getenv("SHAPES")) {
    shapes.clear();
    for (const char* c = env; *c;) {
      Shape s{};
      int used = 0;
      if (std::sscanf(c, "%dx%dx%d%n", &s.m, &s.n, &s.k, &used) != 3) break;
      shapes.push_back(s);
      c += used;
      if (*c == ',') ++c;
    }
  }
  // GROUP=64 times int4 weights of 64-wide groups (default 128).
  const int group4 = std::getenv("GROUP") ? std::atoi(std::getenv("GROUP")) : 128;
#ifdef WITH_CUBLAS
  const bool bf16 = std::getenv("BF16") != nullptr;
  cublasHandle_t blas = nullptr;
  if (bf16 && cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) {
    std::printf("cublasCreate failed\n");
    return 1;
  }
#else
  if (std::getenv("BF16")) std::printf("BF16: built without cuBLAS (no cublas_v2.h)\n");
#endif
  void* flush;
  CHECK(cudaMalloc(&flush, 256 << 20));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  // The method's floor: an empty kernel timed the same way (the flush's write-back and a
  // launch), against which a small weight's time is read.
  std::printf("%-12s empty kernel  %7.1f us\n", name,
              median_us(flush, e0, e1, [&] { empty_kernel<<<1, 32>>>(); }));
  for (int bits : {4, 8}) {
    for (const Shape& s : shapes) {
      const size_t wbytes = bits == 4 ? static_cast<size_t>((s.n + 15) / 16) * ((s.k + 63) / 64) * 512
                                      : static_cast<size_t>(s.n) * s.k;
      const size_t scales = bits == 4 ? static_cast<size_t>(s.n) * (s.k / group4) : s.n;
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
      a.scale_ld = bits == 4 ? s.k / group4 : 1;
      a.group = bits == 4 ? group4 : 0;
      a.bias_dtype = FloatType::kBF16;
      a.out = out;
      a.ldo = s.n;
#if defined(AB_WGMMA)
      auto fn = bits == 4 ? sm90_w4a16_gemm_wgmma : sm90_w8a16_gemm_wgmma;
#elif defined(AB_WIDE)
      auto fn = bits == 4 ? wxa16::wide<4> : wxa16::wide<8>;
#else
      auto fn = bits == 4 ? wxa16::decode<4> : wxa16::decode<8>;
#endif
      if (fn(a, nullptr, true) != cudaSuccess) {
        (void)cudaGetLastError();
        std::printf("%-12s w%da16 %3d x %5d x %5d  declined\n", name, bits, s.m, s.n, s.k);
        CHECK(cudaFree(w));
        CHECK(cudaFree(sc));
        CHECK(cudaFree(x));
        CHECK(cudaFree(out));
        continue;
      }
      if (a.counter_bytes) {
        CHECK(cudaMalloc(&a.counters, a.counter_bytes));
        CHECK(cudaMemset(a.counters, 0, a.counter_bytes));
      }
      if (a.partial_bytes) CHECK(cudaMalloc(&a.partials, a.partial_bytes));
      for (int i = 0; i < 3; ++i) CHECK(fn(a, nullptr, false));
      const double t = median_us(flush, e0, e1, [&] { CHECK(fn(a, nullptr, false)); });
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
      double tb = 0;  // cuBLAS bf16 out^T[N, M] = W[N, K] x^T, the weight as bf16 (hash bits)
#ifdef WITH_CUBLAS
      if (bf16 && bits == 4) {
        void* wb;
        CHECK(cudaMalloc(&wb, static_cast<size_t>(s.n) * s.k * 2));
        fill<<<1024, 256>>>(static_cast<uint32_t*>(wb), static_cast<size_t>(s.n) * s.k / 2, 4,
                            0x807f807fu, 0x3c003c00u);
        const float one = 1.f, zero = 0.f;
        auto gemm = [&] {
          return cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, s.n, s.m, s.k, &one, wb,
                              CUDA_R_16BF, s.k, x, CUDA_R_16BF, s.k, &zero, out, CUDA_R_16BF,
                              s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        };
        for (int i = 0; i < 3; ++i) gemm();
        tb = median_us(flush, e0, e1, [&] {
          if (gemm() != CUBLAS_STATUS_SUCCESS) std::printf("cublasGemmEx failed\n");
        });
        CHECK(cudaFree(wb));
      }
#endif
      std::printf("%-12s w%da16 %3d x %5d x %5d  splits %2d  %7.1f us  %5.2f TB/s  sum %.6e  abs %.6e",
                  name, bits, s.m, s.n, s.k, a.splits, t, wbytes / t * 1e-6, sum, asum);
      if (tb > 0) std::printf("  bf16 %7.1f us (%.2fx)", tb, tb / t);
      if (a.split_from > 0) std::printf("  (split from tile %d)", a.split_from);
      if (a.parts > 1) std::printf("  (K parts %d)", a.parts);
      std::printf("\n");
#ifdef LOWBIT_WXA16_DECODE_TRACE
      print_decode_trace(flush, [&] { CHECK(fn(a, nullptr, false)); });
#endif
#ifdef LOWBIT_WXA16_TRACE
      // Chunks per CTA: a tail split's whole tiles (most of its CTAs) run every chunk.
      print_trace(flush, (s.k + 63) / 64 / (a.split_from > 0 ? 1 : std::max(a.splits, 1)),
                  [&] { CHECK(fn(a, nullptr, false)); });
#endif
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
