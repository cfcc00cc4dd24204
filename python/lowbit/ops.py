"""Every lowbit op: its schema, its argument checks, its fake (meta) implementation, and its
dispatch to a kernel. Registered as ``torch.ops.lowbit.<name>``; the public functions in
``lowbit`` (``lowbit/api.py``) are thin wrappers over these.

Fake implementations only allocate, so the ops trace under ``torch.compile(fullgraph=True)``
and capture in CUDA graphs. Backends plug in through ``lowbit._backend.register_kernel``;
the ``backend`` argument is ``auto``, ``cuda``, ``triton``, ``reference`` or ``default``
(lowbit's current default, resolved when the op runs).

Each op has a plain eager implementation (``<name>_eager``): the public functions call it
directly outside of ``torch.compile`` tracing, because the custom-op dispatcher costs tens of
microseconds a call, more than a decode-time GEMM takes on the GPU. Under tracing (and for
tensor subclasses such as FakeTensor) they go through ``torch.ops.lowbit``.

Ops return tensors only: where the public API returns None (the zero point of a symmetric
quantizer), the registered op returns an empty tensor.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _checks as C
from ._backend import run, run_checked

_EMPTY_I32 = (0,)


def _new(shape, dtype, like: Tensor) -> Tensor:
    return torch.empty(shape, dtype=dtype, device=like.device)


# ---------------------------------------------------------------------------- quantize_fp8
def check_quantize_fp8(x, scale, fmt, granularity, group_size, block):
    op = "quantize_fp8"
    C.dtype(op, "x", x, C.FLOAT_DTYPES)
    qdtype = C.fmt(op, fmt)
    sshape = C.granularity(op, x, granularity, group_size, block)
    if scale is not None:
        C.static_scale(op, "scale", scale, sshape, granularity)
    C.same_device(op, x=x, scale=scale)
    return qdtype, sshape


def quantize_fp8_eager(x: Tensor, scale: Optional[Tensor], fmt: str, granularity: str,
                 group_size: int, block: List[int], saturate: bool,
                 backend: str) -> Tuple[Tensor, Tensor]:
    return run_checked(
        "quantize_fp8", backend, (x, scale, fmt, granularity, group_size, block, saturate),
        lambda: check_quantize_fp8(x, scale, fmt, granularity, group_size, block),
        lambda: C.finite_scales("quantize_fp8", scale=scale))


def _quantize_fp8_fake(x, scale, fmt, granularity, group_size, block, saturate, backend):
    qdtype, sshape = check_quantize_fp8(x, scale, fmt, granularity, group_size, block)
    return _new(x.shape, qdtype, x), _new(sshape, torch.float32, x)


# -------------------------------------------------------------------------- dequantize_fp8
def check_dequantize_fp8(q, scale, out_dtype):
    op = "dequantize_fp8"
    C.dtype(op, "q", q, tuple(C.FP8_DTYPES.values()))
    C.scale_for(op, "scale", scale, q)
    C.out_dtype(op, out_dtype)
    C.same_device(op, q=q, scale=scale)


def dequantize_fp8_eager(q: Tensor, scale: Tensor, out_dtype: torch.dtype, backend: str) -> Tensor:
    return run_checked("dequantize_fp8", backend, (q, scale, out_dtype),
                       lambda: check_dequantize_fp8(q, scale, out_dtype))


def _dequantize_fp8_fake(q, scale, out_dtype, backend):
    check_dequantize_fp8(q, scale, out_dtype)
    return _new(q.shape, out_dtype, q)


# --------------------------------------------------------------------------- quantize_int8
def check_quantize_int8(x, scale, zero, granularity, group_size, block, symmetric):
    op = "quantize_int8"
    C.dtype(op, "x", x, C.FLOAT_DTYPES)
    sshape = C.granularity(op, x, granularity, group_size, block)
    if scale is not None:
        C.static_scale(op, "scale", scale, sshape, granularity)
        if not symmetric and zero is None:
            raise ValueError(f"{op}: zero is required with a static scale when symmetric=False")
    if zero is not None:
        if symmetric:
            raise ValueError(f"{op}: zero must be None when symmetric=True")
        if scale is None:
            raise ValueError(f"{op}: zero needs a static scale; got scale=None")
        C.dtype(op, "zero", zero, (torch.int32,))
        C.shape(op, "zero", zero, [sshape], f"{sshape} (the scale's)")
    C.same_device(op, x=x, scale=scale, zero=zero)
    return sshape


def quantize_int8_eager(x: Tensor, scale: Optional[Tensor], zero: Optional[Tensor], granularity: str,
                  group_size: int, block: List[int], symmetric: bool,
                  backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    check_quantize_int8(x, scale, zero, granularity, group_size, block, symmetric)
    C.finite_scales("quantize_int8", scale=scale)
    return run("quantize_int8", x.device, backend,
               (x, scale, zero, granularity, group_size, block, symmetric))


def _quantize_int8_fake(x, scale, zero, granularity, group_size, block, symmetric, backend):
    sshape = check_quantize_int8(x, scale, zero, granularity, group_size, block, symmetric)
    zshape = _EMPTY_I32 if symmetric else sshape
    return (_new(x.shape, torch.int8, x), _new(sshape, torch.float32, x),
            _new(zshape, torch.int32, x))


# ------------------------------------------------------------------------- dequantize_int8
def check_dequantize_int8(q, scale, zero, out_dtype):
    op = "dequantize_int8"
    C.dtype(op, "q", q, (torch.int8,))
    C.scale_for(op, "scale", scale, q)
    if zero is not None:
        C.dtype(op, "zero", zero, (torch.int32,))
        C.shape(op, "zero", zero, [tuple(scale.shape)], f"{tuple(scale.shape)} (the scale's)")
    C.out_dtype(op, out_dtype)
    C.same_device(op, q=q, scale=scale, zero=zero)


def dequantize_int8_eager(q: Tensor, scale: Tensor, zero: Optional[Tensor], out_dtype: torch.dtype,
                    backend: str) -> Tensor:
    check_dequantize_int8(q, scale, zero, out_dtype)
    return run("dequantize_int8", q.device, backend, (q, scale, zero, out_dtype))


def _dequantize_int8_fake(q, scale, zero, out_dtype, backend):
    check_dequantize_int8(q, scale, zero, out_dtype)
    return _new(q.shape, out_dtype, q)


# --------------------------------------------------------------------------------- int8_mm
def check_int8_mm(a, b):
    op = "int8_mm"
    m, n, k = C.gemm_operands(op, a, b, (torch.int8,))
    if k >= 131072:
        raise ValueError(f"{op}: K must be below 131072 for an exact int32 result; got K = {k}")
    C.same_device(op, a=a, b=b)
    return m, n


def int8_mm_eager(a: Tensor, b: Tensor, backend: str) -> Tensor:
    check_int8_mm(a, b)
    return run("int8_mm", a.device, backend, (a, b))


def _int8_mm_fake(a, b, backend):
    m, n = check_int8_mm(a, b)
    return _new((m, n), torch.int32, a)


# ------------------------------------------------------------------------------- int8_gemm
def check_int8_gemm(a, b, a_scale, b_scale, bias, out_dtype, a_zero):
    op = "int8_gemm"
    m, n, _ = C.gemm_operands(op, a, b, (torch.int8,))
    C.row_scale(op, "a_scale", a_scale, m, "M")
    C.row_scale(op, "b_scale", b_scale, n, "N")
    C.bias(op, bias, n)
    C.out_dtype(op, out_dtype)
    if a_zero is not None:
        C.dtype(op, "a_zero", a_zero, (torch.int32,))
        C.shape(op, "a_zero", a_zero, [(), (m, 1)], f"() or [M, 1] = ({m}, 1)")
    C.same_device(op, a=a, b=b, a_scale=a_scale, b_scale=b_scale, bias=bias, a_zero=a_zero)
    return m, n


def int8_gemm_eager(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, bias: Optional[Tensor],
              out_dtype: torch.dtype, a_zero: Optional[Tensor], backend: str) -> Tensor:
    check_int8_gemm(a, b, a_scale, b_scale, bias, out_dtype, a_zero)
    C.finite_scales("int8_gemm", a_scale=a_scale, b_scale=b_scale)
    return run("int8_gemm", a.device, backend, (a, b, a_scale, b_scale, bias, out_dtype, a_zero))


def _int8_gemm_fake(a, b, a_scale, b_scale, bias, out_dtype, a_zero, backend):
    m, n = check_int8_gemm(a, b, a_scale, b_scale, bias, out_dtype, a_zero)
    return _new((m, n), out_dtype, a)


# --------------------------------------------------------------------------- fp8_scaled_mm
def check_fp8_scaled_mm(a, b, a_scale, b_scale, bias, out_dtype):
    op = "fp8_scaled_mm"
    m, n, k = C.gemm_operands(op, a, b, (torch.float8_e4m3fn, torch.float8_e5m2))
    kb = -(-k // 128)
    C.dtype(op, "a_scale", a_scale, (torch.float32,))
    C.dtype(op, "b_scale", b_scale, (torch.float32,))
    C.shape(op, "a_scale", a_scale, [(), (m, 1), (m, kb)],
            lambda: f"() per tensor, [M, 1] = ({m}, 1) per row, or [M, ceil(K/128)] = "
                    f"({m}, {kb}) per 1x128 block")
    C.shape(op, "b_scale", b_scale, [(), (n, 1), (-(-n // 128), kb)],
            lambda: f"() per tensor, [N, 1] = ({n}, 1) per row, or [ceil(N/128), "
                    f"ceil(K/128)] = ({-(-n // 128)}, {kb}) per 128x128 block")
    C.bias(op, bias, n)
    C.out_dtype(op, out_dtype)
    C.same_device(op, a=a, b=b, a_scale=a_scale, b_scale=b_scale, bias=bias)
    return m, n


def fp8_scaled_mm_eager(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, bias: Optional[Tensor],
                  out_dtype: torch.dtype, fast_accum: bool, backend: str) -> Tensor:
    return run_checked(
        "fp8_scaled_mm", backend, (a, b, a_scale, b_scale, bias, out_dtype, fast_accum),
        lambda: check_fp8_scaled_mm(a, b, a_scale, b_scale, bias, out_dtype),
        lambda: C.finite_scales("fp8_scaled_mm", a_scale=a_scale, b_scale=b_scale))


def _fp8_scaled_mm_fake(a, b, a_scale, b_scale, bias, out_dtype, fast_accum, backend):
    m, n = check_fp8_scaled_mm(a, b, a_scale, b_scale, bias, out_dtype)
    return _new((m, n), out_dtype, a)


# --------------------------------------------------------------------------- int4_quantize
def check_int4_quantize(w, group_size):
    op = "int4_quantize"
    C.dtype(op, "w", w, C.FLOAT_DTYPES)
    C.rank(op, "w", w, 2, "[N, K]")
    n, k = w.shape
    if group_size not in C.GROUP_SIZES:
        raise ValueError(f"{op}: group_size must be one of {C.GROUP_SIZES}; got {group_size}")
    if k % group_size:
        raise ValueError(f"{op}: K = w.shape[1] = {k} must be divisible by group_size = {group_size}")
    return n, k


def int4_scale_dtype(w_dtype: torch.dtype) -> torch.dtype:
    """Scales are stored in the weight's dtype when it is half precision, else fp32."""
    return w_dtype if w_dtype in (torch.bfloat16, torch.float16) else torch.float32


def int4_quantize_eager(w: Tensor, group_size: int, symmetric: bool,
                  backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    check_int4_quantize(w, group_size)
    return run("int4_quantize", w.device, backend, (w, group_size, symmetric))


def _int4_quantize_fake(w, group_size, symmetric, backend):
    n, k = check_int4_quantize(w, group_size)
    g = (n, k // group_size)
    return (_new((n, k // 2), torch.uint8, w), _new(g, int4_scale_dtype(w.dtype), w),
            _new(_EMPTY_I32 if symmetric else g, torch.uint8, w))


# ------------------------------------------------------------------------------ w4a16_gemm
def check_w4a16_gemm(x, qweight, scales, zeros, group_size, perm, bias):
    op = "w4a16_gemm"
    C.dtype(op, "x", x, C.FLOAT_DTYPES)
    C.rank(op, "x", x, 2, "[M, K]")
    C.dtype(op, "qweight", qweight, (torch.uint8,))
    C.rank(op, "qweight", qweight, 2, "[N, K // 2] (canonical packed int4)")
    n, k = qweight.shape[0], qweight.shape[1] * 2
    if x.shape[1] != k:
        raise ValueError(
            f"{op}: x and the weight must share K; got x [M, K] = {tuple(x.shape)} and a "
            f"weight of K = 2 * qweight.shape[1] = {k}")
    if group_size not in C.GROUP_SIZES:
        raise ValueError(f"{op}: group_size must be one of {C.GROUP_SIZES}; got {group_size}")
    if k % group_size:
        raise ValueError(f"{op}: K = {k} must be divisible by group_size = {group_size}")
    g = (n, k // group_size)
    C.dtype(op, "scales", scales, C.FLOAT_DTYPES)
    C.shape(op, "scales", scales, [g], f"[N, K // G] = {g}")
    if zeros is not None:
        C.dtype(op, "zeros", zeros, (torch.uint8,))
        C.shape(op, "zeros", zeros, [g], f"[N, K // G] = {g}")
    if perm is not None:
        C.dtype(op, "perm", perm, (torch.int64, torch.int32))
        C.shape(op, "perm", perm, [(k,)], f"[K] = ({k},)")
    C.bias(op, bias, n)
    C.same_device(op, x=x, qweight=qweight, scales=scales, zeros=zeros, perm=perm, bias=bias)
    return x.shape[0], n


def w4a16_gemm_eager(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor],
               group_size: int, perm: Optional[Tensor], bias: Optional[Tensor],
               backend: str) -> Tensor:
    check_w4a16_gemm(x, qweight, scales, zeros, group_size, perm, bias)
    C.finite_scales("w4a16_gemm", scales=scales)
    return run("w4a16_gemm", x.device, backend,
               (x, qweight, scales, zeros, group_size, perm, bias))


def _w4a16_gemm_fake(x, qweight, scales, zeros, group_size, perm, bias, backend):
    m, n = check_w4a16_gemm(x, qweight, scales, zeros, group_size, perm, bias)
    return _new((m, n), x.dtype, x)


def _register(name, eager, fake):
    op = torch.library.custom_op(f"lowbit::{name}", eager, mutates_args=())
    op.register_fake(fake)
    return op


quantize_fp8 = _register("quantize_fp8", quantize_fp8_eager, _quantize_fp8_fake)
dequantize_fp8 = _register("dequantize_fp8", dequantize_fp8_eager, _dequantize_fp8_fake)
quantize_int8 = _register("quantize_int8", quantize_int8_eager, _quantize_int8_fake)
dequantize_int8 = _register("dequantize_int8", dequantize_int8_eager, _dequantize_int8_fake)
int8_mm = _register("int8_mm", int8_mm_eager, _int8_mm_fake)
int8_gemm = _register("int8_gemm", int8_gemm_eager, _int8_gemm_fake)
fp8_scaled_mm = _register("fp8_scaled_mm", fp8_scaled_mm_eager, _fp8_scaled_mm_fake)
int4_quantize = _register("int4_quantize", int4_quantize_eager, _int4_quantize_fake)
w4a16_gemm = _register("w4a16_gemm", w4a16_gemm_eager, _w4a16_gemm_fake)


OPS = {
    "quantize_fp8": quantize_fp8,
    "dequantize_fp8": dequantize_fp8,
    "quantize_int8": quantize_int8,
    "dequantize_int8": dequantize_int8,
    "int8_mm": int8_mm,
    "int8_gemm": int8_gemm,
    "fp8_scaled_mm": fp8_scaled_mm,
    "int4_quantize": int4_quantize,
    "w4a16_gemm": w4a16_gemm,
}

EAGER = {name: globals()[name + "_eager"] for name in OPS}
