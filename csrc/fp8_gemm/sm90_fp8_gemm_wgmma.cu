// sm_90a FP8 GEMM: TMA loads into a multi-stage shared-memory ring, wgmma (QGMMA) from
// shared memory, fp32 promotion of every 128-K tile, scales and bias in the epilogue.
//
// Roles. Warpgroup 0 is the producer: one thread waits for a free stage and issues two TMA
// loads (a 128 x 128 tile of a and of b) that complete on the stage's "full" mbarrier;
// setmaxnreg gives its registers to the consumers. Warpgroups 1 and 2 each own 64 rows of
// the 128 x 128 output tile: they wait for "full", run four m64n128k32 wgmmas over the
// stage, release it on its "empty" mbarrier and fold the tile into their fp32 accumulators.
//
// Accuracy. FP8 wgmma accumulates with about 14 bits of mantissa. Each 128-K tile starts
// from a zero tensor-core accumulator (scale-d = 0) and is added to fp32 registers afterwards
// (multiplied by its block scales when scales are per 128-block): promotion every 128 K, as
// the SPEC asks. fast_accum keeps accumulating inside the tensor core across tiles.
//
// Layout. a [M, K] and b [N, K] are both K-major ("TN", the only layout FP8 wgmma takes):
// TMA writes each 128-byte row of a tile with the 128-byte swizzle, which is exactly the
// layout the wgmma shared-memory descriptor describes (8-row atoms 1024 bytes apart).
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <mutex>

#include "fp8_gemm_sm90.h"

namespace lowbit {
namespace sm90 {

constexpr int kBM = 128, kBN = 128, kBK = 128;
constexpr int kStages = 5;
constexpr int kTileBytes = kBM * kBK;  // one operand tile, bytes (fp8)
constexpr int kThreads = 384;          // producer warpgroup + 2 consumer warpgroups
constexpr int kSmemBytes = kStages * 2 * kTileBytes + 1024 /*alignment*/ + 256 /*barriers*/;
static_assert(kBK == 128, "one 128-byte swizzle row per tile row");
static_assert(kBM == 2 * 64, "two consumer warpgroups of m64 each");

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LOWBIT_SM90A 1
#endif

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#ifdef LOWBIT_SM90A
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)),
               "r"(bytes));
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)));
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, int parity) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT_%=;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity));
}
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int k, int row) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4}], [%2];" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(k), "r"(row)
      : "memory");
}

// Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row atoms 1024 bytes apart.
__device__ __forceinline__ uint64_t smem_desc(const void* p) {
  const uint64_t addr = smem_u32(p);
  uint64_t d = 0;
  d |= (addr & 0x3FFFF) >> 4;        // start address
  d |= uint64_t(1) << 16;            // leading byte offset (unused with 128B swizzle)
  d |= uint64_t(1024 >> 4) << 32;    // stride byte offset: next 8-row atom
  d |= uint64_t(1) << 62;            // 128-byte swizzle
  return d;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }

// d (64 x 128 fp32 fragment, 64 registers) (+)= A[64 x 32] * B[128 x 32]^T.
__device__ __forceinline__ void wgmma_m64n128k32(float (&d)[64], uint64_t da, uint64_t db,
                                                 int accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(accumulate));
}
#endif  // LOWBIT_SM90A

__device__ __forceinline__ void store_out(void* p, OutDtype d, int64_t i, float v) {
  switch (d) {
    case OutDtype::kF32: static_cast<float*>(p)[i] = v; break;
    case OutDtype::kBF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
  }
}

__device__ __forceinline__ float load_bias(const void* p, OutDtype d, int64_t i) {
  switch (d) {
    case OutDtype::kF32: return static_cast<const float*>(p)[i];
    case OutDtype::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return __half2float(static_cast<const __half*>(p)[i]);
  }
}

__global__ void __launch_bounds__(kThreads, 1)
sm90_fp8_gemm_wgmma_kernel(const __grid_constant__ CUtensorMap map_a,
                           const __grid_constant__ CUtensorMap map_b, const Fp8GemmArgs p) {
#ifdef LOWBIT_SM90A
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  // Swizzled tiles need 1024-byte alignment.
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* tiles_a = smem;
  uint8_t* tiles_b = smem + kStages * kTileBytes;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + 2 * kStages * kTileBytes);
  uint64_t* empty = full + kStages;

  const int wg = threadIdx.x / 128;
  const int n0 = blockIdx.x * kBN, m0 = blockIdx.y * kBM;
  const int nk = (p.K + kBK - 1) / kBK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 2);  // one arrival per consumer warpgroup
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    if (threadIdx.x == 0) {
      for (int i = 0; i < nk; ++i) {
        const int s = i % kStages;
        // A fresh barrier completes phase "1" at once, so the first pass does not wait.
        mbar_wait(&empty[s], ((i / kStages) & 1) ^ 1);
        mbar_expect_tx(&full[s], 2 * kTileBytes);
        tma_load_2d(tiles_a + s * kTileBytes, &map_a, &full[s], i * kBK, m0);
        tma_load_2d(tiles_b + s * kTileBytes, &map_b, &full[s], i * kBK, n0);
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
  const int cw = wg - 1;                  // consumer warpgroup: rows cw*64 .. cw*64+63
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int row0 = m0 + cw * 64 + warp * 16 + lane / 4;  // and row0 + 8
  const bool block_scaled = p.a_mode == ScaleMode::kBlock || p.b_mode == ScaleMode::kBlock;
  const bool promote = !p.fast_accum || block_scaled;

  float acc[64], part[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;

  for (int i = 0; i < nk; ++i) {
    const int s = i % kStages;
    mbar_wait(&full[s], (i / kStages) & 1);
    const uint8_t* ta = tiles_a + s * kTileBytes + cw * 64 * kBK;
    const uint8_t* tb = tiles_b + s * kTileBytes;
    wgmma_fence();
    if (promote) {
#pragma unroll
      for (int kk = 0; kk < kBK / 32; ++kk)
        wgmma_m64n128k32(part, smem_desc(ta + kk * 32), smem_desc(tb + kk * 32), kk > 0);
    } else {
#pragma unroll
      for (int kk = 0; kk < kBK / 32; ++kk)
        wgmma_m64n128k32(acc, smem_desc(ta + kk * 32), smem_desc(tb + kk * 32), i > 0 || kk > 0);
    }
    wgmma_commit();
    wgmma_wait0();
    // The stage's shared memory has been read: hand it back to the producer.
    if (threadIdx.x % 128 == 0) mbar_arrive(&empty[s]);
    if (promote) {
      float f0 = 1.f, f1 = 1.f;
      if (block_scaled) {
        float sb = 1.f;
        if (p.b_mode == ScaleMode::kBlock) sb = p.b_scale[(n0 / 128) * p.b_scale_ld + i];
        if (p.a_mode == ScaleMode::kBlock) {
          f0 = row0 < p.M ? p.a_scale[row0 * p.a_scale_ld + i] : 0.f;
          f1 = row0 + 8 < p.M ? p.a_scale[(row0 + 8) * p.a_scale_ld + i] : 0.f;
        }
        f0 *= sb;
        f1 *= sb;
      }
#pragma unroll
      for (int j = 0; j < 64; j += 4) {
        acc[j + 0] = fmaf(part[j + 0], f0, acc[j + 0]);
        acc[j + 1] = fmaf(part[j + 1], f0, acc[j + 1]);
        acc[j + 2] = fmaf(part[j + 2], f1, acc[j + 2]);
        acc[j + 3] = fmaf(part[j + 3], f1, acc[j + 3]);
      }
    }
  }

  // Epilogue. Fragment: register 4j + {0, 1} holds (row0, n0 + 8j + 2(lane % 4) + {0, 1}),
  // 4j + {2, 3} the same columns of row0 + 8.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int m = row0 + 8 * h;
    if (m >= p.M) continue;
    const float sa = p.a_mode == ScaleMode::kBlock ? 1.f
                     : p.a_scale[p.a_mode == ScaleMode::kRow ? m : 0];
#pragma unroll
    for (int j = 0; j < 16; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int n = n0 + 8 * j + 2 * (lane % 4) + e;
        if (n >= p.N) continue;
        float v = acc[4 * j + 2 * h + e];
        if (p.a_mode != ScaleMode::kBlock) v = v * sa;
        if (p.b_mode != ScaleMode::kBlock)
          v = v * p.b_scale[p.b_mode == ScaleMode::kRow ? n : 0];
        if (p.bias) v = v + load_bias(p.bias, p.bias_dtype, n);
        store_out(p.out, p.out_dtype, static_cast<int64_t>(m) * p.ldo + n, v);
      }
    }
  }
#else
  __trap();  // built without sm_90a: the host never launches this
#endif
}

// cuTensorMapEncodeTiled through the runtime's driver entry point, so that lowbit links no
// libcuda (the driver is found at run time, as the static runtime does).
PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    cudaDriverEntryPointQueryResult q;
    void* f = nullptr;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  });
  return fn;
}

bool make_map(CUtensorMap* map, const uint8_t* base, int rows, int k, int64_t ld) {
  auto fn = encode_fn();
  if (!fn) return false;
  cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld)};
  cuuint32_t box[2] = {kBK, 128};
  cuuint32_t elem[2] = {1, 1};
  return fn(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<uint8_t*>(base), dims, strides,
            box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace sm90

cudaError_t sm90_fp8_gemm_wgmma(const Fp8GemmArgs& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  CUtensorMap map_a, map_b;
  if (!sm90::make_map(&map_a, p.a, p.M, p.K, p.lda) ||
      !sm90::make_map(&map_b, p.b, p.N, p.K, p.ldb))
    return cudaErrorInvalidValue;
  static bool attr_set = false;
  if (!attr_set) {
    cudaError_t e = cudaFuncSetAttribute(sm90::sm90_fp8_gemm_wgmma_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         sm90::kSmemBytes);
    if (e != cudaSuccess) return e;
    attr_set = true;
  }
  const dim3 grid((p.N + sm90::kBN - 1) / sm90::kBN, (p.M + sm90::kBM - 1) / sm90::kBM);
  sm90::sm90_fp8_gemm_wgmma_kernel<<<grid, sm90::kThreads, sm90::kSmemBytes, stream>>>(
      map_a, map_b, p);
  return cudaGetLastError();
}

}  // namespace lowbit
