"""Which kernel ``backend="auto"`` tries first, per op, device and shape.

A small table built from measured data (never autotuning on the hot path). Kernels a row does
not name keep their registration priority, after the named ones; a kernel that does not
support the inputs is skipped as usual.

fp8_scaled_mm on sm_90 (H100 80GB HBM3, torch 2.11, triton 3.6, 2026-11-27, rowwise scales,
bf16 out, GPU time of each kernel called directly, bench/bench_fp8_gemm.py; speed relative to
torch._scaled_mm in the same run, over the PERF.md shapes and 8192^3):

    M = 1      sm90_fp8_gemm_swapab 1.11-1.50x  sm89_fp8_gemm_smallm 1.02-1.51x  triton 0.50-1.11x
    M = 16     sm90_fp8_gemm_swapab 1.01-1.40x  sm89_fp8_gemm_smallm 0.72-0.93x  triton 0.41-1.06x
    M = 64     sm90_fp8_gemm_swapab 0.77-1.09x  sm89_fp8_gemm_smallm 0.19-0.27x  triton 0.51-0.95x
    M >= 128   sm90_fp8_gemm_wgmma  0.79-1.06x  triton 0.48-0.92x

so the sm_90 kernels lead at every M, each followed by the next best that takes the shape.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .backends._device import capability as _capability, device_index

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
    rows = _FP8_SCALED_MM.get(_capability(device_index(device)))
    if rows is None:
        return None
    m = args[0].shape[0]
    for max_m, order in rows:
        if max_m is None or m <= max_m:
            return order
    return None
