"""The CUDA backend: the hand-written kernels of ``lowbit._C`` (``csrc/``).

Two tables define it. C++ lists every kernel compiled into this build (``_C.kernels()``:
name, op kind, oldest arch, kernel id; one table per family, ``csrc/<family>/*_kernels.cpp``,
built inside the arch guards). ``KERNELS`` below gives each op's kernels their M range and
priority: every kernel in it is registered, so ``lowbit info`` lists it even when ``_C`` has
no CUDA (``available()`` says why) or the arch list left it out (``supports()`` says so).
A kernel is named in these two places only.

This module holds what the op modules share: ``_C``'s availability, the device checks, the
enum codes (from ``_C.enums()``), and registration. ``quantize`` (quantize_fp8,
dequantize_fp8), ``int8_quantize`` (quantize_int8, dequantize_int8), ``gemm``
(fp8_scaled_mm), ``int8_gemm`` (int8_mm, int8_gemm), ``wxa16_gemm`` (w4a16_gemm,
w8a16_gemm) and ``int4_quantize`` register their ops on import.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from ..._backend import register_kernel
from ..._build import _C, has_cuda_kernels
from .._device import capability, device_index

__all__ = ["KERNELS", "SMALL_M_MAX", "available", "has_cuda_kernels", "kernel_id",
           "min_arch", "unlisted", "DTYPE_CODE", "FP8_FORMAT_CODE", "FUSED_LINEAR"]

SMALL_M_MAX = 64  # the small-M GEMMs' largest M (kSmallMMaxM in csrc/common/gemm_args.h)
_BIG = (1 << 31) - 128  # the GEMMs count rows and tiles in int32: M and N stay below this
WXA16_TILED_MAX_M = 65535 * 64  # the tiled weight-only kernels' 64-token tiles are grid.z

# op -> {kernel: (M range or None, priority, variant)}. Higher priority is tried first;
# `variant` is what the op module needs to tell the kernels of one op apart (the scale a
# quantizer computes).
KERNELS: Dict[str, Dict[str, Tuple[Optional[Tuple[int, int]], int, Optional[str]]]] = {
    "quantize_fp8": {
        "cuda_fp8_quant_static": (None, 10, "static"),
        "cuda_fp8_quant_per_tensor": (None, 10, "tensor"),
        "cuda_fp8_quant_per_token": (None, 10, "row"),
        "cuda_fp8_quant_per_group": (None, 10, "group"),
        "cuda_fp8_quant_per_block128": (None, 10, "block128"),
    },
    "dequantize_fp8": {
        "cuda_fp8_dequant": (None, 10, None),
    },
    "quantize_int8": {
        "cuda_int8_quant_static": (None, 10, "static"),
        "cuda_int8_quant_per_tensor": (None, 10, "tensor"),
        "cuda_int8_quant_per_token": (None, 10, "row"),
        "cuda_int8_quant_per_group": (None, 10, "group"),
        "cuda_int8_quant_per_block128": (None, 10, "block128"),
    },
    "dequantize_int8": {
        "cuda_int8_dequant": (None, 10, None),
    },
    # At M <= 64 the small-M kernels come before the tiled ones, which take the rest.
    "fp8_scaled_mm": {
        "sm90_fp8_gemm_wgmma": ((SMALL_M_MAX + 1, _BIG), 30, None),
        "sm90_fp8_gemm_swapab": ((1, SMALL_M_MAX), 25, None),
        "sm89_fp8_gemm_smallm": ((0, SMALL_M_MAX), 20, None),
        "sm89_fp8_gemm_mma": ((0, _BIG), 15, None),
        "sm80_fp8_gemm_smallm": ((0, SMALL_M_MAX), 10, None),
        "sm80_fp8_gemm_mma": ((0, _BIG), 5, None),
    },
    # The same kernels serve both INT8 GEMM ops (int8_mm stores the int32 accumulator).
    "int8_mm": {
        "sm90_int8_gemm_wgmma": ((SMALL_M_MAX + 1, _BIG), 30, None),
        "sm90_int8_gemm_swapab": ((1, SMALL_M_MAX), 25, None),
        "sm80_int8_gemm_smallm": ((0, SMALL_M_MAX), 10, None),
        "sm80_int8_gemm_mma": ((0, _BIG), 5, None),
    },
}
KERNELS["int8_gemm"] = dict(KERNELS["int8_mm"])
# The mixed-input GEMMs (csrc/wxa16): decode (split-K) up to M = 64, tiled for the rest;
# above M = 64 both widths can first dequantize the weight and multiply in bf16/fp16
# (cuBLAS): at M = 64 the tiled mma.sync kernel ran 0.24-0.33x bf16 F.linear on the H200.
WXA16_DECODE_MAX_M = 64  # kWXA16DecodeMaxM in csrc/wxa16/wxa16_gemm.h
WXA16_WIDE_MAX_M = 128  # kWXA16WideMaxM
# The sm_90a wgmma kernels and the wide mma.sync kernels (one dequantized fragment per 64
# tokens) come last by priority: lowbit/heuristics.py puts the wgmma kernels first on sm_90
# where they lead (w4a16 from M = 33, w8a16 from M = 17 but M <= 32 on N <= 4096; H100,
# 2026-12-06); the wide kernel leads nowhere measured since, and stays for explicit use and
# comparison.
KERNELS["w4a16_gemm"] = {
    "cuda_w4a16_gemm_decode": ((0, WXA16_DECODE_MAX_M), 20, None),
    "cuda_w4a16_gemm_dequant": ((WXA16_DECODE_MAX_M + 1, _BIG), 15, "dequant"),
    "cuda_w4a16_gemm_tiled": ((0, WXA16_TILED_MAX_M), 10, None),
    "sm90_w4a16_gemm_wgmma": ((1, _BIG), 5, "wgmma"),
    "cuda_w4a16_gemm_wide": ((0, WXA16_WIDE_MAX_M), 3, "wide"),
}
KERNELS["w8a16_gemm"] = {
    "cuda_w8a16_gemm_decode": ((0, WXA16_DECODE_MAX_M), 20, None),
    "cuda_w8a16_gemm_dequant": ((WXA16_DECODE_MAX_M + 1, _BIG), 15, "dequant"),
    "cuda_w8a16_gemm_tiled": ((0, WXA16_TILED_MAX_M), 10, None),
    "sm90_w8a16_gemm_wgmma": ((1, _BIG), 5, "wgmma"),
    "cuda_w8a16_gemm_wide": ((0, WXA16_WIDE_MAX_M), 3, "wide"),
}
KERNELS["int4_quantize"] = {"cuda_int4_quantize": (None, 10, None)}

# The linear layers' kernels with the activation quantizer in the GEMM's prologue: no op of
# their own. backends/cuda/linear.py runs one in place of a layer's two kernels when those
# are the quantizers and the GEMM named here: linear op -> (kernel, quantizers, GEMM).
FUSED_LINEAR: Dict[str, Tuple[str, Tuple[str, ...], str]] = {
    "fp8_linear": ("sm90_fp8_linear_swapab",
                   ("cuda_fp8_quant_per_token", "cuda_fp8_quant_static"), "sm90_fp8_gemm_swapab"),
    "int8_linear": ("sm90_int8_linear_swapab",
                    ("cuda_int8_quant_per_token", "cuda_int8_quant_static"),
                    "sm90_int8_gemm_swapab"),
}

# The kernels of this build: name -> (op kind, min arch, kernel id).
_BUILT: Dict[str, Tuple[str, int, int]] = (
    {name: (kind, arch, kid) for name, kind, arch, kid in _C.kernels()} if _C is not None
    else {})

# Enum codes of the launch bindings, by torch dtype and by lowbit format name.
_ENUMS = _C.enums() if _C is not None else {}
DTYPE_CODE: Dict[torch.dtype, int] = {
    getattr(torch, name): code for name, code in _ENUMS.get("dtype", {}).items()}
FP8_FORMAT_CODE: Dict[str, int] = dict(_ENUMS.get("fp8_format", {}))


def kernel_id(name: str) -> Optional[int]:
    """The id the launch bindings take for kernel ``name``; None when not in this build."""
    row = _BUILT.get(name)
    return row[2] if row else None


def min_arch(name: str) -> Optional[int]:
    """The oldest arch (80, 89, 90) kernel ``name`` runs on; None when not in this build."""
    row = _BUILT.get(name)
    return row[1] if row else None


_availability: list = []  # [reason or None], computed once


def available() -> Optional[str]:
    """None when these kernels can run in this process, else why not."""
    if not _availability:
        _availability.append(_availability_reason())
    return _availability[0]


def _availability_reason() -> Optional[str]:
    if not has_cuda_kernels():
        return "lowbit._C was built without CUDA kernels (or is not built)"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device on this machine"
    if _C.device_count() == 0:
        return ("the CUDA runtime inside lowbit._C sees no device (a driver older than the "
                f"CUDA {_C.build_info().get('cuda_version')} it was built with?)")
    return None


def device_reason(t: torch.Tensor) -> Optional[str]:
    """Why the kernels cannot take tensor ``t``'s device, or None."""
    if t.device.type != "cuda":
        return f"needs CUDA tensors; got a tensor on {t.device}"
    idx = device_index(t.device)
    if capability(idx) < (8, 0):
        return f"needs compute capability 8.0 or newer; cuda:{idx} is older"
    return None


def unlisted() -> list:
    """Kernels of this build that neither ``KERNELS`` nor ``FUSED_LINEAR`` lists (so none
    runs them)."""
    listed = {name for table in KERNELS.values() for name in table}
    listed |= {row[0] for row in FUSED_LINEAR.values()}
    return sorted(set(_BUILT) - listed)


def register(op: str, kind: str, make: Callable) -> None:
    """Registers every kernel of ``KERNELS[op]``, whose op kind in ``_C.kernels()`` is
    ``kind``. ``make(name, m_range, variant)`` returns (run, supports, prepare) for it."""
    for name, (m_range, priority, variant) in KERNELS[op].items():
        if name in _BUILT and _BUILT[name][0] != kind:
            raise RuntimeError(f"lowbit._C lists {name} as a {_BUILT[name][0]} kernel, "
                               f"not {kind}: the build and the package disagree")
        run, supports, prepare = make(name, m_range, variant)
        register_kernel(op, "cuda", name, supports=supports, available=available,
                        priority=priority, prepare=prepare)(run)


# Register the ops' kernels.
from . import gemm, int4_quantize, int8_gemm, int8_quantize, quantize, wxa16_gemm  # noqa: E402,F401
