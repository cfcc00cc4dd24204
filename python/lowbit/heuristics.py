"""Which kernel ``backend="auto"`` tries first, per op, device and shape.

A small table built from measured data (never autotuning on the hot path). Kernels a row does
not name keep their registration priority, after the named ones; a kernel that does not
support the inputs is skipped as usual.

fp8_scaled_mm on sm_90 (H100 80GB HBM3, torch 2.11, triton 3.6, 2026-11-27, rowwise scales,
bf16 out, eager calls, bench/gpu_check.sh; speed relative to torch._scaled_mm in one run):

    M = 1      sm89_fp8_gemm_smallm 0.92-1.35x   triton 0.22-1.09x (host-bound at 4096^2)
    M = 16     sm89_fp8_gemm_smallm 0.71-0.85x   triton 0.20-1.08x
    M = 64     sm89_fp8_gemm_smallm 0.22-0.29x   triton 0.61-1.04x
    M >= 128   sm90_fp8_gemm_wgmma  0.38-0.70x   triton 0.64-0.96x

sm90_fp8_gemm_swapab (M <= 64) is not measured yet: it is listed last, so that auto reaches
it only where the kernels before it decline.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .backends._device import capability as _capability, device_index

_FP8_SCALED_MM = {
    (9, 0): (
        (16, ("sm89_fp8_gemm_smallm", "triton_fp8_scaled_mm", "sm90_fp8_gemm_swapab")),
        (None, ("triton_fp8_scaled_mm", "sm90_fp8_gemm_wgmma", "sm90_fp8_gemm_swapab")),
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
