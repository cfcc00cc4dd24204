"""Which part of an input each entry of a scale covers, read off the scale's shape.

Dequantization and the GEMMs take scales without a granularity argument, so the layout is
read from the shapes alone. This is the one reading: the argument checks
(``lowbit._checks.scale_for``), the NumPy reference (``expand_scale``), the CUDA backend and
the Triton kernels all call ``scale_tile``. Plain Python (no NumPy, no torch), so every
layer can import it.
"""
from __future__ import annotations

from typing import Sequence, Tuple

__all__ = ["GROUP_SIZES", "BLOCK", "scale_tile"]

GROUP_SIZES = (32, 64, 128)
BLOCK = 128  # the side of a weight block and the width of an activation block


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
