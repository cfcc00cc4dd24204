"""Reference GEMMs. Operands follow the SPEC: a [M, K] row-major, b [N, K] (nn.Linear.weight
layout), result [M, N]. Results are float32 (the caller rounds to the output dtype), except
int8_mm, which is exact int32.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .fp8 import fp8_decode
from .int4 import dequantize_int4
from .quant import expand_scale

__all__ = ["int8_mm", "int8_gemm", "fp8_scaled_mm", "w4a16_gemm", "w8a16_gemm"]

F32 = np.float32


def int8_mm(a, b) -> np.ndarray:
    """Exact int8 x int8 -> int32 product ``a @ b.T``.

    Summed in float64 through BLAS, which is exact here: every product has magnitude at most
    128 * 128 = 2^14, so for K < 131072 = 2^17 every partial sum is an integer below 2^31,
    far inside the 2^53 range in which float64 represents integers exactly. Any summation
    order BLAS picks (blocking, FMA) therefore gives the same, exact, integer.
    """
    a = np.asarray(a, np.int8)
    b = np.asarray(b, np.int8)
    if a.shape[1] >= 131072:
        raise ValueError(f"int8_mm is exact only for K < 131072; got K = {a.shape[1]}")
    acc = a.astype(np.float64) @ b.astype(np.float64).T
    return acc.astype(np.int64).astype(np.int32)


def int8_gemm(a, b, a_scale, b_scale, bias=None, a_zero=None) -> np.ndarray:
    """``(acc - a_zero[m] * sum_k b[n, k]) * a_scale[m] * b_scale[n] + bias[n]`` in fp32.

    The accumulator is the exact integer product; the epilogue is three fp32 operations in
    that order (multiply, multiply, add), each correctly rounded.
    """
    acc = int8_mm(a, b).astype(np.int64)
    m, n = acc.shape
    if a_zero is not None:
        z = np.broadcast_to(np.asarray(a_zero, np.int64).reshape(-1, 1), (m, 1))
        colsum = np.asarray(b, np.int64).sum(axis=1)  # [N]
        acc = acc - z * colsum[None, :]
    out = acc.astype(F32)
    out = out * np.broadcast_to(np.asarray(a_scale, F32).reshape(-1, 1), (m, 1))
    out = (out * np.asarray(b_scale, F32).reshape(1, -1)).astype(F32)
    if bias is not None:
        out = (out + np.asarray(bias, F32).reshape(1, -1)).astype(F32)
    return out.astype(F32)


def fp8_scaled_mm(a_codes, b_codes, a_scale, b_scale, bias=None, *, a_fmt="e4m3fn",
                  b_fmt="e4m3fn") -> np.ndarray:
    """``sum_k a[m, k] sa(m, k) * b[n, k] sb(n, k) + bias[n]``, accumulated in float64.

    Scales may be per tensor (``()``), per row (``[M, 1]``, ``[N, 1]``) or per 128-block
    (``[M, ceil(K/128)]`` for a, ``[ceil(N/128), ceil(K/128)]`` for b); expanding them to
    full size and multiplying elementwise is the definition for all of them.
    """
    a = fp8_decode(np.asarray(a_codes, np.uint8), a_fmt).astype(np.float64)
    b = fp8_decode(np.asarray(b_codes, np.uint8), b_fmt).astype(np.float64)
    a = a * expand_scale(a_scale, a.shape)
    b = b * expand_scale(b_scale, b.shape)
    out = a @ b.T
    if bias is not None:
        out = out + np.asarray(bias, np.float64).reshape(1, -1)
    return out


def w4a16_gemm(x, qweight, scales, zeros: Optional[np.ndarray], group_size: int,
               bias=None, perm=None) -> np.ndarray:
    """``x[:, perm] @ dequant(W).T + bias`` accumulated in float64 (x given as float32)."""
    w = dequantize_int4(qweight, scales, zeros, group_size).astype(np.float64)
    x = np.asarray(x, np.float64)
    if perm is not None:
        x = x[:, np.asarray(perm)]
    out = x @ w.T
    if bias is not None:
        out = out + np.asarray(bias, np.float64).reshape(1, -1)
    return out


def w8a16_gemm(x, w, w_scale, bias=None) -> np.ndarray:
    """``x @ (w * w_scale).T + bias`` accumulated in float64 (x given as float32): ``w``
    int8 [N, K], ``w_scale`` [N, 1] per channel or [N, K // G] per group."""
    w = np.asarray(w, np.int8)
    wd = w.astype(np.float64) * expand_scale(w_scale, w.shape).astype(np.float64)
    out = np.asarray(x, np.float64) @ wd.T
    if bias is not None:
        out = out + np.asarray(bias, np.float64).reshape(1, -1)
    return out
