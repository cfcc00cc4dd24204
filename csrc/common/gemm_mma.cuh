// Tiled 8-bit GEMM on mma.sync, for any M, one kernel body with the tensor-core step as a
// policy: FP8 on sm_89 (fp8 tensor cores, m16n8k32 e4m3) and on sm_80 (no fp8 tensor cores:
// fp8 widened to fp16 in registers, m16n8k16); INT8 on every arch from sm_80 (IMMA,
// m16n8k32 s8, whose fragments are e4m3's, accumulating exactly in int32: no promotion, and
// the epilogue converts once, int_acc_value).
//
// Tiles. A CTA computes a 128 x 128 tile of out with 8 warps (2 along M x 4 along N, 64 x 32
// each: 4 x 4 m16n8 fragments). K advances 128 at a time: one K-step is one 128-wide scale
// block, so block scales and the promotion of the accurate mode apply once per step.
//
// Pipeline. cp.async (16 bytes per thread, zero-filled past M, N and K) into a 3-stage ring
// of [128 rows x 128 bytes] tiles of a and b (96 KB: it fits the 99 KB that sm_86 and sm_89
// give one CTA). Each row's eight 16-byte chunks are XOR-swizzled by the row (chunk c of row r
// sits at slot c ^ (r % 8)), so the eight rows an ldmatrix reads fall in distinct banks.
// ldmatrix.x4 then yields the fp8 mma fragments directly: an 8 x 16-byte matrix gives lane
// (g, t) bytes 4t..4t+3 of row g, which is the e4m3 fragment layout.
//
// Accuracy. Unless fast_accum (and the scales are not per block), each K-step accumulates from
// zero in the tensor core and is promoted into fp32 registers, times the step's block scales.
// The epilogue applies per-tensor / per-row scales and the bias in fp32 and rounds once.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/epilogue.cuh"
#include "common/launch.h"
#include "common/mma_sync.cuh"
#include "common/smem.cuh"
#include "common/gemm_args.h"

namespace lowbit {
namespace mma_tiled {

constexpr int kBM = 128, kBN = 128, kBK = 128;
constexpr int kStages = 3;
constexpr int kWarpsM = 2, kWarpsN = 4;
constexpr int kThreads = 32 * kWarpsM * kWarpsN;
constexpr int kMT = kBM / kWarpsM / 16;  // m16 fragments per warp
constexpr int kNT = kBN / kWarpsN / 8;   // n8 fragments per warp
constexpr int kTileBytes = kBM * kBK;    // a and b tiles are both 128 rows x 128 bytes
constexpr int kStageBytes = 2 * kTileBytes;
constexpr int kSmemBytes = kStages * kStageBytes;
constexpr int kChunksPerThread = kTileBytes / 16 / kThreads;
constexpr int kRasterGroup = 8;  // row tiles that share each column of b tiles in L2
static_assert(kBN == 128, "b's block scales are per 128 rows of b: one per CTA column tile");
static_assert(kSmemBytes <= 99 * 1024, "the ring must fit the 99 KB one CTA gets on sm_86/sm_89");

__device__ __forceinline__ uint32_t swizzled(int row, int chunk) {
  return static_cast<uint32_t>(row * kBK + ((chunk ^ (row & 7)) << 4));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  // src-size 0 writes 16 zero bytes and reads nothing (src is still a valid address).
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Tensor-core step policies: c += a x b for one k32 slice of fp8 fragments (a: 4 words as
// m16n8k32 lays them out, b: 2 words). Widen first converts each fragment once per slice,
// so a fragment shared by four mma tiles is converted once, not four times.
struct Fp8Mma {
  using Acc = float;
  static constexpr int kAWords = 4, kBWords = 2;
  __device__ __forceinline__ static void widen_a(uint32_t (&out)[4], const uint32_t (&in)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = in[i];
  }
  __device__ __forceinline__ static void widen_b(uint32_t (&out)[2], uint32_t b0, uint32_t b1) {
    out[0] = b0;
    out[1] = b1;
  }
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    mma_e4m3_k32(c, a[0], a[1], a[2], a[3], b[0], b[1]);
  }
};

// The fp16 form of one k32 slice is two m16n8k16 (see mma_e4m3_word_as_f16 for the k order):
// words 0-1 of a and word 0 of b, then words 2-3 of a and word 1 of b.
struct F16WidenMma {
  using Acc = float;
  static constexpr int kAWords = 8, kBWords = 4;
  __device__ __forceinline__ static void widen_a(uint32_t (&out)[8], const uint32_t (&in)[4]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint32_t g = in[2 * h], g8 = in[2 * h + 1];
      out[4 * h + 0] = e4m3x2_to_f16x2(g & 0xFFFF);
      out[4 * h + 1] = e4m3x2_to_f16x2(g8 & 0xFFFF);
      out[4 * h + 2] = e4m3x2_to_f16x2(g >> 16);
      out[4 * h + 3] = e4m3x2_to_f16x2(g8 >> 16);
    }
  }
  __device__ __forceinline__ static void widen_b(uint32_t (&out)[4], uint32_t b0, uint32_t b1) {
    out[0] = e4m3x2_to_f16x2(b0 & 0xFFFF);
    out[1] = e4m3x2_to_f16x2(b0 >> 16);
    out[2] = e4m3x2_to_f16x2(b1 & 0xFFFF);
    out[3] = e4m3x2_to_f16x2(b1 >> 16);
  }
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[8],
                                             const uint32_t (&b)[4]) {
    mma_f16_k16(c, a[0], a[1], a[2], a[3], b[0], b[1]);
    mma_f16_k16(c, a[4], a[5], a[6], a[7], b[2], b[3]);
  }
};

// s8 x s8 into int32: the fragments go to the tensor core as loaded.
struct S8Mma {
  using Acc = int32_t;
  static constexpr int kAWords = 4, kBWords = 2;
  __device__ __forceinline__ static void widen_a(uint32_t (&out)[4], const uint32_t (&in)[4]) {
    Fp8Mma::widen_a(out, in);
  }
  __device__ __forceinline__ static void widen_b(uint32_t (&out)[2], uint32_t b0, uint32_t b1) {
    Fp8Mma::widen_b(out, b0, b1);
  }
  __device__ __forceinline__ static void mma(int32_t (&c)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    mma_s8_k32(c, a[0], a[1], a[2], a[3], b[0], b[1]);
  }
};

// Copies K-step `ks` of the CTA's a rows [m0, m0 + 128) and b rows [n0, n0 + 128) into stage
// smem (a tile, then b tile). Chunks past M, N or K are zero-filled.
__device__ __forceinline__ void load_stage(const GemmArgs& p, uint32_t stage, int m0, int n0,
                                           int ks) {
  const int64_t k0 = static_cast<int64_t>(ks) * kBK;
#pragma unroll
  for (int i = 0; i < kChunksPerThread; ++i) {
    const int id = threadIdx.x + i * kThreads;
    const int row = id / 8, chunk = id % 8;
    const int64_t k = k0 + chunk * 16;
    const bool in_k = k < p.K;
    const bool a_ok = in_k && m0 + row < p.M, b_ok = in_k && n0 + row < p.N;
    const uint8_t* a_src = a_ok ? p.a + static_cast<int64_t>(m0 + row) * p.lda + k : p.a;
    const uint8_t* b_src = b_ok ? p.b + static_cast<int64_t>(n0 + row) * p.ldb + k : p.b;
    cp_async16(stage + swizzled(row, chunk), a_src, a_ok);
    cp_async16(stage + kTileBytes + swizzled(row, chunk), b_src, b_ok);
  }
}

template <typename Mma>
__global__ void __launch_bounds__(kThreads) gemm_mma_kernel(const GemmArgs p) {
  using Acc = typename Mma::Acc;
  constexpr bool kInt = std::is_same<Acc, int32_t>::value;
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem0 = smem_u32(smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp / kWarpsN, wn = warp % kWarpsN;
  const int g = lane / 4, t = lane % 4;

  // Grouped raster: kRasterGroup row tiles walk each column of b tiles together.
  const int tiles_m = (p.M + kBM - 1) / kBM, tiles_n = (p.N + kBN - 1) / kBN;
  const int64_t per_group = static_cast<int64_t>(kRasterGroup) * tiles_n;
  const int64_t tile = blockIdx.x;
  const int first_m = static_cast<int>(tile / per_group) * kRasterGroup;
  const int group_m = min(tiles_m - first_m, kRasterGroup);
  const int tm = first_m + static_cast<int>((tile % per_group) % group_m);
  const int tn = static_cast<int>((tile % per_group) / group_m);
  const int m0 = tm * kBM, n0 = tn * kBN;

  const int nk = (p.K + kBK - 1) / kBK;
  const bool a_block = p.a_mode == ScaleMode::kBlock, b_block = p.b_mode == ScaleMode::kBlock;
  const bool promote = !kInt && (!p.fast_accum || a_block || b_block);

  float acc[kMT][kNT][4];
  Acc part[kMT][kNT][4];
#pragma unroll
  for (int i = 0; i < kMT; ++i)
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][j][c] = part[i][j][c] = 0;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nk) load_stage(p, smem0 + s * kStageBytes, m0, n0, s);
    cp_async_commit();
  }

  // ldmatrix row addresses: lane l feeds row l % 8 of matrix l / 8.
  const int q = lane / 8, r = lane % 8;
  const int a_row = wm * (kMT * 16) + (q & 1) * 8 + r;  // + 16 i; chunk 2 s + q / 2
  const int b_row = wn * (kNT * 8) + (q >> 1) * 8 + r;  // + 16 jj; chunk 2 s + q % 2

  for (int ks = 0; ks < nk; ++ks) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage ks is in; every warp is done with the stage reloaded below
    {
      const int next = ks + kStages - 1;
      if (next < nk) load_stage(p, smem0 + (next % kStages) * kStageBytes, m0, n0, next);
      cp_async_commit();
    }

    const uint32_t sa_tile = smem0 + (ks % kStages) * kStageBytes;
    const uint32_t sb_tile = sa_tile + kTileBytes;
#pragma unroll
    for (int s = 0; s < kBK / 32; ++s) {
      uint32_t af[kMT][Mma::kAWords], bf[kNT][Mma::kBWords];
#pragma unroll
      for (int i = 0; i < kMT; ++i) {
        uint32_t raw[4];
        ldmatrix_x4(raw, sa_tile + swizzled(a_row + 16 * i, 2 * s + (q >> 1)));
        Mma::widen_a(af[i], raw);
      }
#pragma unroll
      for (int jj = 0; jj < kNT / 2; ++jj) {
        uint32_t raw[4];
        ldmatrix_x4(raw, sb_tile + swizzled(b_row + 16 * jj, 2 * s + (q & 1)));
        Mma::widen_b(bf[2 * jj], raw[0], raw[1]);
        Mma::widen_b(bf[2 * jj + 1], raw[2], raw[3]);
      }
#pragma unroll
      for (int i = 0; i < kMT; ++i)
#pragma unroll
        for (int j = 0; j < kNT; ++j) Mma::mma(part[i][j], af[i], bf[j]);
    }

    // This step's block scales (read after the mmas: held across them they cost registers).
    float sa[kMT][2], sb = 1.f;
    if (promote) {
#pragma unroll
      for (int i = 0; i < kMT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int m = m0 + wm * (kMT * 16) + i * 16 + h * 8 + g;
          sa[i][h] = !a_block ? 1.f : m < p.M ? p.a_scale[m * p.a_scale_ld + ks] : 0.f;
        }
      if (b_block) sb = p.b_scale[static_cast<int64_t>(tn) * p.b_scale_ld + ks];
    }

    if (promote) {
#pragma unroll
      for (int i = 0; i < kMT; ++i)
#pragma unroll
        for (int j = 0; j < kNT; ++j)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            acc[i][j][c] = fmaf(part[i][j][c], sa[i][c / 2] * sb, acc[i][j][c]);
            part[i][j][c] = 0;
          }
    }
  }
  cp_async_wait<0>();

  // Epilogue: per-tensor / per-row scales, bias, one rounding; pairs of columns per store.
  const bool pairs = pair_store_ok(p.out, p.out_dtype, p.ldo);
#pragma unroll
  for (int i = 0; i < kMT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + wm * (kMT * 16) + i * 16 + h * 8 + g;
      if (m >= p.M) continue;
      if (kInt && p.out_int32) {  // int8_mm: the accumulators as they are
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
          const int n = n0 + wn * (kNT * 8) + j * 8 + 2 * t;
          if (n < p.N)
            store_i32_pair(p.out, static_cast<int64_t>(m) * p.ldo + n, part[i][j][2 * h],
                           part[i][j][2 * h + 1], n + 1 < p.N, pairs);
        }
        continue;
      }
      const float fa = a_block ? 1.f : p.a_scale[p.a_mode == ScaleMode::kRow ? m : 0];
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        const int n = n0 + wn * (kNT * 8) + j * 8 + 2 * t;
        if (n >= p.N) continue;
        float v[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int ne = n + e < p.N ? n + e : n;
          if constexpr (kInt)
            v[e] = int_acc_value(p, part[i][j][2 * h + e], m, ne);
          else
            v[e] = promote ? acc[i][j][2 * h + e] : part[i][j][2 * h + e];
          v[e] *= fa;
          if (!b_block) v[e] *= p.b_scale[p.b_mode == ScaleMode::kRow ? ne : 0];
          if (p.bias) v[e] += load_bias(p.bias, p.bias_dtype, ne);
        }
        const int64_t o = static_cast<int64_t>(m) * p.ldo + n;
        if (pairs && n + 1 < p.N) {
          store_out2(p.out, p.out_dtype, o, v[0], v[1]);
        } else {
          store_out(p.out, p.out_dtype, o, v[0]);
          if (n + 1 < p.N) store_out(p.out, p.out_dtype, o + 1, v[1]);
        }
      }
    }
}

template <typename Mma>
cudaError_t launch(const GemmArgs& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (p.M < 0 || p.N < 0 || p.K <= 0 || p.K % 16) return cudaErrorInvalidValue;
  const int64_t tiles = static_cast<int64_t>((p.M + kBM - 1) / kBM) * ((p.N + kBN - 1) / kBN);
  if (tiles > 0x7FFFFFFF) return cudaErrorInvalidValue;
  static std::atomic<bool> smem_set[kMaxDevices];
  int device = 0;
  cudaError_t e = current_device(device);
  if (e != cudaSuccess) return e;
  auto kernel = gemm_mma_kernel<Mma>;
  e = opt_in_smem(kernel, kSmemBytes, device, smem_set);
  if (e != cudaSuccess) return e;
  return launch_plain(kernel, dim3(static_cast<unsigned>(tiles)), dim3(kThreads), kSmemBytes,
                      stream, p);
}

}  // namespace mma_tiled
}  // namespace lowbit
