"""Shared test helpers, written independently of the library (no lowbit imports), so an
expectation built here never reuses the code under test."""
from __future__ import annotations

import numpy as np
import torch

# The SPEC's format table.
FP8 = {
    # name: (torch dtype, max, bias, mantissa bits, canonical NaN code)
    "e4m3fn": (torch.float8_e4m3fn, 448.0, 7, 3, 0x7F),
    "e5m2": (torch.float8_e5m2, 57344.0, 15, 2, 0x7F),
    "e4m3fnuz": (torch.float8_e4m3fnuz, 240.0, 8, 3, 0x80),
}
FP8_FORMATS = tuple(FP8)
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The SPEC's GEMM tolerances: relative Frobenius error against float64.
GEMM_TOL = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 2e-3}
LAYOUTS = ("contiguous", "transposed", "sliced", "offset")


def rel_frobenius(got, want) -> float:
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    den = np.linalg.norm(want)
    num = np.linalg.norm(got - want)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as 2-D ``x`` in another memory layout: column-major ("transposed"),
    a strided view into a larger buffer ("sliced"), or a view at a non-zero storage offset."""
    m, k = x.shape
    if layout == "contiguous":
        y = x.contiguous()
    elif layout == "transposed":
        y = x.t().contiguous().t()
        assert m < 2 or k < 2 or not y.is_contiguous()
    elif layout == "sliced":
        big = torch.zeros(2 * m + 1, 2 * k + 7, dtype=x.dtype)
        big[1::2, 3:3 + 2 * k:2] = x
        y = big[1::2, 3:3 + 2 * k:2]
        assert m * k == 0 or (m == 1 and k == 1) or not y.is_contiguous()
    elif layout == "offset":
        buf = torch.zeros(m * k + 5, dtype=x.dtype)
        buf[5:] = x.reshape(-1)
        y = buf[5:].view(m, k)
        assert y.storage_offset() == 5
    else:
        raise AssertionError(layout)
    # Same bytes (so NaNs and fp8 codes compare too).
    assert y.shape == x.shape
    if x.numel():  # (an empty tensor is "contiguous" with any strides, so skip it)
        assert torch.equal(y.contiguous().view(torch.uint8), x.contiguous().view(torch.uint8))
    return y


def tile_of(shape, granularity, group_size=128, block=(128, 128)):
    """(rows, cols) covered by one scale, for an input viewed as [rows, K]; None per tensor."""
    if granularity == "tensor":
        return None
    if granularity in ("token", "channel"):
        return (1, shape[-1])
    if granularity == "group":
        return (1, group_size)
    assert granularity == "block", granularity
    return tuple(block)


def expected_scale_shape(shape, granularity, group_size=128, block=(128, 128)):
    shape = tuple(shape)
    if granularity == "tensor":
        return ()
    if granularity in ("token", "channel"):
        return shape[:-1] + (1,)
    if granularity == "group":
        return shape[:-1] + (shape[-1] // group_size,)
    return (-(-shape[0] // block[0]), -(-shape[1] // block[1]))


def per_tile(x2: np.ndarray, tile, fn) -> np.ndarray:
    """fn over every (th, tw) tile of the 2-D ``x2`` (ragged edges are partial tiles), by
    explicit loops; -> [ceil(R/th), ceil(K/tw)] float32."""
    r, k = x2.shape
    th, tw = tile
    out = np.zeros((-(-r // th), -(-k // tw)), np.float32)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = fn(x2[i * th:(i + 1) * th, j * tw:(j + 1) * tw])
    return out


def expand_tiles(s: np.ndarray, shape, tile) -> np.ndarray:
    """Per-tile values [ceil(R/th), ceil(K/tw)] -> full 2-D [R, K]."""
    r, k = shape
    th, tw = tile
    return np.repeat(np.repeat(np.asarray(s), th, axis=0), tw, axis=1)[:r, :k]


def tile_reduce(x, granularity, fn, group_size=128, block=(128, 128)):
    """fn per scale tile of ``x`` (any rank for tensor/token/group), shaped like the scale."""
    x = np.asarray(x, np.float32)
    sshape = expected_scale_shape(x.shape, granularity, group_size, block)
    if granularity == "tensor":
        return np.float32(fn(x) if x.size else 0).reshape(())
    x2 = x.reshape(-1, x.shape[-1])
    return per_tile(x2, tile_of(x.shape, granularity, group_size, block), fn).reshape(sshape)


def expand_scale(s, shape, granularity, group_size=128, block=(128, 128)) -> np.ndarray:
    """A scale of the given granularity, broadcast to the input's full shape (float32)."""
    s = np.asarray(s, np.float32)
    if granularity == "tensor":
        return np.broadcast_to(s, shape).astype(np.float32)
    shape = tuple(shape)
    tile = tile_of(shape, granularity, group_size, block)
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    s2 = s.reshape(-1 if granularity != "block" else s.shape[0], s.shape[-1])
    if granularity == "block":
        return expand_tiles(s2, shape, tile).astype(np.float32)
    return expand_tiles(s2, (rows, shape[-1]), tile).reshape(shape).astype(np.float32)


def f32_bits_equal(a, b) -> bool:
    a = np.ascontiguousarray(np.asarray(a, np.float32))
    b = np.ascontiguousarray(np.asarray(b, np.float32))
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


# -------------------------------------------------------------------- int4, independently
def pack_nibbles(u) -> np.ndarray:
    """[N, K] nibbles -> canonical uint8 [N, K // 2], one byte at a time (k = 2j low nibble,
    k = 2j + 1 high nibble)."""
    u = np.asarray(u, np.int64)
    n, k = u.shape
    out = np.zeros((n, k // 2), np.uint8)
    for r in range(n):
        for j in range(k // 2):
            out[r, j] = (u[r, 2 * j] & 0xF) + 16 * (u[r, 2 * j + 1] & 0xF)
    return out


def unpack_nibbles(q) -> np.ndarray:
    """canonical uint8 [N, K // 2] -> [N, K] nibbles (int64), by arithmetic."""
    q = np.asarray(q).astype(np.int64)
    n, kh = q.shape
    out = np.zeros((n, 2 * kh), np.int64)
    out[:, 0::2] = q % 16
    out[:, 1::2] = q // 16
    return out


def round_to(x, dtype: torch.dtype) -> np.ndarray:
    """fp32 values rounded to ``dtype`` by torch's cast, returned as fp32."""
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(dtype).float().numpy()


# ------------------------------------------------------------------- tiny dynamic scales
# The floor of a dynamic scale (the smallest normal fp32), and tiny absmax values: 1e-38
# and 1e-36 (absmax / 448 has an fp32 reciprocal of +Inf), fp32 subnormals (1e-40, and
# 1e-45, the smallest), all under qmax * 2^-126 for every qmax (7 to 57344); and
# 448 * 2^-126 * (1 - 2^-10), just under it for e4m3fn and above it for qmax <= 240.
MIN_SCALE = np.float32(2.0 ** -126)
TINY_ABSMAX = (1e-38, 1e-36, 1e-40, 1e-45, 448 * 2.0 ** -126 * (1 - 2.0 ** -10))


def tiny_input(absmax: float, shape=(4, 256), seed=0) -> np.ndarray:
    """float32 [rows, K] with |x| <= absmax: random values, exact zeros and -0 in every row,
    +-absmax itself in every row, and an all-zero last row (whose dynamic scale is 1)."""
    rng = np.random.default_rng(seed)
    rows, k = shape
    x = (rng.uniform(-1, 1, shape) * absmax).astype(np.float32)
    x[:, 0::5] = 0.0
    x[:, 1::7] = -0.0
    x[:, 3] = np.float32(absmax)
    x[:, k // 2] = -np.float32(absmax)
    x[rows - 1] = 0.0
    return x
