"""The dense half of a dequantize-then-GEMM product, shared by the GPU backends: the weight
already dequantized to x's dtype, multiplied by torch's GEMM (cuBLAS, or hipBLASLt on AMD)."""
from __future__ import annotations

from typing import Callable, Optional

import torch


def product(dtype: torch.dtype, bias_dtype: Optional[torch.dtype]) -> Callable:
    """fn(x, w, bias) -> x @ w.T (+ bias) in ``dtype`` (x's and w's) for a bias of
    ``bias_dtype`` (None: no bias). A bias of x's dtype is added by the GEMM; one of another
    dtype is added in fp32 to the product, then rounded to ``dtype``."""
    linear = torch.nn.functional.linear
    if bias_dtype is None or bias_dtype == dtype:
        return linear

    def with_bias_in_fp32(x, w, bias):
        return (linear(x, w).float() + bias.float()).to(dtype)

    return with_bias_in_fp32


def without_k(m: int, n: int, dtype: torch.dtype, device, bias) -> torch.Tensor:
    """The product at K = 0 (no kernel launch: the weight and its scales hold no element,
    and a kernel would read a scale past them): [m, n] of the bias rounded to ``dtype`` on
    every row, or zeros."""
    out = torch.zeros((m, n), dtype=dtype, device=device)
    return out if bias is None or m == 0 else out.copy_(bias.to(dtype).expand(m, n))
