"""INT8 quantization and dequantization in Triton, bit-exact with ``lowbit.reference``.

    symmetric:   q = clamp(rint(x_fp32 * inv), -127, 127)
                 scale = max(absmax / 127, 2^-126)
    asymmetric:  q = clamp(rint(x_fp32 * inv) + zero, -128, 127)
                 scale = max((max - min) / 255, 2^-126), over the range widened to 0
                 zero = clamp(rint(-128 - min / scale), -128, 127)   (int32)
    inv = 1 / scale (one correctly rounded fp32 division); an all-zero slice gets scale 1
    (zero -128); a NaN in a slice makes its dynamic scale NaN (zero 0); a NaN product
    gives the zero point, +-Inf saturates.
    x' = (q - zero) * scale     (dequantize; rounded once to the output dtype)

The kernels are the FP8 quantizers' (``_common``: the per-tensor extent + elementwise
pair, the per-row / per-group / 1x128 segment kernel, the 128x128 block kernel), with the
INT8 codec: every granularity of the reference's ``quantize_int8``, static or dynamic,
the min and max found in the same pass as the encode wherever the slice fits in
registers (all but per tensor, which needs a whole-tensor reduction first, and the 128x128
blocks and rows over 8192, whose second pass hits L2).

Exactness: ``rint`` is done in fp32 arithmetic (``_common.rint_f32``), and the INT8
launches compile with ``enable_fp_fusion=False`` so that ``x * inv`` is rounded before that
add; the min and max are integer reductions of order keys, so NaN propagates whatever the
hardware's float min/max do.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ._common import INT8, dequantize, int8_codec, quantize, quantize_launcher

__all__ = ["quantize_int8", "quantize_int8_launcher", "dequantize_int8"]

_DEC = dict(CODEC=INT8, MBITS=0, BIAS=0, FMT_ID=0, SUB_UNIT=0.0)


def quantize_int8(x: torch.Tensor, scale: Optional[torch.Tensor] = None,
                  zero: Optional[torch.Tensor] = None, symmetric: bool = True,
                  tile: Tuple[int, int] = (1, 0), scale_shape: Sequence[int] = (),
                  ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """-> (int8 q of x's shape, fp32 scale and int32 zero point (None when symmetric) of
    ``scale_shape``), one scale per ``tile`` of x viewed as [rows, K] (0: the whole extent;
    lowbit.scale_layout.quant_tile and scale_shape give both). ``scale`` None: dynamic;
    a static asymmetric scale comes with its ``zero``. Arguments validated by lowbit.ops."""
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    s, z = quantize(x, scale, None if symmetric else zero, q, int8_codec(symmetric), tile,
                    scale_shape)
    return q, s, z


def quantize_int8_launcher(x: torch.Tensor, scale: Optional[torch.Tensor],
                           zero: Optional[torch.Tensor], symmetric: bool,
                           tile: Tuple[int, int], scale_shape: Sequence[int]):
    """launch(x, scale, zero) -> (q, scale, zero or None): ``quantize_int8`` for later
    arguments of the signature of these, its kernels bound once
    (_common.quantize_launcher)."""
    launch = quantize_launcher(x, scale, None if symmetric else zero, torch.int8,
                               int8_codec(symmetric), tile, scale_shape)
    if symmetric:
        return lambda x, scale, zero: launch(x, scale, None)
    return launch


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor],
                    out_dtype: torch.dtype, tile: Tuple[int, int]) -> torch.Tensor:
    """(q - zero) * scale -> out_dtype, each scale (and zero) entry covering ``tile`` of q
    (lowbit.scale_layout.scale_tile); arguments validated by lowbit.ops."""
    return dequantize(q, scale, zero, out_dtype, tile, _DEC)
