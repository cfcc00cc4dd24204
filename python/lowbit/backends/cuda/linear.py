"""A quantized linear layer's forward on the CUDA kernels in one host call.

``Fp8Linear`` (W8A8) runs two ops per forward: ``quantize_fp8`` on the activations, then
``fp8_scaled_mm`` on the result. Once a forward of an input signature has run both through
the checked ops on CUDA kernels, ``fp8_linear_step`` builds the same two launches into one
``_C.Fp8LinearLaunch``: a call then allocates a workspace for the quantized activations and
their scales (one allocation instead of two or three), the output, and makes one call into
C++, which launches the quantizer and then the GEMM on the current stream. A module keeps a
launch object of its own, so its GEMM encodes the weight's TMA map once (see
``csrc/common/tensor_map_cache.h``); the registered ``fp8_linear`` op keeps one per
signature, shared by the layers of that shape. The kernels, their arguments and so the
results are the ones the two op calls give.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..._build import _C
from ...scale_layout import scale_shape
from .._device import OnDevice, device_index, raw_stream
from . import kernel_id, quantize
from .gemm import _aligned, gemm_launch
from .quantize import _rows_view, needs_amax_word, quantize_launches


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def fp8_linear_step(quant_kernel: str, gemm_kernel: str, x: torch.Tensor,
                    act_scale: Optional[torch.Tensor], q_rest: tuple, weight: torch.Tensor,
                    weight_scale: torch.Tensor, bias: Optional[torch.Tensor],
                    out_dtype: torch.dtype) -> Optional[Callable]:
    """step(x, weight, weight_scale, bias, act_scale) -> y for arguments of the signature of
    those given here: ``quantize_fp8(x, act_scale, *q_rest)`` on CUDA kernel
    ``quant_kernel``, then ``fp8_scaled_mm`` of the result with ``weight``, ``weight_scale``
    and ``bias`` on ``gemm_kernel``, into an output of shape ``(*x.shape[:-1], N)``. The
    arguments passed both ops' checks and chose these kernels. None when the inputs need what
    the fused call does not do (a copy of x's rows, scales or a bias that are not dense, an
    empty side): the caller then runs the ops."""
    fmt, granularity, group_size, block, saturate = q_rest
    q_kid, g_kid = kernel_id(quant_kernel), kernel_id(gemm_kernel)
    if q_kid is None or g_kid is None or x.dim() < 1:
        return None
    v, rows, cols, rs, cs = _rows_view(x)
    n = weight.shape[0]
    if (v.data_ptr() != x.data_ptr() or rows == 0 or cols == 0 or n == 0
            or not _aligned(weight) or not weight_scale.is_contiguous()
            or (act_scale is not None and not act_scale.is_contiguous())
            or (bias is not None and not bias.is_contiguous())):
        return None
    s_shape = scale_shape("quantize_fp8", (rows, cols), granularity, group_size, block)
    # Workspace: q [rows, cols] at 0, its scales at a 256-byte boundary, then the amax word.
    scale_offset = _round_up(rows * cols, 256)
    end = scale_offset + 4 * math.prod(s_shape)
    amax_offset = -1
    if act_scale is None and needs_amax_word(granularity, group_size, block):
        amax_offset = _round_up(end, 16)
        end = amax_offset + 4
    ws_bytes = _round_up(end, 16)
    ldb = weight.stride(0) if n > 1 else cols
    sb_ld = weight_scale.stride(0) if weight_scale.dim() == 2 else 0
    gemm = gemm_launch(g_kid, rows, n, cols, cols, ldb, s_shape,
                       s_shape[-1] if len(s_shape) == 2 else 0, tuple(weight_scale.shape), sb_ld,
                       None if bias is None else bias.dtype, out_dtype, False)
    launches = tuple(_C.Fp8LinearLaunch(q, gemm, scale_offset, amax_offset).launch
                     for q in quantize_launches(q_kid, x.dtype, (rows, cols, rs, cs), fmt,
                                                granularity, group_size, block, saturate))
    dev, idx, out_shape = x.device, device_index(x.device), (*x.shape[:-1], n)
    empty, u8 = torch.empty, torch.uint8

    def step(x, weight, weight_scale, bias, act_scale):
        ws = empty(ws_bytes, dtype=u8, device=dev)
        out = empty(out_shape, dtype=out_dtype, device=dev)
        with OnDevice(dev):
            launches[quantize.HW_CVT](
                x.data_ptr(), 0 if act_scale is None else act_scale.data_ptr(),
                weight.data_ptr(), weight_scale.data_ptr(),
                0 if bias is None else bias.data_ptr(), ws.data_ptr(), out.data_ptr(),
                raw_stream(idx))
        return out

    step.__name__ = f"{quant_kernel}+{gemm_kernel}"
    return step
