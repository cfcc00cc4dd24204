"""Run by tests/test_wgmma_schedule.py in a process of its own, with or without
LOWBIT_WGMMA_SCHEDULE=pingpong (read once per process): fp8_scaled_mm on the sm_90a wgmma
kernel (M > 64) for the cases below, saved to the path given. Not a test module: pytest does
not collect it."""
import sys

import torch

import lowbit
from lowbit_testing import fp8_gemm_operands

# 64-row tiles (ping-pong) on a 132-SM card: two tiles (a CTA of one tile: the second
# warpgroup has none); ragged M, N and K; N = 1001, whose rows TMA cannot store (the direct
# epilogue); several tiles a CTA with 32 K-steps each; several tiles a CTA of two K-steps
# each (the ring holds parts of several tiles); the same with the direct epilogue (N = 4097);
# a long K over few column tiles.
SHAPES = [(65, 128, 128), (300, 1000, 400), (200, 1001, 512), (2048, 4096, 4096),
          (1024, 8192, 256), (1000, 4097, 256), (1024, 256, 8192)]


def _wgmma_kernels(run):
    """The names of the sm_90a wgmma kernels ``run()`` launches (torch.profiler's)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    return sorted({e.name for e in prof.events() if "sm90_gemm_wgmma_kernel" in e.name})


def cases():
    out = {}
    for m, n, k in SHAPES:
        for mode in ("tensor", "row"):
            a, b, sa, sb = fp8_gemm_operands(m, n, k, mode, "cuda", seed=m + n + k)
            bias = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(torch.bfloat16)
            bias = bias.to("cuda")
            kernel = lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb, backend="cuda").kernel
            assert kernel == "sm90_fp8_gemm_wgmma", (m, n, k, kernel)
            for out_dtype in (torch.bfloat16, torch.float16, torch.float32):
                for with_bias in (False, True):
                    key = f"{m}x{n}x{k}/{mode}/{out_dtype}/{with_bias}"
                    out[key] = lowbit.fp8_scaled_mm(a, b, sa, sb, bias if with_bias else None,
                                                    out_dtype=out_dtype, backend="cuda")
            out[f"{m}x{n}x{k}/{mode}/fast"] = lowbit.fp8_scaled_mm(a, b, sa, sb,
                                                                   fast_accum=True,
                                                                   backend="cuda")
    # Which instantiation a bf16 GEMM launches (the schedule is its last template argument).
    a, b, sa, sb = fp8_gemm_operands(2048, 4096, 4096, "row", "cuda")
    out["kernels"] = _wgmma_kernels(lambda: lowbit.fp8_scaled_mm(a, b, sa, sb, backend="cuda"))
    return out


if __name__ == "__main__":
    torch.save({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in cases().items()},
               sys.argv[1])
