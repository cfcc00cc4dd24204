"""The Triton backend: kernels from ``lowbit.triton_kernels`` behind lowbit's ops.

Importing this module never imports triton: the kernels' modules load on first use, so
``import lowbit`` stays fast and works without triton. Whether a kernel runs interpreted is
decided when it is launched (``TRITON_INTERPRET=1`` then; see triton_kernels/_common.py),
not when its module was imported. The kernels import nothing of lowbit: this module passes
them the scale layouts (``lowbit.scale_layout``). Every kernel's ``available`` names the reason it
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

from .. import scale_layout
from .._backend import _interpreting, register_kernel
from ._device import OnDevice, capability, device_index

PRIORITY = -10

_kernels = None  # the lowbit.triton_kernels package, once its modules are loaded
_import_error: Optional[str] = None


def _load():
    """The ``lowbit.triton_kernels`` package with its kernel modules (``fp8_quant``,
    ``fp8_gemm``) loaded, or None with ``_import_error`` set."""
    global _kernels, _import_error
    if _kernels is None and _import_error is None:
        try:
            from .. import triton_kernels
            from ..triton_kernels import _common, fp8_gemm, fp8_quant  # noqa: F401
            _check_formats(_common.FP8_FORMATS)
        except Exception as e:  # ImportError, or a triton that fails to initialise
            _import_error = f"{type(e).__name__}: {e}"
        else:
            _kernels = triton_kernels
    return _kernels


def _check_formats(bits) -> None:
    """The kernels' FP8 bit fields must be the reference's (the definition)."""
    from ..reference.formats import FP8_FORMATS

    for name, f in FP8_FORMATS.items():
        b = bits[name]
        inf = -1 if f.inf_code is None else f.inf_code
        if (b.mbits, b.bias, b.max_value, b.max_code, b.nan_code, b.inf_code,
                b.negative_zero) != (f.mbits, f.bias, f.max_value, f.max_code, f.nan_code, inf,
                                     f.negative_zero):
            raise ImportError(f"triton_kernels' {name} bit fields differ from the reference's")


def available() -> Optional[str]:
    if _load() is None:
        return f"triton is not importable ({_import_error})"
    if not _interpreting() and not torch.cuda.is_available():
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


def _prepare_quantize_fp8(x, scale, fmt, granularity, group_size, block, saturate):
    """The launcher for one signature: the scale's layout is worked out once."""
    tile = scale_layout.quant_tile(granularity, group_size, block)
    sshape = scale_layout.scale_shape("quantize_fp8", tuple(x.shape), granularity,
                                      group_size, block)
    quantize = _load().fp8_quant.quantize_fp8

    def launch(x, scale, fmt, granularity, group_size, block, saturate):
        # Triton launches on the current device: make the tensors' device current.
        with OnDevice(x.device):
            return quantize(x, scale, fmt, tile, sshape, saturate)
    return launch


def _quantize_fp8(*args):
    return _prepare_quantize_fp8(*args)(*args)


for _name, _grans in (("triton_fp8_quant_per_tensor", ("tensor",)),
                      ("triton_fp8_quant_per_token", ("token", "channel")),
                      ("triton_fp8_quant_per_group", ("group",)),
                      ("triton_fp8_quant_per_block", ("block",))):
    register_kernel("quantize_fp8", "triton", _name, supports=_quant_supports(*_grans),
                    available=available, priority=PRIORITY,
                    prepare=_prepare_quantize_fp8)(_quantize_fp8)


# -------------------------------------------------------------------------- dequantize_fp8
def _dequant_supports(q, scale, out_dtype):
    return _device_reason(q)


@register_kernel("dequantize_fp8", "triton", "triton_fp8_dequant", supports=_dequant_supports,
                 available=available, priority=PRIORITY)
def dequantize_fp8(q, scale, out_dtype):
    tile = scale_layout.scale_tile(scale.shape, q.shape)
    with OnDevice(q.device):
        return _load().fp8_quant.dequantize_fp8(q, scale, out_dtype, tile)


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
    a_tile = scale_layout.scale_tile(a_scale.shape, a.shape)
    b_tile = scale_layout.scale_tile(b_scale.shape, b.shape)
    with OnDevice(a.device):
        return _load().fp8_gemm.fp8_scaled_mm(a, b, a_scale, b_scale, bias, out_dtype,
                                              fast_accum, a_tile=a_tile, b_tile=b_tile)
