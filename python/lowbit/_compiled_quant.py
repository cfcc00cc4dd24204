"""Dynamic per-token activation quantization written as torch ops, for compiled graphs.

A quantized Linear in a compiled graph is one registered op (``fp8_linear``,
``int8_linear``): opaque to Inductor, so the quantizer reads the activation again after the
kernel that produced it (a LayerNorm, a GELU, a residual add) wrote it. Written as torch
ops, the quantizer is something Inductor can fuse into that producer; the GEMM stays
lowbit's registered op (why: bench/NOTES.md, "where BERT's compiled and captured forwards
go").

Opt-in, ``LOWBIT_COMPILED_QUANT=inductor`` when the graph is traced, and only for
M > ``MIN_ROWS`` rows of at most ``MAX_K`` values, dynamic per-token activations (e4m3fn;
symmetric int8). The numbers
are the SPEC's, written out step by step: ``scale =
max(absmax / qmax, 2^-126)`` in fp32 (1 for an all-zero row, NaN for a row holding one),
``inv = 1 / scale``, ``q = encode(x * inv)``: fp8 saturated to the format's max, NaN to the
canonical code; int8 ``clamp(rint(x * inv), -127, 127)``, NaN to 0. Each step is one IEEE
operation in torch's eager semantics, and the two divisions are taken in fp64 so that
Inductor's Triton code rounds them as the CUDA quantizers do (``_div_rn``);
tests/test_compiled_quant.py checks the generated code against the quantizers, bit for
bit, on the device it runs on (all cases passed on an H100, 2026-12-07).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._env import getenv
from .reference.quant import MIN_SCALE as _REFERENCE_MIN_SCALE

MIN_SCALE = float(_REFERENCE_MIN_SCALE)  # the floor of a dynamic scale (2^-126)
# At decode sizes the registered op hides its quantizer already: the GEMM loads weights and
# sets up while the quantizer runs (early weight loads, programmatic launch; README).
MIN_ROWS = 64
# Longest rows taken: Inductor's persistent reductions (a row in one program) go up to 1024;
# a longer row's amax became a looped reduction that, fused with BERT-large's 4096-wide
# GELU, ran 58-62 us a launch where the GELU alone took 24.6 and the CUDA quantizer of the
# same rows about 15-20 (H100; bench/NOTES.md, "The grouped kernel's weights read in
# 16-byte pieces").
MAX_K = 1024
FP8_MAX = {torch.float8_e4m3fn: 448.0}  # formats whose torch cast encodes as the SPEC


def enabled() -> bool:
    return getenv("LOWBIT_COMPILED_QUANT") == "inductor"


def _scale(xf: Tensor, qmax: float) -> Tensor:
    amax = xf.abs().amax(dim=-1, keepdim=True)  # (NaN propagates, as the reference's)
    scale = _div_rn(amax, qmax)
    scale = torch.where(scale < MIN_SCALE, MIN_SCALE, scale)  # (NaN compares false: kept)
    # A NaN row's scale as the reference's, +qNaN (x86's reductions make the negative one)
    scale = torch.where(scale != scale, float("nan"), scale)
    return torch.where(amax == 0, 1.0, scale)


def _div_rn(a: Tensor, b: float) -> Tensor:
    """fp32 ``a / b`` correctly rounded, as the CUDA quantizers' ``__fdiv_rn``. Not ``a / b``
    in fp32: torch's CUDA division by a Python number multiplies by its rounded reciprocal,
    and Triton's fp32 ``/`` (what Inductor emits by default) is ``div.full``, within 2 ulp;
    either misses the correctly rounded scale of some rows. One correctly rounded fp64
    division rounded to fp32 is the correctly rounded fp32 quotient (53 >= 2 * 24 + 2 bits:
    double rounding is innocuous for division), subnormal results included; fp64 division
    is IEEE in torch's CUDA kernels and in Triton. torch's CUDA division by a Python number
    (448 or 127) is a multiply by the fp64 reciprocal instead: for quotients of 2^-126 and
    above (smaller ones are floored to it) that too rounds to the correctly rounded fp32
    value, since a / 448 lies about 2^-34 relative or more from every fp32 rounding
    midpoint (checked on 6.4 million values, multiples of 448 and their neighbours among
    them, against numpy's fp32 division)."""
    return (a.double() / b).float()


def _recip_rn(s: Tensor) -> Tensor:
    """fp32 1 / s correctly rounded, as ``__frcp_rn``, by the same theorem."""
    return (1.0 / s.double()).float()


def fp8_per_token(x2: Tensor, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """(q [M, K] of the fp8 ``dtype``, scale [M, 1] fp32), as ``quantize_fp8(x2, fmt,
    granularity="token", saturate=True)``."""
    qmax = FP8_MAX[dtype]
    xf = x2.float()
    scale = _scale(xf, qmax)
    y = (xf * _recip_rn(scale)).clamp(-qmax, qmax)
    y = torch.where(y != y, float("nan"), y)  # (a NaN of either sign: the canonical code)
    return y.to(dtype), scale


def int8_per_token(x2: Tensor) -> Tuple[Tensor, Tensor]:
    """(q [M, K] int8, scale [M, 1] fp32), as ``quantize_int8(x2, granularity="token",
    symmetric=True)``."""
    xf = x2.float()
    scale = _scale(xf, 127.0)
    y = torch.round(xf * _recip_rn(scale))  # (half to even)
    y = torch.where(y != y, 0.0, y).clamp(-127.0, 127.0)
    return y.to(torch.int8), scale


def linear(family_op: str, x: Tensor, state: tuple) -> Optional[Tensor]:
    """The quantized Linear's forward with the activation quantized by torch ops, or None
    where this path does not apply (see the module docstring): ``family_op`` is the layer
    op's name, ``state`` the module's arguments after x."""
    from . import ops

    weight = state[0]
    m = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if not isinstance(m, int) or m <= MIN_ROWS or x.shape[-1] > MAX_K:
        return None
    x2 = x.reshape(-1, x.shape[-1])
    out_shape = (*x.shape[:-1], weight.shape[0])
    if family_op == "fp8_linear":
        _, weight_scale, bias, act_scale = state
        if act_scale is not None or weight.dtype not in FP8_MAX:
            return None
        q, s = fp8_per_token(x2, weight.dtype)
        y = ops.OPS["fp8_scaled_mm"](q, weight, s, weight_scale, bias, x.dtype, False, "default")
        return y.reshape(out_shape)
    if family_op == "int8_linear":
        _, weight_scale, bias, act_scale, _act_zero, act_symmetric = state
        if act_scale is not None or not act_symmetric:
            return None
        q, s = int8_per_token(x2)
        y = ops.OPS["int8_gemm"](q, weight, s, weight_scale, bias, x.dtype, None, "default")
        return y.reshape(out_shape)
    return None
