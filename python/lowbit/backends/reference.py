"""The reference backend: lowbit.reference (NumPy) behind every op.

Inputs are copied to host float32 / integer arrays (every bf16 and fp16 value is exact in
fp32), the NumPy definition runs, and the results come back on the inputs' device, rounded
to the output dtype by torch's round-to-nearest-even cast.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import reference as R
from ..reference.gemm import w8a16_gemm as _w8a16_reference
from .._backend import register_kernel
from .._checks import FP8_DTYPES, FP8_FORMAT_OF
from ..ops import int4_scale_dtype
from ..reference.int4 import unpack_int4_prepacked

NAME = "numpy_reference"


def _f32(t):
    return None if t is None else t.detach().to("cpu", torch.float32, copy=True).numpy()


def _raw(t):
    """Integer or fp8 tensor -> a host array of its raw values (fp8 as uint8 codes)."""
    if t is None:
        return None
    t = t.detach().to("cpu", copy=True)
    if t.dtype in FP8_FORMAT_OF:
        t = t.view(torch.uint8)
    return t.numpy()


def _back(arr, like, dtype=None):
    arr = np.asarray(arr)
    # np.ascontiguousarray returns at least 1-D; keep a 0-d scale 0-d (the fake impl's shape).
    out = torch.from_numpy(np.ascontiguousarray(arr).reshape(arr.shape))
    if dtype is not None:
        out = out.to(dtype)
    return out.to(like.device)


@register_kernel("quantize_fp8", "reference", NAME)
def quantize_fp8(x, scale, fmt, granularity, group_size, block, saturate):
    q, s = R.quantize_fp8(_f32(x), _f32(scale), fmt=fmt, granularity=granularity,
                          group_size=group_size, block=tuple(block), saturate=saturate)
    return _back(q, x).view(FP8_DTYPES[fmt]), _back(s, x)


@register_kernel("dequantize_fp8", "reference", NAME)
def dequantize_fp8(q, scale, out_dtype):
    v = R.dequantize_fp8(_raw(q), _f32(scale), fmt=FP8_FORMAT_OF[q.dtype])
    return _back(v, q, out_dtype)


@register_kernel("quantize_int8", "reference", NAME)
def quantize_int8(x, scale, zero, granularity, group_size, block, symmetric):
    q, s, z = R.quantize_int8(_f32(x), _f32(scale), _raw(zero), granularity=granularity,
                              group_size=group_size, block=tuple(block), symmetric=symmetric)
    z = np.zeros(0, np.int32) if z is None else np.asarray(z, np.int32)
    return _back(q, x), _back(s, x), _back(z.copy(), x)


@register_kernel("dequantize_int8", "reference", NAME)
def dequantize_int8(q, scale, zero, out_dtype):
    return _back(R.dequantize_int8(_raw(q), _f32(scale), _raw(zero)), q, out_dtype)


@register_kernel("int8_mm", "reference", NAME)
def int8_mm(a, b):
    return _back(R.int8_mm(_raw(a), _raw(b)), a)


@register_kernel("int8_gemm", "reference", NAME)
def int8_gemm(a, b, a_scale, b_scale, bias, out_dtype, a_zero):
    out = R.int8_gemm(_raw(a), _raw(b), _f32(a_scale), _f32(b_scale), _f32(bias), _raw(a_zero))
    return _back(out, a, out_dtype)


@register_kernel("fp8_scaled_mm", "reference", NAME)
def fp8_scaled_mm(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
    # fast_accum changes only how a tensor-core kernel accumulates; float64 is exact enough.
    out = R.fp8_scaled_mm(_raw(a), _raw(b), _f32(a_scale), _f32(b_scale), _f32(bias),
                          a_fmt=FP8_FORMAT_OF[a.dtype], b_fmt=FP8_FORMAT_OF[b.dtype])
    return _back(out, a, out_dtype)


@register_kernel("int4_quantize", "reference", NAME)
def int4_quantize(w, group_size, symmetric):
    sdtype = int4_scale_dtype(w.dtype)
    q, s, z = R.quantize_int4(_f32(w), group_size, symmetric,
                              scale_dtype=str(sdtype).replace("torch.", ""))
    z = np.zeros(0, np.uint8) if z is None else z
    return _back(q, w), _back(s, w, sdtype), _back(z, w)


@register_kernel("w4a16_gemm", "reference", NAME)
def w4a16_gemm(x, qweight, scales, zeros, group_size, perm, bias):
    q = _raw(qweight)
    if q.ndim == 4:  # prepacked (the op's check tied its shape to N and K)
        q = unpack_int4_prepacked(q, scales.shape[0], x.shape[1])
    out = R.w4a16_gemm(_f32(x), q, _f32(scales), _raw(zeros), group_size,
                       _f32(bias), _raw(perm))
    return _back(out, x, x.dtype)


@register_kernel("w8a16_gemm", "reference", NAME)
def w8a16_gemm(x, w, w_scale, bias):
    return _back(_w8a16_reference(_f32(x), _raw(w), _f32(w_scale), _f32(bias)), x, x.dtype)
