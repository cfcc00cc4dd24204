"""Which kernel ``backend="auto"`` tries first, per op, device and shape (``backend="cuda"``
takes the CUDA kernels in the same order).

``TABLE[op][capability]`` is a tuple of rows ``(max_m, kernel names)`` or ``(max_m, kernel
names, max_n)``: the first row whose ``max_m`` (None: any) is at least the first dimension
of the op's first argument (M of a GEMM), and whose ``max_n`` (when given) at least the first
dimension of its second (N of a weight [N, K]), gives the order. Built from measured data (never autotuning on the hot path); the
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

w8a16_gemm on sm_90: the CUDA decode kernel at M <= 16 (ahead of Triton on every benchmark
weight at M = 1, by 1.3-4.8x; Triton leads by 7% at 16 x 28672 x 8192) and at M = 17-32 on
weights of N <= 4096 (19.0 against the wgmma kernel's 19.9 us at 32 x 4096 x 4096, 37.5
against 38.8 at 32 x 4096 x 14336); the sm_90a wgmma kernel at M = 17-256 everywhere else
(H100, 2026-12-06: 35.3 against decode's 38.9 and Triton's 44.8 us at 32 x 14336 x 4096; at
M = 48-64 1.0-1.45x ahead of the next kernel on every benchmark weight, 37.8 against
Triton's 49.0 at 64 x 14336 x 4096, 115.3 against 156.6 at 64 x 28672 x 8192; 23.9 against
Triton's dequantize-then-GEMM's 36.6 at 128 x 4096 x 4096 (Triton's fused kernel, which
its backend runs there now: 30.5), 32.5 against 40.3 at 256 x 4096 x 4096, 82.7 against
Triton's 91.3 at 256 x 14336 x 4096); behind it, for the shapes it declines, what led
before it at M = 129-256: dequantize-then-cuBLAS on N <= 4096, Triton's fused kernel
above.
Above M = 256 the wgmma kernel per channel, in 256-token tiles (H100, 2026-12-06,
`bench/wxa16_ab.sh`: 182.9 us at 1024 x 14336 x 4096, where `lowbit bench` timed
dequantize-then-cuBLAS at 232.4 the same morning, both L2-flushed; 0.83-0.97x cuBLAS bf16
in the same process at 2048 and 4096 x 14336 x 4096, 4096^3, 1024 x 28672 x 8192 and
8192^3); int8 groups, which it declines there (W8A16_WGMMA_GROUPS_MAX_M), take the weight
dequantized then cuBLAS (``cuda_w8a16_gemm_dequant``: 217.9 against Triton's 317.4 us at
1024 x 14336 x 4096, 2952 against 4758 at 4096 x 28672 x 8192; 2026-12-05; level with
Triton at 512 x 14336 x 4096, 160.0 against 157.1 us). The CUDA tiled kernel trails both.

w4a16_gemm: the weight's layout picks the backend (prepacked: the CUDA kernels; canonical:
Triton, its fused kernel and its dequantize-then-GEMM kernel by their supports and
priorities). On sm_90 the CUDA decode kernel leads to M = 32 (14.4 against the wgmma
kernel's 15.9 us at 16 x 4096 x 4096, 30.8 against 32.8 at 32 x 14336 x 4096; level at
32 x 4096 x 4096), the sm_90a wgmma kernel from M = 33 (H100, 2026-12-06: 35.5 against
decode's 53.8 and the wide kernel's 47.7 us at 64 x 14336 x 4096, 118.6 against 168.5 at
64 x 28672 x 8192, 19.0 against 20.5 at 64 x 4096 x 4096; 42.5 and 82.0 against
dequantize-then-cuBLAS's 117.0 and 123.0 at 128 and 256 x 14336 x 4096), decode or the
dequantize path behind it for the group size it declines (32). Above M = 256 too, in
256-token tiles (H100, 2026-12-06, 10:45: 183.0 against dequantize-then-cuBLAS's 230.0 us
at 1024 x 14336 x 4096, 344.4 against 392.5 at 2048 x 14336 x 4096, 673.0 against 888.9
at 1024 x 28672 x 8192; level at 8192^3, 1570-1620 against 1613), the dequantize path
behind it. N is read from the scales (the prepacked qweight is 4-D).
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
    "w4a16_gemm": {
        (9, 0): (
            (32, ("cuda_w4a16_gemm_decode",)),
            (256, ("sm90_w4a16_gemm_wgmma", "cuda_w4a16_gemm_decode",
                   "cuda_w4a16_gemm_dequant")),
            (None, ("sm90_w4a16_gemm_wgmma", "cuda_w4a16_gemm_dequant")),
        ),
    },
    "w8a16_gemm": {
        (9, 0): (
            (16, ("cuda_w8a16_gemm_decode", "triton_w8a16_gemm", "cuda_w8a16_gemm_tiled")),
            (32, ("cuda_w8a16_gemm_decode", "sm90_w8a16_gemm_wgmma", "triton_w8a16_gemm"),
             4096),
            (64, ("sm90_w8a16_gemm_wgmma", "cuda_w8a16_gemm_decode", "triton_w8a16_gemm")),
            (256, ("sm90_w8a16_gemm_wgmma", "cuda_w8a16_gemm_dequant", "triton_w8a16_gemm"),
             4096),
            (256, ("sm90_w8a16_gemm_wgmma", "triton_w8a16_gemm", "cuda_w8a16_gemm_dequant")),
            (None, ("sm90_w8a16_gemm_wgmma", "cuda_w8a16_gemm_dequant", "triton_w8a16_gemm",
                    "cuda_w8a16_gemm_tiled")),
        ),
    },
}


def device_capability(device: torch.device) -> Optional[Tuple[int, int]]:
    """The capability the tables are read at (LOWBIT_ARCH lowers it); None off CUDA."""
    if device.type != "cuda":
        return None
    cap = _capability(device_index(device))
    over = arch_override()
    if over is not None:  # LOWBIT_ARCH=89 on an H100 orders kernels as an sm_89 card would
        cap = min(cap, (over // 10, over % 10))
    return cap


def preferred(op: str, device: torch.device, args) -> Optional[Sequence[str]]:
    """Kernel names in the order ``auto`` should try them, or None for registration order."""
    by_cap = TABLE.get(op)
    if by_cap is None or device.type != "cuda":
        return None
    rows = by_cap.get(device_capability(device))
    if rows is None:
        return None
    m = args[0].shape[0]
    n = _n_of(op, args)
    for row in rows:
        max_m, order = row[0], row[1]
        if max_m is not None and m > max_m:
            continue
        if len(row) > 2 and not (n is not None and n <= row[2]):
            continue
        return order
    return None


def _n_of(op: str, args) -> Optional[int]:
    """N of a GEMM's weight: its first dimension, or for w4a16_gemm the scales' (a prepacked
    qweight is 4-D)."""
    i = 2 if op == "w4a16_gemm" else 1
    return args[i].shape[0] if len(args) > i and hasattr(args[i], "shape") else None


# A quantized layer's measured speed against the bf16 nn.Linear it replaces, per quantize_
# scheme and capability: {(N, K): ((M, speed-up), ...)}, GPU time against F.linear bf16 in
# lowbit bench (bench/RESULTS.md): the layer ops for fp8 and int8 (quantizer + GEMM), the
# GEMM for the weight-only schemes (their layers' only kernel), as auto runs them. fp8 and
# int8: H200, 2026-12-03. int4 and w8a16: H100, 2026-12-06 (the decode and sm_90a wgmma
# kernels; the 03:47-04:06 and 05:45 UTC runs) where that day measured the point; the
# points it did not keep the H200's of 2026-12-03/04 (before the wgmma kernels and the
# decode rework, on a card whose bf16 GEMM streams faster: they understate the layer
# rather than overstate it).
# ``quantize_``'s ``keep_slower`` reads it; shapes and token counts between the measured
# ones take the nearest measured point, which the summary names.
LayerRows = Dict[Tuple[int, int], Tuple[Tuple[int, float], ...]]
LAYER_SPEEDUP: Dict[str, Dict[Tuple[int, int], LayerRows]] = {
    "fp8": {
        (9, 0): {
            (4096, 4096): ((1, 0.66), (16, 0.92), (64, 0.78), (128, 0.57), (512, 1.25),
                           (4096, 1.29)),
            (28672, 8192): ((1, 1.69), (16, 1.60), (128, 1.68), (4096, 1.63)),
        },
    },
    "int8": {
        (9, 0): {
            (4096, 4096): ((1, 0.82), (16, 0.71), (64, 0.72), (128, 0.87), (512, 0.92),
                           (4096, 1.41)),
            (28672, 8192): ((1, 1.71), (16, 1.66), (128, 1.68), (4096, 1.78)),
        },
    },
    "int4": {
        (9, 0): {
            (4096, 4096): ((1, 1.71), (16, 1.35), (32, 1.31), (64, 1.09), (128, 0.84),
                           (256, 0.84), (1024, 0.70)),
            (14336, 4096): ((1, 2.43), (16, 2.17), (32, 1.35), (64, 1.55), (96, 1.33),
                            (128, 1.27), (256, 0.72), (1024, 0.70)),
            (4096, 14336): ((1, 2.40), (16, 1.87), (32, 1.39), (64, 0.92), (1024, 0.74)),
            (28672, 8192): ((1, 3.03), (16, 2.03), (32, 1.23), (64, 1.52), (128, 0.97),
                            (1024, 0.73)),
        },
    },
    "w8a16": {
        (9, 0): {
            (4096, 4096): ((1, 1.48), (16, 1.24), (32, 1.13), (64, 1.05), (128, 0.92),
                           (256, 0.83)),
            (14336, 4096): ((1, 1.70), (16, 1.57), (32, 1.05), (64, 1.41), (96, 1.21),
                            (128, 1.15), (256, 0.69), (1024, 0.68)),
            (4096, 14336): ((1, 1.77), (16, 1.53), (32, 1.03), (64, 0.64)),
            (28672, 8192): ((1, 1.74), (16, 1.57), (32, 1.15), (64, 1.55), (128, 0.94)),
        },
    },
}


def layer_speedup(scheme: str, device: torch.device, n: int, k: int,
                  m: int) -> Optional[Tuple[float, Tuple[int, int, int]]]:
    """(measured speed-up, the measured (M, N, K) it comes from) of a ``scheme`` layer of
    out_features ``n`` and in_features ``k`` at ``m`` tokens on ``device``; None where
    nothing was measured for the scheme on this device's capability. The nearest measured
    weight shape (|log N ratio| + |log K ratio|), then the nearest measured M (log scale)."""
    import math

    rows = LAYER_SPEEDUP.get(scheme, {}).get(device_capability(device))
    if not rows:
        return None
    ln, lk = math.log(max(n, 1)), math.log(max(k, 1))
    nk = min(rows, key=lambda s: (abs(math.log(s[0]) - ln) + abs(math.log(s[1]) - lk), s))
    lm = math.log(max(m, 1))
    mm, ratio = min(rows[nk], key=lambda r: (abs(math.log(r[0]) - lm), r[0]))
    return ratio, (mm, nk[0], nk[1])
