"""Which kernel ``backend="auto"`` tries first, per op, device and shape.

A small table built from measured data (never autotuning on the hot path). Kernels a row does
not name keep their registration priority, after the named ones; a kernel that does not
support the inputs is skipped as usual.

fp8_scaled_mm on sm_90 (H100 80GB HBM3, torch 2.11, triton 3.6, 2026-11-27, rowwise scales,
bf16 out, GPU time of each kernel called directly, bench/bench_fp8_gemm.py at commit 4607efd;
speed relative to torch._scaled_mm in the same run, over the PERF.md shapes and 8192^3):

    M = 1         sm90_fp8_gemm_swapab 1.10-1.47x  sm89_fp8_gemm_smallm 0.99-1.47x  triton 1.09-1.12x
    M = 16        sm90_fp8_gemm_swapab 1.01-1.33x  sm89_fp8_gemm_smallm 0.71-0.88x  triton 0.78-1.07x
    M = 32        sm90_fp8_gemm_swapab 0.95-1.23x  sm89_fp8_gemm_smallm 0.47-0.62x  triton 0.83-1.04x
    M = 64        sm90_fp8_gemm_swapab 0.80-1.10x  sm89_fp8_gemm_smallm 0.21-0.28x  triton 0.05-1.04x
                  (Triton's 0.05 is its launcher's host time outlasting the L2 flush; its
                  CUDA-graph replay measured 0.94x on an H200, bench/NOTES.md)
    M = 128-512   sm90_fp8_gemm_wgmma  0.90-1.14x  triton 0.56-0.96x
    M >= 2048     sm90_fp8_gemm_wgmma  0.85-0.96x  triton 0.56-0.71x

Re-timed at commit 67c5883 (H100, 2026-11-27, bench/RESULTS.md): swapab 0.80-1.52x over
M = 1-64, wgmma 0.98-1.10x at M = 128-512 and 0.93-1.01x at M >= 2048, Triton 0.65-1.13x.

So the sm_90 kernels lead at every M but one band, each followed by the next best kernel for
the shapes it declines. In that band Triton's GPU time is ahead: M = 64 where K = 4096
(64x4096x4096: 18.4 against 23.4 us; 64x14336x4096: 34.8 against 41.5) and, with block
scales, M = 64 with K = 4096 (19.6 against 23.0 us at 4096x4096 once swapab took its scales
by TMA; bench/NOTES.md); at M = 16-32 with K = 4096 Triton is 1-5% ahead; M = 33-63 was not
measured. swapab stays first because an eager call costs 67-81 us on the Triton backend
(run_bench.py host table, 1x4096x4096, two runs the same day) against 16-21 us on the CUDA
one (bench/NOTES.md, "Eager host time"), which outweighs the kernel gap. Under CUDA graphs
that argument does not hold; the table is one order for every scale mode and for eager and
captured use alike. Back to back in one graph (bench/bench_weight_stream.py,
2026-11-27; swapab at commit 4579ea1, Triton at f89b8ec) Triton's GPU time leads at M = 64
with K = 4096 (64x4096x4096: 13.6 against 16.7 us; 64x14336x4096: 25.7 against 32.9) and at
M = 16-32 on 14336x4096 (4-8%); swapab leads on the other decode rows, by up to 1.5x where
K = 14336.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .backends._device import arch_override, capability as _capability, device_index

_FP8_SCALED_MM = {
    (9, 0): (
        (64, ("sm90_fp8_gemm_swapab", "sm89_fp8_gemm_smallm", "triton_fp8_scaled_mm")),
        (None, ("sm90_fp8_gemm_wgmma", "triton_fp8_scaled_mm")),
    ),
}


def preferred(op: str, device: torch.device, args) -> Optional[Sequence[str]]:
    """Kernel names in the order ``auto`` should try them, or None for registration order."""
    if op != "fp8_scaled_mm" or device.type != "cuda":
        return None
    cap = _capability(device_index(device))
    over = arch_override()
    if over is not None:  # LOWBIT_ARCH=89 on an H100 orders kernels as an sm_89 card would
        cap = min(cap, (over // 10, over % 10))
    rows = _FP8_SCALED_MM.get(cap)
    if rows is None:
        return None
    m = args[0].shape[0]
    for max_m, order in rows:
        if max_m is None or m <= max_m:
            return order
    return None
