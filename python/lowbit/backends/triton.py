"""The Triton backend: kernels from ``lowbit.triton_kernels`` behind lowbit's ops.

Importing this module never imports triton: the kernels' modules load on first use, so
``import lowbit`` stays fast and works without triton, and ``TRITON_INTERPRET=1`` set after
``import lowbit`` still takes effect. Every kernel's ``available`` names the reason it
cannot run (triton missing, or no GPU and no interpreter); ``supports`` names the inputs it
does not handle. Priorities sit below the CUDA kernels' so ``auto`` prefers those.

Kernels (op: name):
- quantize_fp8: triton_fp8_quant_per_tensor, triton_fp8_quant_per_token (token and channel),
  triton_fp8_quant_per_group, triton_fp8_quant_per_block (128x128 and 1x128)
- dequantize_fp8: triton_fp8_dequant
- fp8_scaled_mm: triton_fp8_scaled_mm
"""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import _interpreting, register_kernel
from ._device import OnDevice, capability, device_index

PRIORITY = -10

_modules = None
_import_error: Optional[str] = None
_interpreted_kernels = False  # whether the kernels were defined under TRITON_INTERPRET=1


def _load():
    """(fp8_quant, fp8_gemm) modules, or None with _import_error set."""
    global _modules, _import_error, _interpreted_kernels
    if _modules is None and _import_error is None:
        try:
            from ..triton_kernels import fp8_gemm, fp8_quant
        except Exception as e:  # ImportError, or a triton that fails to initialise
            _import_error = f"{type(e).__name__}: {e}"
        else:
            _modules = (fp8_quant, fp8_gemm)
            _interpreted_kernels = all(
                type(k).__name__ == "InterpretedFunction"
                for k in (fp8_quant._fp8_dequant_kernel, fp8_gemm._fp8_scaled_mm_kernel))
    return _modules


def available() -> Optional[str]:
    if _load() is None:
        return f"triton is not importable ({_import_error})"
    if _interpreting():
        if not _interpreted_kernels:
            return ("TRITON_INTERPRET=1 was set after lowbit's Triton kernels were loaded "
                    "(set it before the first Triton op)")
    elif not torch.cuda.is_available():
        return "no CUDA device (the Triton kernels need one, or TRITON_INTERPRET=1)"
    return None


def _device_reason(t: torch.Tensor) -> Optional[str]:
    if t.device.type == "cuda":
        return None
    if _interpreting():
        return None
    return f"tensors on {t.device} need TRITON_INTERPRET=1"


# ---------------------------------------------------------------------------- quantize_fp8
def _quant_supports(*granularities):
    def supports(x, scale, fmt, granularity, group_size, block, saturate):
        if granularity not in granularities:
            return f"granularity={granularity!r} is another kernel's"
        return _device_reason(x)
    return supports


def _quantize_fp8(x, scale, fmt, granularity, group_size, block, saturate):
    # Triton launches on the current device: make the tensors' device current.
    with OnDevice(x.device):
        return _load()[0].quantize_fp8(x, scale, fmt, granularity, group_size, block, saturate)


for _name, _grans in (("triton_fp8_quant_per_tensor", ("tensor",)),
                      ("triton_fp8_quant_per_token", ("token", "channel")),
                      ("triton_fp8_quant_per_group", ("group",)),
                      ("triton_fp8_quant_per_block", ("block",))):
    register_kernel("quantize_fp8", "triton", _name, supports=_quant_supports(*_grans),
                    available=available, priority=PRIORITY)(_quantize_fp8)


# -------------------------------------------------------------------------- dequantize_fp8
def _dequant_supports(q, scale, out_dtype):
    return _device_reason(q)


@register_kernel("dequantize_fp8", "triton", "triton_fp8_dequant", supports=_dequant_supports,
                 available=available, priority=PRIORITY)
def dequantize_fp8(q, scale, out_dtype):
    with OnDevice(q.device):
        return _load()[0].dequantize_fp8(q, scale, out_dtype)


# --------------------------------------------------------------------------- fp8_scaled_mm
_GEMM_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def _gemm_supports(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
    if a.dtype not in _GEMM_DTYPES or b.dtype not in _GEMM_DTYPES:
        return f"operands {a.dtype} x {b.dtype}: needs float8_e4m3fn or float8_e5m2"
    why = _device_reason(a)
    if why:
        return why
    if a.device.type == "cuda" and not _interpreting():
        cap = capability(device_index(a.device))
        if cap < (8, 9):
            return f"fp8 tl.dot needs compute capability 8.9 or newer; got {cap[0]}.{cap[1]}"
    return None


@register_kernel("fp8_scaled_mm", "triton", "triton_fp8_scaled_mm", supports=_gemm_supports,
                 available=available, priority=PRIORITY)
def fp8_scaled_mm(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
    with OnDevice(a.device):
        return _load()[1].fp8_scaled_mm(a, b, a_scale, b_scale, bias, out_dtype, fast_accum)
