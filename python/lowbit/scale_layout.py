"""Scale layouts: which part of an input each entry of a scale covers.

The one owner of the rule, in both directions:
- a quantizer's granularity -> the scale's shape (``scale_shape``) and the tile one scale
  covers (``quant_tile``);
- a scale's shape -> its tile (``scale_tile``), for dequantization and the GEMMs, which take
  scales without a granularity argument.
The argument checks, the NumPy reference, the CUDA backend and the Triton backend all call
these; the compiled kernels take the result as ``(tile_rows, tile_cols, ld)``, 0 standing
for the whole extent. Plain Python (no NumPy, no torch), so every layer can import it.
"""
from __future__ import annotations

import numbers
import operator
from typing import Sequence, Tuple

__all__ = ["GROUP_SIZES", "BLOCK", "GRANULARITIES", "check_group_size", "int4_group_size",
           "quant_tile", "scale_shape", "scale_tile", "scale_ld"]

GROUP_SIZES = (32, 64, 128)
BLOCK = 128  # the side of a weight block and the width of an activation block
GRANULARITIES = ("tensor", "token", "channel", "group", "block")
BLOCKS = ((128, 128), (1, 128))


def check_group_size(op: str, group_size, name: str = "group_size", *, k=None,
                     k_what: str = "K", whole_k: bool = False) -> None:
    """The one group-size check: G in GROUP_SIZES and, when the caller passes the length
    ``k`` it groups (worded as ``k_what``), G divides it. ``whole_k``: G = k, one group per
    row (an int4 weight per channel), is allowed too where k is a multiple of 32, as every
    group size is: the packing, the kernels' 16-element K steps and their vector loads all
    rest on it."""
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int; got {type(group_size).__name__} "
                        f"{group_size!r}")
    if group_size not in GROUP_SIZES and not (whole_k and k and group_size == k and k % 32 == 0):
        also = f" or {k_what} (per channel, a multiple of 32)" if whole_k else ""
        raise ValueError(f"{op}: {name} must be one of {GROUP_SIZES}{also}; got {group_size}")
    if k is not None and k % group_size:
        raise ValueError(f"{op}: {k_what} = {k} must be divisible by {name} = {group_size}")


def int4_group_size(group_size: int, k: int) -> int:
    """An int4 weight's group size as held: -1 means per channel, one group of the whole
    row, held as G = K (scales [N, 1]); any other value is returned as given (checked by
    check_group_size(..., whole_k=True))."""
    return k if group_size == -1 else group_size


def _block(op: str, block) -> Tuple[int, int]:
    try:
        b = tuple(operator.index(v) for v in block)
    except TypeError:  # not a sequence of ints (None, a string, floats)
        raise TypeError(f"{op}: block must be (128, 128) or (1, 128); got {block!r}") from None
    if b not in BLOCKS:
        raise ValueError(f"{op}: block must be (128, 128) or (1, 128); got {b}")
    return b


def quant_tile(granularity: str, group_size: int = 128, block=(128, 128)) -> Tuple[int, int]:
    """(tile_rows, tile_cols) of the input (viewed as [rows, K]) that one scale of a
    quantizer with this granularity covers; 0 stands for the whole extent."""
    if granularity == "tensor":
        return 0, 0
    if granularity in ("token", "channel"):
        return 1, 0
    if granularity == "group":
        return 1, int(group_size)
    if granularity == "block":
        return tuple(int(v) for v in block)
    raise ValueError(f"granularity must be one of {GRANULARITIES}; got {granularity!r}")


def scale_shape(op: str, shape: Sequence[int], granularity: str, group_size: int = 128,
                block=(128, 128)) -> Tuple[int, ...]:
    """The shape of a quantizer's scale for an input of ``shape``, after validating the
    granularity against it (ValueErrors name ``op`` and the argument)."""
    shape = tuple(shape)
    if granularity not in GRANULARITIES:
        raise ValueError(f"{op}: granularity must be one of {GRANULARITIES}; got {granularity!r}")
    if granularity == "tensor":
        return ()
    if not shape:
        raise ValueError(
            f"{op}: granularity={granularity!r} needs x with at least 1 dimension; got 0-D")
    lead, k = shape[:-1], shape[-1]
    if granularity in ("token", "channel"):
        if granularity == "channel" and len(shape) != 2:
            raise ValueError(f"{op}: x must be 2-D [N, K] for granularity='channel'; "
                             f"got shape {shape}")
        return lead + (1,)
    if granularity == "group":
        check_group_size(op, group_size, k=k, k_what="K = x.shape[-1]")
        return lead + (k // group_size,)
    if len(shape) != 2:
        raise ValueError(f"{op}: x must be 2-D [M, K] for granularity='block'; got shape {shape}")
    rows, cols = _block(op, block)
    return (-(-shape[0] // rows), -(-k // cols))


def scale_ld(scale_shape: Sequence[int]) -> int:
    """The row stride, in elements, of a dense scale of this shape (0 for a 0-D scale)."""
    return int(scale_shape[-1]) if len(scale_shape) else 0


def scale_tile(scale_shape: Sequence[int], shape: Sequence[int]) -> Tuple[int, int]:
    """(tile_rows, tile_cols): the tile of the input, viewed as [rows, K] with its leading
    dimensions merged, that one scale entry covers; 0 stands for the whole extent.

    ==================================== ===================== ==========================
    scale shape                          layout                tile
    ==================================== ===================== ==========================
    ``()``                               per tensor            (0, 0)
    ``[..., 1]``                         per row               (1, 0)
    ``[..., K // G]``, G in 32, 64, 128  per group             (1, G)
    ``[..., ceil(K / 128)]``             per 1 x 128 block     (1, 128)
    ``[ceil(M / 128), ceil(K / 128)]``   per 128 x 128 block   (128, 128), or (128, 0)
                                         (2-D inputs)          when K <= 128
    ==================================== ===================== ==========================

    The last dimension is read first, in the table's order (``[..., 1]`` is one scale per
    row even where K <= 128; ``K // G`` wins over ``ceil(K / 128)`` where both match). Then
    leading dimensions equal to the input's mean one scale row per input row; otherwise
    only the 128 x 128 block shape fits. Raises ValueError when no layout fits.
    """
    sshape = tuple(scale_shape)
    shape = tuple(shape)
    if not sshape:
        return 0, 0
    if len(sshape) == len(shape):
        k, sk = shape[-1], sshape[-1]
        kb = -(-k // BLOCK)
        cols = -1
        if sk == 1:
            cols = 0
        elif sk and k % sk == 0 and k // sk in GROUP_SIZES:
            cols = k // sk
        elif sk == kb:
            cols = BLOCK
        if cols >= 0:
            if sshape[:-1] == shape[:-1]:
                return 1, cols
            # Exactly the block shape, never a mix: a [1, M] scale (a transposed per-row
            # scale) must not pass as 128-row x group tiles.
            if len(shape) == 2 and sshape == (-(-shape[0] // BLOCK), kb):
                return BLOCK, cols
    raise ValueError(f"scale of shape {sshape} does not fit an input of shape {shape}")
