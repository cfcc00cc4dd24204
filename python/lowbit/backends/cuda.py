"""The CUDA backend for FP8 quantization: hand-written kernels of ``lowbit._C``
(``csrc/fp8/``) behind ``quantize_fp8`` and ``dequantize_fp8``.

Each call allocates its outputs on the input's device and launches on the current stream:
no host synchronization, no ``.item()``, no copy of the input (strided, transposed and
offset inputs go to the kernels as pointer + strides; only an N-D input whose leading
dimensions cannot be merged into one stride is made contiguous first).

Kernels (names as ``lowbit.explain`` reports them):

- ``cuda_fp8_quant_static``: a given scale of any granularity, one pass.
- ``cuda_fp8_quant_per_tensor``: dynamic per-tensor scale, two passes (amax with an
  atomicMax into a 4-byte workspace, then scale + quantize; the input is read twice).
- ``cuda_fp8_quant_per_token``: dynamic per-row scale (``token`` and ``channel``), the row
  held in registers between the max and the encode: one read of the input.
- ``cuda_fp8_quant_per_group``: dynamic scale per 1 x G group (``group``, and ``block``
  with ``block=(1, 128)``), one pass.
- ``cuda_fp8_quant_per_block128``: dynamic scale per 128 x 128 tile, one pass.
- ``cuda_fp8_dequant``: every scale layout the SPEC allows.

``HW_CVT`` (on by default; ``LOWBIT_FP8_HW_CVT=0`` in the environment turns it off): on
sm_89+ GPUs, ``saturate=True`` e4m3fn / e5m2 quantization encodes with the hardware
``cvt.rn.satfinite.{e4m3,e5m2}x2.f32`` (NaN rewritten to the canonical 0x7F) instead of the
integer encoder, which is ALU-bound near the copy bandwidth (about 86% of it for a bf16 cast
on the H100, 98% with the instruction). Both encoders were checked bit-exact against the
reference for all 2^32 fp32 inputs on an H100 (tests/test_cuda_fp8_quant.py runs both).
Older GPUs, e4m3fnuz and saturate=False always use the integer encoder.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from .._backend import register_kernel
from ._device import OnDevice, capability, device_index, raw_stream, stream
from .._build import _C, has_cuda_kernels
from .._checks import FP8_DTYPES, FP8_FORMAT_OF
from ..scale_layout import scale_tile

PRIORITY = 10

# Whether saturate=True e4m3fn / e5m2 quantization may use the sm_89+ hardware conversion
# (ignored on older GPUs and for the other modes). Read once; tests flip the attribute.
HW_CVT = os.environ.get("LOWBIT_FP8_HW_CVT", "1") != "0"

# The enums of csrc/fp8/fp8_quant.h.
_FMT = {"e4m3fn": 0, "e5m2": 1, "e4m3fnuz": 2}
_FLOAT = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_G_TENSOR, _G_ROW, _G_GROUP, _G_BLOCK128 = 0, 1, 2, 3

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


def _device_reason(t: torch.Tensor) -> Optional[str]:
    if t.device.type != "cuda":
        return f"needs CUDA tensors; got a tensor on {t.device}"
    idx = device_index(t.device)
    ok = capability(idx) >= (8, 0)
    if not ok:
        return f"needs compute capability 8.0 or newer; cuda:{idx} is older"
    return None


def _rows_view(t: torch.Tensor):
    """``t`` as a [rows, cols] view with element strides: (view, rows, cols, rs, cs). The
    last dimension is the row; leading dimensions are merged when their strides allow it,
    else the tensor is made contiguous (a copy)."""
    if t.dim() == 0:
        return t, 1, 1, 1, 1
    cols = t.shape[-1]
    if t.dim() == 1:
        return t, 1, cols, cols, t.stride(0)
    if t.dim() == 2:
        return t, t.shape[0], cols, t.stride(0), t.stride(1)
    rows = 1
    for d in t.shape[:-1]:
        rows *= d
    try:
        v = t.view(rows, cols)
    except RuntimeError:  # leading dimensions that no single stride describes
        v = t.reshape(rows, cols)
    return v, rows, cols, v.stride(0), v.stride(1)


# ---------------------------------------------------------------------------- quantize_fp8
def _granularity(granularity: str, block) -> int:
    if granularity == "tensor":
        return _G_TENSOR
    if granularity in ("token", "channel"):
        return _G_ROW
    if granularity == "group":
        return _G_GROUP
    return _G_GROUP if tuple(block) == (1, 128) else _G_BLOCK128


def _scale_shape(x: torch.Tensor, g: int, group_size: int):
    if g == _G_TENSOR:
        return ()
    lead = tuple(x.shape[:-1])
    if g == _G_ROW:
        return lead + (1,)
    k = x.shape[-1]
    if g == _G_GROUP:
        return lead + ((k + group_size - 1) // group_size,)
    return ((x.shape[0] + 127) // 128, (k + 127) // 128)


def _quantize_launch(x, geometry, scale, fmt, granularity, group_size, block, saturate):
    """launch(src, scale) -> (q, scale): quantizing inputs of x's signature whose rows are
    `src` ([rows, cols] with strides rs, cs: `geometry`), with `scale` (dense) or a dynamic
    one. Codes, shapes and geometry are worked out here, once."""
    g = _granularity(granularity, block)
    group = 128 if (granularity == "block") else group_size
    rows, cols, rs, cs = geometry
    dev, shape = x.device, tuple(x.shape)
    idx = device_index(dev)
    q_dtype, s_shape = FP8_DTYPES[fmt], _scale_shape(x, g, group)
    x_code, fmt_code, sat = _FLOAT[x.dtype], _FMT[fmt], bool(saturate)
    workspace = scale is None and g == _G_TENSOR
    fp8_quantize = _C.fp8_quantize

    def launch(src, scale):
        q = torch.empty(shape, dtype=q_dtype, device=dev)
        s_out = torch.empty(s_shape, dtype=torch.float32, device=dev)
        ws = torch.empty(1, dtype=torch.int32, device=dev) if workspace else None
        with OnDevice(dev):
            fp8_quantize(src.data_ptr(), x_code, rows, cols, rs, cs, q.data_ptr(), fmt_code, sat,
                         g, group, 0 if scale is None else scale.data_ptr(), s_out.data_ptr(),
                         0 if ws is None else ws.data_ptr(), HW_CVT, raw_stream(idx))
        return q, s_out

    return launch


def _quantize_fp8(x, scale, fmt, granularity, group_size, block, saturate):
    v, *geometry = _rows_view(x)
    if scale is not None:
        scale = scale.contiguous()
    return _quantize_launch(x, geometry, scale, fmt, granularity, group_size, block,
                            saturate)(v, scale)


def _prepare_quantize_fp8(x, scale, fmt, granularity, group_size, block, saturate):
    # A remembered signature keeps its launch. Inputs whose rows are no view of x (a copy per
    # call) and static scales that are not dense keep the general path.
    v, *geometry = _rows_view(x)
    if (v.data_ptr() != x.data_ptr() or x.numel() == 0 or
            (scale is not None and not scale.is_contiguous())):
        return _quantize_fp8
    launch = _quantize_launch(x, geometry, scale, fmt, granularity, group_size, block, saturate)
    return lambda x, scale, fmt, granularity, group_size, block, saturate: launch(x, scale)


def _quant_supports(kind: str):
    """supports() for the kernel serving ``kind``: static, tensor, row, group or block128."""

    def supports(x, scale, fmt, granularity, group_size, block, saturate) -> Optional[str]:
        why = _device_reason(x)
        if why:
            return why
        if kind == "static":
            return None if scale is not None else "dynamic scale (this kernel takes a given scale)"
        if scale is not None:
            return "static scale (served by cuda_fp8_quant_static)"
        g = _granularity(granularity, block)
        want = {"tensor": _G_TENSOR, "row": _G_ROW, "group": _G_GROUP, "block128": _G_BLOCK128}
        if g != want[kind]:
            return f"granularity={granularity!r} block={tuple(block)} is another kernel's"
        return None

    return supports


for _kind, _name in (("static", "cuda_fp8_quant_static"),
                     ("tensor", "cuda_fp8_quant_per_tensor"),
                     ("row", "cuda_fp8_quant_per_token"),
                     ("group", "cuda_fp8_quant_per_group"),
                     ("block128", "cuda_fp8_quant_per_block128")):
    register_kernel("quantize_fp8", "cuda", _name, supports=_quant_supports(_kind),
                    available=available, priority=PRIORITY,
                    prepare=_prepare_quantize_fp8)(_quantize_fp8)


# -------------------------------------------------------------------------- dequantize_fp8
def _dequant_supports(q, scale, out_dtype) -> Optional[str]:
    return _device_reason(q)


@register_kernel("dequantize_fp8", "cuda", "cuda_fp8_dequant", supports=_dequant_supports,
                 available=available, priority=PRIORITY)
def _dequantize_fp8(q, scale, out_dtype):
    dev = q.device
    out = torch.empty(q.shape, dtype=out_dtype, device=dev)
    if q.numel() == 0:
        return out
    v, rows, cols, rs, cs = _rows_view(q)
    # (0, 0) per tensor; 0 = the whole extent, as the kernel reads it.
    tile_rows, tile_cols = scale_tile(scale.shape, q.shape)
    ld = scale.shape[-1] if scale.dim() else 0
    scale = scale.contiguous()
    with OnDevice(dev):
        _C.fp8_dequantize(v.data_ptr(), _FMT[FP8_FORMAT_OF[q.dtype]], rows, cols, rs, cs,
                          scale.data_ptr(), tile_rows, tile_cols, ld, out.data_ptr(),
                          _FLOAT[out_dtype], stream(dev))
    return out
