"""FP8 quantization and dequantization in Triton, bit-exact with ``lowbit.reference``.

    q = encode(x_fp32 * inv),   inv = 1 / scale (one correctly rounded fp32 division)
    scale = max(absmax / fmt_max, 2^-126)    (dynamic; correctly rounded; all zeros -> 1;
                                              NaN propagates)
    x' = decode(q) * scale      (dequantize; rounded once to the output dtype)

Formats: e4m3fn, e5m2, e4m3fnuz; ``saturate`` as in the SPEC. The kernels are the
quantizer skeleton of ``_common`` (shared with INT8) with the fp8 codec
(``CODEC = FP8``). Granularities and kernels:

=================== ===================================== =================================
tensor, static      ``_quant_tensor_kernel``              elementwise, scale read in-kernel
tensor, dynamic     ``_extent_kernel`` + the above        atomic max of |x| bits, no sync
token / channel     ``_quant_segment_kernel``             one segment = one row
group, block 1x128  ``_quant_segment_kernel``             one segment = G (128) columns
block 128x128       ``_quant_block2d_kernel``             one program per tile
=================== ===================================== =================================

Why integer code: the encoder is the reference's bit algorithm (round to nearest even on the
fp32 significand, subnormals, saturation, NaN/Inf/-0 rules) written on int32 lanes, so it
gives the same bits on every GPU and under ``TRITON_INTERPRET=1``. The hardware cast
(``cvt.rn.satfinite.e4m3x2.f32``) covers only e4m3fn with saturation; it matched the
integer encoder on all 2^32 fp32 inputs on an H100, so it is used by default on sm_90 (twice
the bandwidth: 2.75 vs 1.40 TB/s at 8192 x 8192 bf16); ``LOWBIT_TRITON_FP8_HWCAST`` = 0 / 1
turns it off / on.

Exactness details that the code relies on:
- ``tl.math.div_rn`` is IEEE division; Triton's ``/`` on fp32 is an approximation on GPU.
- ``x * inv`` feeds only a bitcast, so no FMA contraction can absorb it.
- bf16 inputs are widened by shifting their bits (exact for subnormals and NaN payloads,
  which the interpreter's own bf16 conversion is not), and bf16 outputs are rounded to
  nearest even with integer code for the same reason.
- The absmax is a max over ``bits & 0x7FFFFFFF`` as integers: the order of non-negative
  floats, with any NaN above +Inf, so a NaN anywhere makes the scale NaN (``torch.amax``).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import torch

from ._common import FP8, FP8_DTYPES, FP8_FORMAT_OF, FP8_FORMATS, capability, device_index
from ._common import _dequant_kernel as _fp8_dequant_kernel  # noqa: F401 (the tests' probe)
from ._common import dequantize, f32_to_bf16_bits, fp8_decode, fp8_encode, quantize
from ._common import quantize_launcher
from ._common import interpreting as _interpreting

__all__ = ["quantize_fp8", "quantize_fp8_launcher", "dequantize_fp8", "fp8_encode",
           "fp8_decode", "fmt_constants", "f32_to_bf16_bits"]


# ----------------------------------------------------------------------------- host side
_FMT_CONSTS = {}


def fmt_constants(fmt: str) -> dict:
    """The constexpr arguments of fp8_encode / fp8_decode for ``fmt``."""
    c = _FMT_CONSTS.get(fmt)
    if c is None:
        f = FP8_FORMATS[fmt]
        c = dict(MBITS=f.mbits, BIAS=f.bias, MAX_CODE=f.max_code, NAN_CODE=f.nan_code,
                 INF_CODE=f.inf_code, NEG_ZERO=f.negative_zero, QMAX=float(f.max_value),
                 FMT_ID=f.fmt_id, SUB_UNIT=float(2.0 ** (1 - f.bias - f.mbits)))
        _FMT_CONSTS[fmt] = c
    return c


def _hw_cast_wanted(fmt: str, saturate: bool, device: torch.device,
                    hw_cast: Optional[bool]) -> bool:
    """The hardware e4m3fn cast (cvt.rn.satfinite) replaces the integer encoder where it is
    proven identical: on sm_90 it matched the integer encoder on all 2^32 fp32 patterns (and
    the reference on all bf16 / fp16 patterns) on an H100, so it is on by default there.
    LOWBIT_TRITON_FP8_HWCAST=0 turns it off; =1 also allows it on sm_89 (unverified). Never
    on AMD GPUs (torch calls them "cuda" too), whose e4m3fn conversion is not the one
    proven: the integer encoder runs there."""
    if fmt != "e4m3fn" or not saturate or device.type != "cuda" or _interpreting() or \
            torch.version.hip is not None:
        return False
    if hw_cast is None:
        env = os.environ.get("LOWBIT_TRITON_FP8_HWCAST")
        if env == "0":
            return False
        cap = capability(device_index(device))
        return cap >= (8, 9) if env == "1" else cap == (9, 0)
    if not hw_cast:
        return False
    return capability(device_index(device)) >= (8, 9)


def quantize_fp8(x: torch.Tensor, scale: Optional[torch.Tensor], fmt: str = "e4m3fn",
                 tile: Tuple[int, int] = (0, 0), scale_shape: Sequence[int] = (),
                 saturate: bool = True,
                 hw_cast: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (q of torch's fp8 dtype of ``fmt``, fp32 scale of ``scale_shape``), one scale per
    ``tile`` = (rows, cols) of x viewed as [rows, K], 0 standing for the whole extent:
    (0, 0) per tensor, (1, 0) per row, (1, G) per group or 1 x 128 block, (128, 128) per
    weight block (lowbit.scale_layout.quant_tile and scale_shape give both; the default is
    per tensor). Arguments already validated; ``hw_cast`` overrides
    ``LOWBIT_TRITON_FP8_HWCAST``."""
    q = torch.empty(x.shape, dtype=FP8_DTYPES[fmt], device=x.device)
    s, _ = quantize(x, scale, None, q.view(torch.uint8), _encoder(fmt, saturate, x, hw_cast),
                    tile, scale_shape)
    return q, s


def _encoder(fmt: str, saturate: bool, x: torch.Tensor, hw_cast: Optional[bool]) -> dict:
    fc = fmt_constants(fmt)
    return dict(CODEC=FP8, QMAX=fc["QMAX"], MBITS=fc["MBITS"], BIAS=fc["BIAS"],
                MAX_CODE=fc["MAX_CODE"], NAN_CODE=fc["NAN_CODE"], INF_CODE=fc["INF_CODE"],
                NEG_ZERO=fc["NEG_ZERO"], SATURATE=bool(saturate),
                HW_CAST=_hw_cast_wanted(fmt, saturate, x.device, hw_cast))


def quantize_fp8_launcher(x: torch.Tensor, scale: Optional[torch.Tensor], fmt: str,
                          tile: Tuple[int, int], scale_shape: Sequence[int], saturate: bool,
                          hw_cast: Optional[bool] = None):
    """launch(x, scale) -> (q, scale): ``quantize_fp8`` for later arguments of the signature
    of x and scale, its kernels bound once (_common.quantize_launcher);
    ``LOWBIT_TRITON_FP8_HWCAST`` is read here, once."""
    launch = quantize_launcher(x, scale, None, FP8_DTYPES[fmt],
                               _encoder(fmt, saturate, x, hw_cast), tile, scale_shape)

    def quantize_fp8(x, scale):
        q, s, _ = launch(x, scale, None)
        return q, s

    return quantize_fp8


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype,
                   tile: Tuple[int, int]) -> torch.Tensor:
    """decode(q) * scale -> out_dtype, each scale entry covering ``tile`` of q
    (lowbit.scale_layout.scale_tile); arguments validated by lowbit.ops."""
    fc = fmt_constants(FP8_FORMAT_OF[q.dtype])
    dec = dict(CODEC=FP8, MBITS=fc["MBITS"], BIAS=fc["BIAS"], FMT_ID=fc["FMT_ID"],
               SUB_UNIT=fc["SUB_UNIT"])
    return dequantize(q.view(torch.uint8), scale, None, out_dtype, tile, dec)
