"""The one reading of a scale's shape (lowbit.scale_layout.scale_tile), which the
argument checks, the reference's expand_scale, the CUDA backend and the Triton kernels share.
"""
import numpy as np
import pytest
import torch

import lowbit
from lowbit.reference import expand_scale, scale_tile
from lowbit_testing import expand_scale as expand_independently

# (scale shape, input shape, tile)
CASES = [
    ((), (5, 300), (0, 0)),                  # per tensor
    ((), (), (0, 0)),
    ((5, 1), (5, 300), (1, 0)),              # per row
    ((2, 3, 1), (2, 3, 64), (1, 0)),
    ((4,), (128,), (1, 32)),                 # 1-D per group
    ((5, 8), (5, 256), (1, 32)),             # per group
    ((5, 4), (5, 256), (1, 64)),
    ((5, 2), (5, 256), (1, 128)),            # per group of 128 = per 1x128 block
    ((5, 3), (5, 300), (1, 128)),            # per 1x128 block, ragged
    ((2, 3), (200, 300), (128, 128)),        # per 128x128 block, ragged
    ((1, 1), (100, 100), (128, 0)),          # per 128x128 block, K <= 128
    ((1, 1), (1, 100), (1, 0)),              # one row: read as per row
]
BAD = [
    ((3, 5), (4, 256)),       # neither the rows nor the blocks
    ((5, 7), (5, 256)),       # K / 7 is no group size, 7 != ceil(K / 128)
    ((1, 8), (5, 256)),       # 1 x 8 must not pass as 128-row x group-of-32 tiles
    ((5,), (5, 256)),         # rank
    ((2, 3, 1), (6, 64)),
]


@pytest.mark.parametrize("sshape,shape,tile", CASES, ids=[str(c[:2]) for c in CASES])
def test_layouts(sshape, shape, tile):
    assert scale_tile(sshape, shape) == tile
    assert scale_tile(torch.Size(sshape), torch.Size(shape)) == tile
    lowbit._checks.scale_for("op", "scale", torch.ones(sshape), torch.zeros(shape))
    # expand_scale against the tile, written out element by element
    s = np.arange(1, 1 + int(np.prod(sshape)), dtype=np.float32).reshape(sshape)
    full = expand_scale(s, shape)
    assert full.shape == shape
    if tile == (0, 0):
        assert np.all(full == s)
        return
    s2 = s.reshape(-1, s.shape[-1])
    rows, cols = tile
    for idx in np.ndindex(*shape):
        r = int(np.ravel_multi_index(idx[:-1], shape[:-1])) if len(shape) > 1 else 0
        c = idx[-1]
        want = s2[r // rows, c // cols if cols else 0]
        assert full[idx] == want, (idx, full[idx], want)


@pytest.mark.parametrize("sshape,shape", BAD, ids=[str(c) for c in BAD])
def test_bad_layouts(sshape, shape):
    with pytest.raises(ValueError, match=r"scale of shape .* does not fit an input of shape"):
        scale_tile(sshape, shape)
    with pytest.raises(ValueError, match=r"op: scale must be 0-D \(per tensor\)"):
        lowbit._checks.scale_for("op", "scale", torch.ones(sshape), torch.zeros(shape))


@pytest.mark.parametrize("granularity,group_size,block",
                         [("token", 128, None), ("group", 32, None), ("group", 128, None),
                          ("block", 128, (1, 128)), ("block", 128, (128, 128))])
def test_quantizer_scales_read_back(granularity, group_size, block):
    """The scale every quantizer writes is read back as the tile it was computed over."""
    block = block or (128, 128)
    for shape in ((1, 256), (130, 384), (257, 512)):
        x = np.ones(shape, np.float32)
        sshape = lowbit.reference.scale_shape(shape, granularity, group_size, block)
        s = np.arange(1, 1 + int(np.prod(sshape)), dtype=np.float32).reshape(sshape)
        assert np.array_equal(expand_scale(s, x.shape),
                              expand_independently(s, shape, granularity, group_size, block))
