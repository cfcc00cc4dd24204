"""int8_mm and int8_gemm on the CUDA kernels of ``csrc/int8/`` (names, M ranges and priorities:
``KERNELS`` in this package's ``__init__``; what each kernel does: ``csrc/int8/int8_gemm.h``).

They are the FP8 GEMMs' templates instantiated with s8 operands, accumulating exactly in
int32: on sm_90a ``sm90_int8_gemm_wgmma`` (TMA + s8 wgmma, persistent) for M above 64 and
``sm90_int8_gemm_swapab`` (the weight as wgmma's 64-row operand, K split over a cluster,
int32 partials added in a fixed order; at M = 33..64 the tokens may take that operand and
the weight tile be 112 or 96 rows) for 1 <= M <= 64; on every arch from sm_80 (the A100
path) the mma.sync IMMA kernels ``sm80_int8_gemm_smallm`` (split-K inside a CTA, M <= 64)
and ``sm80_int8_gemm_mma`` (128 x 128 tiles, any M).

``int8_mm`` stores the int32 accumulator itself. ``int8_gemm`` converts it to fp32 once in
the epilogue, after subtracting ``a_zero[m] * sum_k b[n, k]`` for asymmetric activations (in
64-bit integers); the row sums of b are computed on the GPU per call here (one reduction
kernel); a module whose weight does not change passes them precomputed
(``int8_gemm_step``). The kernels need K a multiple of 16 and 16-byte aligned K-contiguous
rows (the Triton kernels take the rest), and K below 131072, where an int32 accumulator
could overflow.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from .._device import OnDevice, raw_stream
from . import DTYPE_CODE, kernel_id, register
from .gemm import kernel_supports, row_stride

__all__ = ["K_MAX", "int8_gemm_launch", "row_sums"]

K_MAX = 131072  # from here on an int32 accumulator may overflow (128 * 128 * K >= 2^31)


def int8_gemm_launch(kid: int, m: int, n: int, k: int, lda: int, ldb: int, a_scale_row: bool,
                     b_scale_row: bool, zero_mode: int, bias_dtype, out_dtype):
    """The ``_C.Int8GemmLaunch`` of kernel ``kid`` for one signature (output [m, n]
    contiguous); ``out_dtype`` None: the int32 accumulator (int8_mm); ``zero_mode`` 0: no
    zero points, 1: one, 2: one per row."""
    from ..._build import _C

    return _C.Int8GemmLaunch(kid, m, n, k, lda, ldb, a_scale_row, b_scale_row, zero_mode,
                             DTYPE_CODE[bias_dtype] if bias_dtype is not None else 0,
                             -1 if out_dtype is None else DTYPE_CODE[out_dtype], n)


def row_sums(b: torch.Tensor) -> torch.Tensor:
    """sum_k b[n, k] as int32 [N] (exact: |sum| <= 128 K < 2^31 for K < K_MAX)."""
    return b.sum(dim=1, dtype=torch.int32)


class _Native:
    """An ``Int8GemmLaunch`` as lowbit/_native.py hands it over: ``native()`` is the entry of
    the op it serves (int8_mm's pointers differ from int8_gemm's)."""

    __slots__ = ("launch", "mm")

    def __init__(self, launch, mm: bool):
        self.launch, self.mm = launch, mm

    def native(self):
        return self.launch.native_mm() if self.mm else self.launch.native()


def _per_row(t: Optional[torch.Tensor]) -> bool:
    return t is not None and t.dim() == 2


def _make(op: str):
    def make(name: str, m_range, variant):
        kid = kernel_id(name)
        base = kernel_supports(name, m_range, torch.int8)

        def supports(a, b, *rest) -> Optional[str]:
            why = base(a, b)
            if why is None and a.shape[1] >= K_MAX:
                why = f"K = {a.shape[1]} >= {K_MAX} may overflow the int32 accumulator"
            return why

        def launcher(a, b, a_scale=None, b_scale=None, bias=None, out_dtype=None, a_zero=None):
            # Everything but the pointers is a function of the signature: a remembered choice
            # keeps this function and each call repeats the allocation and the launch only.
            m, k = a.shape
            n = b.shape[0]
            dev, idx = a.device, a.device.index
            zero_mode = 0 if a_zero is None else 2 if a_zero.dim() == 2 else 1
            params = (kid, m, n, k, row_stride(a), row_stride(b), _per_row(a_scale),
                      _per_row(b_scale), zero_mode, None if bias is None else bias.dtype,
                      out_dtype)
            launch = int8_gemm_launch(*params).launch
            out_type = torch.int32 if out_dtype is None else out_dtype
            empty = torch.empty

            def prepared(a, b, a_scale=None, b_scale=None, bias=None, out_dtype=None,
                         a_zero=None):
                out = empty((m, n), dtype=out_type, device=dev)
                sums = None if a_zero is None else row_sums(b)
                with OnDevice(dev):
                    launch(a.data_ptr(), b.data_ptr(),
                           0 if a_scale is None else a_scale.data_ptr(),
                           0 if b_scale is None else b_scale.data_ptr(),
                           0 if bias is None else bias.data_ptr(),
                           0 if a_zero is None else a_zero.data_ptr(),
                           0 if sums is None else sums.data_ptr(), out.data_ptr(),
                           raw_stream(idx))
                return out

            prepared.__name__ = name
            if a_zero is None:
                # native() for lowbit/_native.py (see gemm.py). With zero points, the row sums
                # of b are one more kernel per call: no single launch, no plan.
                prepared.native = functools.cache(
                    lambda: (_Native(int8_gemm_launch(*params), op == "int8_mm"), 0))
            return prepared

        def dense(args):
            # The kernels index per-row scales, zero points and the bias by m and n alone.
            return tuple(t.contiguous() if isinstance(t, torch.Tensor) and i >= 2 else t
                         for i, t in enumerate(args))

        def run(*args):
            a, b = args[0], args[1]
            m, n = a.shape[0], b.shape[0]
            if m == 0 or n == 0:
                dtype = torch.int32 if op == "int8_mm" else args[5]
                return torch.empty((m, n), dtype=dtype, device=a.device)
            args = dense(args)
            return launcher(*args)(*args)

        def prepare(*args):
            a, b = args[0], args[1]
            if a.shape[0] == 0 or b.shape[0] == 0 or any(
                    x is not y for x, y in zip(dense(args), args)):
                return run
            return launcher(*args)

        run.__name__ = name
        return run, supports, prepare
    return make


register("int8_mm", "int8_gemm", _make("int8_mm"))
register("int8_gemm", "int8_gemm", _make("int8_gemm"))
