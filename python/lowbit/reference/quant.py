"""Scaled quantization and dequantization (NumPy reference).

Every quantizer computes ``q = encode(x_fp32 * inv)`` with ``inv = 1.0f / scale``: one
correctly rounded fp32 division per scale and one fp32 multiply per element. NumPy's float32
arithmetic is IEEE single precision with round-to-nearest-even, which is exactly that.

Granularities (the scale's shape for a 2-D ``[M, K]`` input):

========== ======================================= ==========================
tensor     one scale                               ``()``
token      one per row of an activation            ``[M, 1]``
channel    one per output row of a weight          ``[N, 1]``
group      one per ``group_size`` elements of K    ``[M, K // group_size]``
block      one per ``block`` tile (128x128, 1x128) ``[ceil(M/bh), ceil(K/bw)]``
========== ======================================= ==========================

``token`` and ``group`` also accept inputs with leading dimensions (``[..., K]``); the scale
then has shape ``[..., 1]`` or ``[..., K // group_size]``.

Rules the SPEC leaves open, decided here:
- Dynamic scales have a floor: ``scale = max(absmax / qmax, MIN_SCALE)`` with
  ``MIN_SCALE = 2^-126``, the smallest normal fp32 (asymmetric: ``max((max - min) / levels,
  MIN_SCALE)``); a slice whose range is 0 (all zeros) gets scale 1, as the SPEC says. Without
  the floor, an absmax below ``qmax * 2^-128`` (about 1.3e-36 for e4m3fn) gives a scale whose
  fp32 reciprocal overflows to +Inf, and ``0 * Inf`` turns the slice's zeros into NaN. With
  it, ``inv <= 2^126`` is finite and such tiny slices keep fp8's relative precision
  (``x * 2^126`` and the dequantized ``q * 2^-126`` are exact, subnormals included). No
  scale is subnormal, so kernels that flush subnormals to zero compute the same ``inv`` and
  the same scale (an absmax that such a kernel flushes is under the floor either way).
- Static (given) scales are used as given and returned unchanged: the caller dequantizes with
  its own copy, so changing one would make ``q`` disagree with it. The ops
  (``lowbit.quantize_fp8`` ...) refuse one of magnitude below ``MIN_SCALE``, Inf or NaN (a
  negative one is allowed: its round trip holds) where they read
  values (CPU tensors; a GPU under ``LOWBIT_CHECK_SCALES=1``); these functions take any, and
  IEEE arithmetic decides what a scale below ``2^-128``, 0, negative, Inf or NaN does
  (``1 / scale`` may be +-Inf and zeros then become NaN).
- A NaN in a slice makes its dynamic scale NaN (NaN propagates through the absmax, as in
  ``torch.amax``); integer quantizers map a NaN product to the zero point.
- Padding of ragged blocks never changes a scale: pads are zeros, and every range includes 0.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .formats import fp8_format
from .fp8 import fp8_decode, fp8_encode
from .. import scale_layout as _layout
from ..scale_layout import GRANULARITIES, scale_tile

__all__ = [
    "GRANULARITIES",
    "scale_shape",
    "expand_scale",
    "MIN_SCALE",
    "dynamic_scale",
    "absmax_scale",
    "minmax_scale_zero",
    "quantize_fp8",
    "dequantize_fp8",
    "quantize_int8",
    "dequantize_int8",
]

F32 = np.float32
# The floor of a dynamic scale: the smallest normal fp32. 1 / MIN_SCALE = 2^126 is finite.
MIN_SCALE = F32(2.0 ** -126)


def scale_shape(shape, granularity: str, group_size: int = 128, block=(128, 128)):
    """The shape of the scale tensor for an input of ``shape`` (``lowbit.scale_layout``)."""
    return _layout.scale_shape("lowbit.reference", shape, granularity, group_size, block)


def _tiles_view(x: np.ndarray, tile):
    """x as [R, th, C, tw] (zero-padded to whole tiles) for per-tile reductions; a tile
    side of 0 is the whole extent (``scale_layout.quant_tile``)."""
    x2 = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
    rows, k = x2.shape
    th, tw = tile[0] or max(rows, 1), tile[1] or max(k, 1)
    rp, kp = -(-rows // th) * th, -(-k // tw) * tw
    if (rp, kp) != (rows, k):
        x2 = np.pad(x2, ((0, rp - rows), (0, kp - k)))
    return x2.reshape(rp // th, th, kp // tw, tw)


def _reduce(x: np.ndarray, granularity, group_size, block, fn) -> np.ndarray:
    """Apply a NaN-propagating reduction per scale tile; result has scale_shape's shape."""
    out_shape = scale_shape(x.shape, granularity, group_size, block)
    if granularity == "tensor":
        return np.asarray(fn(x.reshape(-1)) if x.size else F32(0), dtype=F32).reshape(())
    if x.size == 0:
        return np.zeros(out_shape, dtype=F32)
    tiles = _tiles_view(x, _layout.quant_tile(granularity, group_size, block))
    return fn(tiles, axis=(1, 3)).astype(F32).reshape(out_shape)


def expand_scale(scale: np.ndarray, shape) -> np.ndarray:
    """Broadcast a scale of any SPEC granularity to the full input ``shape`` (float32).

    The granularity is read off the scale's shape by ``scale_layout.scale_tile``: ``()`` per
    tensor; ``[..., 1]`` per row; ``[..., K // G]`` per group; ``[..., ceil(K/128)]`` per
    1x128 block; ``[ceil(M/128), ceil(K/128)]`` per 128x128 block.
    """
    scale = np.asarray(scale, dtype=F32)
    shape = tuple(shape)
    tile_rows, tile_cols = scale_tile(scale.shape, shape)
    if tile_rows == 0:
        return np.broadcast_to(scale, shape)
    k = shape[-1]
    full = np.repeat(scale, tile_cols or max(k, 1), axis=-1)[..., :k]
    if tile_rows == 1:
        return full
    return np.repeat(full, tile_rows, axis=0)[: shape[0]]


def _absmax(a, axis=None):
    return np.max(np.abs(a), axis=axis)


def dynamic_scale(extent: np.ndarray, levels: float) -> np.ndarray:
    """``max(extent / levels, MIN_SCALE)`` in fp32 (one correctly rounded division), and 1
    where ``extent`` is 0; NaN stays NaN. ``extent`` is an absmax or a max - min range."""
    extent = np.asarray(extent, F32)
    scale = (extent / F32(levels)).astype(F32)
    scale = np.where(scale < MIN_SCALE, MIN_SCALE, scale)  # NaN compares false: kept
    return np.where(extent == 0, F32(1), scale).astype(F32)


def absmax_scale(x: np.ndarray, qmax: float, granularity: str, group_size=128, block=(128, 128)):
    """Dynamic symmetric scale: ``max(absmax / qmax, MIN_SCALE)`` in fp32; an all-zero slice
    gets 1."""
    return dynamic_scale(_reduce(np.asarray(x, F32), granularity, group_size, block, _absmax),
                         qmax)


def minmax_scale_zero(x, levels: int, zero_lo: int, zero_hi: int, zero_offset: float,
                      granularity: str, group_size=128, block=(128, 128)):
    """Dynamic asymmetric scale and zero point: the range is widened to include 0,
    ``scale = max((max - min) / levels, MIN_SCALE)`` (a zero range gives 1),
    ``zero = clamp(rint(zero_offset - min/scale))``."""
    x = np.asarray(x, F32)
    lo = np.minimum(_reduce(x, granularity, group_size, block, np.min), F32(0))
    hi = np.maximum(_reduce(x, granularity, group_size, block, np.max), F32(0))
    with np.errstate(over="ignore"):  # a range past fp32's largest value: an infinite scale
        scale = dynamic_scale((hi - lo).astype(F32), levels)
    with np.errstate(invalid="ignore"):
        zero = np.rint(F32(zero_offset) - (lo / scale).astype(F32))
        zero = np.clip(np.nan_to_num(zero, nan=0.0), zero_lo, zero_hi).astype(np.int32)
    return scale, zero


def _scaled(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """x * (1 / scale): one fp32 division per scale, one fp32 multiply per element."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = (F32(1) / np.asarray(scale, F32)).astype(F32)
        return (np.asarray(x, F32) * expand_scale(inv, x.shape)).astype(F32)


def _rint_int(v: np.ndarray, lo: int, hi: int, nan_as: float = 0.0) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        r = np.rint(np.nan_to_num(v, nan=nan_as, posinf=np.inf, neginf=-np.inf))
        return np.clip(r, lo, hi)


def quantize_fp8(x, scale: Optional[np.ndarray] = None, *, fmt="e4m3fn", granularity="tensor",
                 group_size=128, block=(128, 128), saturate=True):
    """-> (uint8 codes, fp32 scale). ``scale=None`` computes ``max(absmax / fmt max,
    MIN_SCALE)`` (1 for an all-zero slice); a given scale is used and returned as given."""
    x = np.asarray(x, F32)
    if scale is None:
        scale = absmax_scale(x, fp8_format(fmt).max_value, granularity, group_size, block)
    scale = np.asarray(scale, F32)
    return fp8_encode(_scaled(x, scale), fmt, saturate), scale


def dequantize_fp8(codes, scale, *, fmt="e4m3fn") -> np.ndarray:
    """decode(q) * scale in fp32."""
    v = fp8_decode(np.asarray(codes, np.uint8), fmt)
    return (v * expand_scale(scale, v.shape)).astype(F32)


def quantize_int8(x, scale=None, zero=None, *, granularity="token", group_size=128,
                  block=(128, 128), symmetric=True):
    """-> (int8 q, fp32 scale, int32 zero or None).

    Symmetric: ``q = clamp(rint(x * inv), -127, 127)``. Asymmetric:
    ``scale = (max - min) / 255``, ``zero = clamp(rint(-128 - min / scale), -128, 127)``,
    ``q = clamp(rint(x * inv) + zero, -128, 127)``.
    """
    x = np.asarray(x, F32)
    if symmetric:
        if scale is None:
            scale = absmax_scale(x, 127.0, granularity, group_size, block)
        scale = np.asarray(scale, F32)
        q = _rint_int(_scaled(x, scale), -127, 127)
        return q.astype(np.int8), scale, None
    if scale is None:
        scale, zero = minmax_scale_zero(x, 255, -128, 127, -128.0, granularity, group_size, block)
    elif zero is None:
        raise ValueError("zero must be given with a static scale when symmetric=False")
    scale = np.asarray(scale, F32)
    zero = np.asarray(zero, np.int32)
    z = expand_scale(zero.astype(F32), x.shape)
    with np.errstate(invalid="ignore"):
        r = np.rint(_scaled(x, scale))
        r = np.where(np.isnan(r), F32(0), r)
        q = np.clip(r + z, -128, 127)
    return q.astype(np.int8), scale, zero


def dequantize_int8(q, scale, zero=None) -> np.ndarray:
    """(q - zero) * scale in fp32 (q - zero is an exact small integer)."""
    q = np.asarray(q).astype(F32)
    if zero is not None:
        q = q - expand_scale(np.asarray(zero).astype(F32), q.shape)
    return (q * expand_scale(scale, q.shape)).astype(F32)


def check_group(op: str, k: int, group_size: int, whole_k: bool = False):
    """``whole_k``: G = K (one group per row, an int4 weight per channel) is allowed."""
    if not (whole_k and k and group_size == k and k % 32 == 0):
        _layout.check_group_size(op, group_size)
    if k % group_size:
        raise ValueError(f"K ({k}) must be divisible by group_size ({group_size})")
