"""Which kernel ``backend="auto"`` tries first, per op, device and shape.

``TABLE[op][capability]`` is a tuple of rows ``(max_m, kernel names)``: the first row whose
``max_m`` (None: any) is at least the first dimension of the op's first argument (M of a
GEMM) gives the order. Built from measured data (never autotuning on the hot path); the
measurements and the reasoning behind each row are in bench/NOTES.md ("auto's kernel
order"). Kernels a row does not name keep their registration priority, after the named
ones; a kernel that does not support the inputs is skipped as usual.

fp8_scaled_mm on sm_90: the sm_90 kernels lead at every M but one band, each followed by the
next best kernel for the shapes it declines. At M = 16-64 with K = 4096 Triton's GPU time
is a few percent to 1.3x ahead, but its eager call costs several times the CUDA backend's
host time, which outweighs that gap; the table is one order for eager and captured use.

int8_mm / int8_gemm on sm_90: the same shape of table. Swap-AB leads at M <= 64 (1.3-1.6x
bf16 at M = 1-16 on 4096 x 4096; Triton's GPU time is level at M = 64, its host time is
not), the wgmma kernel above (1.3-1.4x ``torch._int_mm`` at 4096 x 28672 x 8192 and 8192^3),
then Triton (any shape and stride), then the IMMA tiled kernel (the A100 path, half the
wgmma kernel's rate on Hopper).

w8a16_gemm on sm_90: the CUDA decode kernel at M <= 16 (ahead of Triton on three of the four
benchmark weights; Triton leads on 28672 x 8192), Triton above (ahead of the CUDA tiled
kernel at every M >= 64 measured, by 1.04-4.2x). w4a16_gemm needs no row: the weight's layout
picks the backend (prepacked: the CUDA kernels; canonical: Triton).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from .backends._device import arch_override, capability as _capability, device_index

Rows = Tuple[Tuple[Optional[int], Tuple[str, ...]], ...]

TABLE: Dict[str, Dict[Tuple[int, int], Rows]] = {
    "fp8_scaled_mm": {
        (9, 0): (
            (64, ("sm90_fp8_gemm_swapab", "sm89_fp8_gemm_smallm", "triton_fp8_scaled_mm")),
            (None, ("sm90_fp8_gemm_wgmma", "triton_fp8_scaled_mm")),
        ),
    },
    "int8_mm": {
        (9, 0): (
            (64, ("sm90_int8_gemm_swapab", "sm80_int8_gemm_smallm", "triton_int8_mm")),
            (None, ("sm90_int8_gemm_wgmma", "triton_int8_mm", "sm80_int8_gemm_mma")),
        ),
    },
    "int8_gemm": {
        (9, 0): (
            (64, ("sm90_int8_gemm_swapab", "sm80_int8_gemm_smallm", "triton_int8_gemm")),
            (None, ("sm90_int8_gemm_wgmma", "triton_int8_gemm", "sm80_int8_gemm_mma")),
        ),
    },
    "w8a16_gemm": {
        (9, 0): (
            (16, ("cuda_w8a16_gemm_decode", "triton_w8a16_gemm", "cuda_w8a16_gemm_tiled")),
            (None, ("triton_w8a16_gemm", "cuda_w8a16_gemm_tiled")),
        ),
    },
}


def preferred(op: str, device: torch.device, args) -> Optional[Sequence[str]]:
    """Kernel names in the order ``auto`` should try them, or None for registration order."""
    by_cap = TABLE.get(op)
    if by_cap is None or device.type != "cuda":
        return None
    cap = _capability(device_index(device))
    over = arch_override()
    if over is not None:  # LOWBIT_ARCH=89 on an H100 orders kernels as an sm_89 card would
        cap = min(cap, (over // 10, over % 10))
    rows = by_cap.get(cap)
    if rows is None:
        return None
    m = args[0].shape[0]
    for max_m, order in rows:
        if max_m is None or m <= max_m:
            return order
    return None
