"""Shared test helpers, written independently of the library (no lowbit imports), so an
expectation built here never reuses the code under test."""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

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
LAYOUTS = ("contiguous", "transposed", "sliced", "offset", "row_strided")
# (granularity, group_size, block) cases of the quantizers
GRANS = [
    ("tensor", 128, (128, 128)), ("token", 128, (128, 128)), ("channel", 128, (128, 128)),
    ("group", 32, (128, 128)), ("group", 64, (128, 128)), ("group", 128, (128, 128)),
    ("block", 128, (128, 128)), ("block", 128, (1, 128)),
]
GRAN_IDS = ["tensor", "token", "channel", "group32", "group64", "group128", "block128x128",
            "block1x128"]


def rel_frobenius(got, want) -> float:
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    den = np.linalg.norm(want)
    num = np.linalg.norm(got - want)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as 2-D ``x`` (on its device) in another memory layout: column-major
    ("transposed"), a view with both strides > 1 into a larger buffer ("sliced"), a view at a
    non-zero storage offset ("offset"), or unit column stride with rows k + 7 apart twice over,
    starting 3 elements into the row ("row_strided": misaligned rows)."""
    m, k = x.shape
    dev = x.device
    if layout == "contiguous":
        y = x.contiguous()
    elif layout == "transposed":
        y = x.t().contiguous().t()
        assert m < 2 or k < 2 or not y.is_contiguous()
    elif layout == "sliced":
        big = torch.zeros(2 * m + 1, 2 * k + 7, dtype=x.dtype, device=dev)
        big[1::2, 3:3 + 2 * k:2] = x
        y = big[1::2, 3:3 + 2 * k:2]
        assert m * k == 0 or (m == 1 and k == 1) or not y.is_contiguous()
    elif layout == "offset":
        buf = torch.zeros(m * k + 5, dtype=x.dtype, device=dev)
        buf[5:] = x.reshape(-1)
        y = buf[5:].view(m, k)
        assert y.storage_offset() == 5
    elif layout == "row_strided":
        big = torch.zeros(2 * m + 1, k + 7, dtype=x.dtype, device=dev)
        big[1::2, 3:3 + k] = x
        y = big[1::2, 3:3 + k]
    else:
        raise AssertionError(layout)
    # Same bytes (so NaNs and fp8 codes compare too).
    assert y.shape == x.shape
    if x.numel():  # (an empty tensor is "contiguous" with any strides, so skip it)
        assert torch.equal(y.contiguous().view(torch.uint8), x.contiguous().view(torch.uint8))
    return y


def special_data(shape, dtype, seed=0, device="cpu"):
    """Random values over a wide range with NaN, +-Inf, subnormals, -0, all-zero and tiny
    rows injected at fixed places (rows 0-3 keep finite, ordinary values)."""
    g = torch.Generator().manual_seed(seed)
    m, k = shape
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-8, 9, shape, generator=g))
    if m * k == 0:
        return x.to(dtype).to(device)
    flat = x.view(-1)
    n = flat.numel()
    idx = torch.randperm(n, generator=g)
    tiny = {torch.float32: 1e-40, torch.bfloat16: 1e-39, torch.float16: 3e-7}[dtype]
    big = {torch.float32: 3e38, torch.bfloat16: 3e38, torch.float16: 6e4}[dtype]
    specials = [float("nan"), float("inf"), -float("inf"), tiny, -tiny, -0.0, big, -big]
    protected = min(4, m) * k  # first rows: no specials
    pos = idx[idx >= protected][: max(1, n // 200)]
    for j, p in enumerate(pos.tolist()):
        flat[p] = specials[j % len(specials)]
    x = x.view(shape)
    if m > 5:
        x[5] = 0.0            # an all-zero row: scale 1
        x[5, ::3] = -0.0
    if m > 6:
        x[6] = tiny           # a row whose absmax / qmax underflows or is subnormal
    return x.to(dtype).to(device)


def special_scales(shape, seed, device="cpu"):
    """Random static scales with 0, a negative and subnormal entries; finite only (a NaN or
    Inf static scale is a ValueError, test_errors.py)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(shape, generator=g) * 4 + 0.01
    flat = s.view(-1)
    extra = [0.0, -0.5, 1e-42, 3e-39]
    for j, v in enumerate(extra[: flat.numel() // 2]):
        flat[(j * 7919) % flat.numel()] = v
    return s.to(device)


# dequantize_fp8's scale layouts, by name, for a [m, k] q
DEQUANT_SCALE_KINDS = ("tensor", "row", "group32", "group128", "block1x128", "block128")


def dequant_scales(shape, kind, seed, device="cpu"):
    m, k = shape
    size = {"tensor": (), "row": (m, 1), "group32": (m, k // 32), "group128": (m, k // 128),
            "block1x128": (m, -(-k // 128)), "block128": (-(-m // 128), -(-k // 128))}[kind]
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(size, generator=g) * 3 + 0.01).to(device)


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


# ------------------------------------------------------------------ the SPEC's op list
def spec_op_params(ops, pending):
    """pytest params, one per SPEC op; an op not built yet is a strict expected failure whose
    reason is the issue that builds it."""
    import pytest

    return [pytest.param(op, id=op, marks=pytest.mark.xfail(strict=True, reason=pending[op]))
            if op in pending else pytest.param(op, id=op) for op in ops]


def find_spec():
    """The SPEC file, where it is at hand: ``shared/SPEC.md`` beside the repository or
    beside any folder above it (the workspace keeps it outside the repository); None on a
    checkout without it (CI)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for folder in (root, *root.parents):
        path = folder / "shared" / "SPEC.md"
        if path.is_file():
            return path
    return None


def spec_block(text: str, heading: str):
    """The first indented (code) block after ``heading`` in the markdown ``text``, as a list
    of lines without the indentation."""
    lines = text.splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.strip() == heading)
    block = []
    for ln in lines[i + 1:]:
        if ln.startswith("    ") and ln.strip():
            block.append(ln[4:].rstrip())
        elif block:
            break
        elif ln.startswith("#"):
            break
    return block


# ------------------------------------------------- independent quantizers (the SPEC's rules)
# Written from the SPEC, not from lowbit: dynamic scales from explicit per-tile loops, fp8
# codes from ml_dtypes (a test oracle only), integer codes from np.rint. The tests of the
# public ops compare against these, so an error in the reference shows there too.
def floored(extent, levels):
    """extent / levels in fp32, at least 2^-126; 1 for a zero extent (NaN stays NaN)."""
    extent = np.asarray(extent, np.float32)
    s = (extent / np.float32(levels)).astype(np.float32)  # one correctly rounded division
    s = np.where(s < MIN_SCALE, MIN_SCALE, s)
    return np.where(extent == 0, np.float32(1), s).astype(np.float32)


def absmax_scale(x, qmax, gran, group_size=128, block=(128, 128)):
    amax = tile_reduce(x, gran, lambda t: np.max(np.abs(t)) if t.size else 0, group_size, block)
    return floored(amax, qmax)


def minmax(x, gran, group_size=128, block=(128, 128)):
    """Per-tile (min(min, 0), max(max, 0)) in fp32."""
    lo = tile_reduce(x, gran, lambda t: min(np.min(t), 0) if t.size else 0, group_size, block)
    hi = tile_reduce(x, gran, lambda t: max(np.max(t), 0) if t.size else 0, group_size, block)
    return lo.astype(np.float32), hi.astype(np.float32)


def _times_inverse(x, scale, gran, group_size, block):
    """x * (1 / scale) in fp32: one division per scale, one multiply per element."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = (np.float32(1) / np.asarray(scale, np.float32)).astype(np.float32)
        return (x * expand_scale(inv, x.shape, gran, group_size, block)).astype(np.float32)


def _ml_dtype(fmt):
    import ml_dtypes

    return {"e4m3fn": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2,
            "e4m3fnuz": ml_dtypes.float8_e4m3fnuz}[fmt]


def fp8_codes(y, fmt, saturate=True) -> np.ndarray:
    """ml_dtypes' uint8 codes of fp32 ``y`` under the SPEC's rules: saturate clips to the
    format's max first (NaN kept); every NaN is the format's canonical NaN code."""
    y = np.asarray(y, np.float32)
    if saturate:
        fmax = FP8[fmt][1]
        y = np.where(np.isnan(y), y, np.clip(y, -fmax, fmax)).astype(np.float32)
    with np.errstate(all="ignore"):
        c = y.astype(_ml_dtype(fmt))
    codes = c.view(np.uint8).copy()
    codes[np.isnan(c.astype(np.float32))] = FP8[fmt][4]
    return codes


def fp8_values(codes, fmt) -> np.ndarray:
    """fp32 values of uint8 fp8 codes (ml_dtypes)."""
    return np.ascontiguousarray(codes, np.uint8).view(_ml_dtype(fmt)).astype(np.float32)


def expected_quantize_fp8(x, scale=None, fmt="e4m3fn", gran="tensor", group_size=128,
                          block=(128, 128), saturate=True):
    """(uint8 codes, fp32 scale): scale = max(absmax / fmt max, 2^-126) (1 for an all-zero
    tile) unless given; codes = encode(x * (1 / scale))."""
    x = np.asarray(x, np.float32)
    if scale is None:
        scale = absmax_scale(x, FP8[fmt][1], gran, group_size, block)
    scale = np.asarray(scale, np.float32)
    return fp8_codes(_times_inverse(x, scale, gran, group_size, block), fmt, saturate), scale


def expected_dequantize_fp8(codes, scale, fmt, gran, group_size=128, block=(128, 128)):
    v = fp8_values(codes, fmt)
    return (v * expand_scale(scale, v.shape, gran, group_size, block)).astype(np.float32)


def expected_quantize_int8(x, gran="token", group_size=128, block=(128, 128), symmetric=True):
    """(int8 q, fp32 scale, int32 zero or None), dynamic: symmetric q = clamp(rint(x / s),
    -127, 127) with s = absmax / 127; asymmetric s = (max - min) / 255 over the range widened
    to 0, z = clamp(rint(-128 - min / s), -128, 127), q = clamp(rint(x / s) + z, -128, 127);
    a NaN product maps to the zero point."""
    x = np.asarray(x, np.float32)
    if symmetric:
        scale = absmax_scale(x, 127, gran, group_size, block)
        zero = None
        zf = np.float32(0)
        lo_q = -127
    else:
        lo, hi = minmax(x, gran, group_size, block)
        scale = floored((hi - lo).astype(np.float32), 255)
        with np.errstate(invalid="ignore"):
            z = np.rint(np.float32(-128) - (lo / scale).astype(np.float32))
        zero = np.clip(np.nan_to_num(z, nan=0.0), -128, 127).astype(np.int32)
        zf = expand_scale(zero.astype(np.float32), x.shape, gran, group_size, block)
        lo_q = -128
    with np.errstate(invalid="ignore"):
        r = np.rint(_times_inverse(x, scale, gran, group_size, block))
    r = np.where(np.isnan(r), np.float32(0), r)
    q = np.clip(r + zf, lo_q, 127).astype(np.int8)
    return q, scale, zero


def expected_dequantize_int8(q, scale, zero, gran, group_size=128, block=(128, 128)):
    q = np.asarray(q).astype(np.float32)
    if zero is not None:
        q = q - expand_scale(np.asarray(zero, np.float32), q.shape, gran, group_size, block)
    return (q * expand_scale(scale, q.shape, gran, group_size, block)).astype(np.float32)


def expected_int4_quantize(w, group_size, symmetric, scale_dtype: torch.dtype):
    """(packed uint8 [N, K/2], scales rounded to ``scale_dtype`` as fp32, zeros or None):
    scales absmax / 7 (symmetric, u = clamp(rint(w / s), -8, 7) + 8) or (max - min) / 15
    (z = clamp(rint(-min / s), 0, 15), u = clamp(rint(w / s) + z, 0, 15)), rounded to
    ``scale_dtype`` (0 becomes 1) before 1 / s is taken."""
    w = np.asarray(w, np.float32)
    if symmetric:
        exact = absmax_scale(w, 7, "group", group_size)
    else:
        lo, hi = minmax(w, "group", group_size)
        exact = floored((hi - lo).astype(np.float32), 15)
    scale = round_to(exact, scale_dtype)
    scale = np.where(scale == 0, np.float32(1), scale).astype(np.float32)
    if symmetric:
        z = np.full(scale.shape, 8.0, np.float32)
    else:
        with np.errstate(invalid="ignore"):
            z = np.clip(np.nan_to_num(np.rint(-(lo / scale).astype(np.float32)), nan=0.0), 0, 15)
    with np.errstate(invalid="ignore"):
        r = np.rint(np.nan_to_num(_times_inverse(w, scale, "group", group_size, None), nan=0.0))
    zf = np.repeat(z.astype(np.float32), group_size, axis=1)
    u = (np.clip(r, -8, 7) + 8) if symmetric else np.clip(r + zf, 0, 15)
    return pack_nibbles(u), scale, None if symmetric else z.astype(np.uint8)


# ---------------------------------------------- torch-side helpers of the kernel tests
def gemm_tol(out_dtype: torch.dtype, fast_accum: bool = False) -> float:
    """The SPEC's bound (GEMM_TOL); a kernel whose fast_accum skips promotion (Triton's: the
    Hopper wgmma accumulator of about 14 bits runs over all of K) is held to 1e-2 whatever
    the output: at K = 14336 its fp32 error on zero-mean data was measured at 2.8e-3."""
    return 1e-2 if fast_accum else GEMM_TOL[out_dtype]


def rel_fro(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 on out's device; out must be finite."""
    out = out.double()
    ref = ref.double().to(out.device)
    assert bool(torch.isfinite(out).all()), "non-finite output"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_bits_equal(got: torch.Tensor, want: torch.Tensor, what: str = ""):
    """Same dtype, shape and bits (on the host); NaN matches NaN whatever its payload, and
    -0 differs from +0. fp8 codes compare as bytes."""
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got, want = got.cpu(), want.cpu()
    size = got.element_size()
    ityp = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[size]
    gb, wb = got.view(ityp), want.view(ityp)
    if got.dtype.is_floating_point and size > 1:
        gn, wn = torch.isnan(got), torch.isnan(want)
        assert torch.equal(gn, wn), f"{what}: NaN positions differ ({(gn != wn).sum()} places)"
        gb, wb = gb[~gn], wb[~wn]
    bad = (gb != wb).nonzero()
    assert bad.numel() == 0, (
        f"{what}: {bad.shape[0]} of {gb.numel()} differ; first at {bad[0].tolist()}: "
        f"{gb[tuple(bad[0])].item():#x} != {wb[tuple(bad[0])].item():#x}")


def all_bf16(device="cpu") -> torch.Tensor:
    """All 65,536 bf16 bit patterns as a [256, 256] tensor."""
    bits = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16)
    return bits.view(torch.bfloat16).reshape(256, 256).to(device)


def all_fp16(device="cpu") -> torch.Tensor:
    """All 65,536 fp16 bit patterns as a [256, 256] tensor."""
    bits = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16)
    return bits.view(torch.float16).reshape(256, 256).to(device)


def _random_scales(mode, rows, kb, per_tensor, g, block_rows):
    if mode == "tensor":
        return torch.tensor(per_tensor)
    if mode == "row":
        return torch.rand(rows, 1, generator=g) + 0.5
    return torch.rand(-(-rows // block_rows), kb, generator=g) + 0.5


def fp8_gemm_operands(m, n, k, mode, device, seed=0, b_mode=None,
                      dtype_a=torch.float8_e4m3fn, dtype_b=torch.float8_e4m3fn):
    """a [m, k], b [n, k] (2 * randn cast to fp8) and random fp32 scales in [0.5, 1.5): a's
    of ``mode``, b's of ``b_mode`` (default the same); "tensor", "row" or "block" (1 x 128
    for a, 128 x 128 for b)."""
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(m, k, generator=g) * 2).to(dtype_a)
    b = (torch.randn(n, k, generator=g) * 2).to(dtype_b)
    kb = -(-k // 128)
    sa = _random_scales(mode, m, kb, 0.7, g, block_rows=1)
    sb = _random_scales(b_mode or mode, n, kb, 1.3, g, block_rows=128)
    return [t.to(device) for t in (a, b, sa.float(), sb.float())]


def quantized_gemm_operands(quantize, m, n, k, a_mode, b_mode, device, seed=0,
                            fmt_a="e4m3fn", fmt_b="e4m3fn", offset=0.0):
    """a and b quantized from randn data by ``quantize`` (a quantize_fp8 with the backend
    bound: the builder never checks it), with their scales: a per tensor, token or 1 x 128
    block; b per tensor, channel or 128 x 128 block."""
    g = torch.Generator().manual_seed(seed)
    a32 = (torch.randn(m, k, generator=g) + offset).to(device)
    b32 = (torch.randn(n, k, generator=g) * 0.05 + offset * 0.05).to(device)
    ga = {"tensor": ("tensor", {}), "row": ("token", {}), "block": ("block", dict(block=(1, 128)))}
    gb = {"tensor": ("tensor", {}), "row": ("channel", {}),
          "block": ("block", dict(block=(128, 128)))}
    a, sa = quantize(a32, fmt=fmt_a, granularity=ga[a_mode][0], **ga[a_mode][1])
    b, sb = quantize(b32, fmt=fmt_b, granularity=gb[b_mode][0], **gb[b_mode][1])
    return a, b, sa, sb


def ref_mm_f64(a, b, sa, sb, bias=None) -> torch.Tensor:
    """sum_k a sa * b sb + bias in float64 on the operands' device (fp8 -> float64 is
    exact), for sizes where a NumPy computation would be slow."""
    m, k = a.shape
    n = b.shape[0]

    def expand(s, rows, rb):
        if s.dim() == 0:
            return s.double()
        s = s.double()
        if s.shape[1] != 1 or s.shape[0] != rows:
            s = s.repeat_interleave(128, dim=1)[:, :k]
        if s.shape[0] != rows:
            s = s.repeat_interleave(rb, dim=0)[:rows]
        return s

    out = (a.double() * expand(sa, m, 1)) @ (b.double() * expand(sb, n, 128)).t()
    if bias is not None:
        out = out + bias.double()
    return out


# ------------------------------------------------------------ lowbit modules the tests steer
def cuda_gemm_module():
    """The CUDA fp8_scaled_mm backend module (set_programmatic_launch, SMALL_M_MAX, ...)."""
    from lowbit.backends.cuda import gemm
    return gemm


def cuda_quantize_module():
    """The CUDA fp8 quantize backend module (HW_CVT)."""
    from lowbit.backends.cuda import quantize
    return quantize


def kernel_params(op, backends=("cuda", "triton")):
    """pytest params, one per registered kernel of ``op`` in ``backends`` (id
    "backend/name"), in the registry's order; CUDA kernels' params are marked ``gpu``."""
    import pytest
    from lowbit._backend import kernels

    # The CUDA kernels' cases are GPU tests (`pytest -m gpu`, as bench/gpu_check.sh runs
    # them); the Triton ones also run on the CPU under the interpreter.
    return [pytest.param(k, id=f"{k.backend}/{k.name}",
                         marks=(pytest.mark.gpu,) if k.backend == "cuda" else ())
            for k in kernels(op) if k.backend in backends]


def skip_unless_runs(kernel, *args):
    """Skip the test with the kernel's own reason when it cannot run here (available()) or
    does not take these arguments (supports(); not asked when no arguments are given)."""
    import pytest

    why = kernel.available() if kernel.available is not None else None
    if why is None and args and kernel.supports is not None:
        why = kernel.supports(*args)
    if why:
        pytest.skip(f"{kernel.backend}/{kernel.name}: {why}")


# ------------------------------------------------------------------------- int8, independently
def int8_mm_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The exact int64 product ``a @ b.T`` of int8 operands, on their device: in int64 on the
    CPU; on a GPU (no int64 matmul there) in float64, exact as well for K < 2^17 (every
    partial sum is an integer below 2^31, far inside float64's 2^53)."""
    if a.device.type == "cpu":
        return a.long() @ b.long().t()
    assert a.shape[1] < 1 << 17
    return (a.double() @ b.double().t()).long()


def int8_gemm_ref_f64(a, b, a_scale, b_scale, bias=None, a_zero=None) -> torch.Tensor:
    """``(sum_k (a - a_zero) b) * a_scale * b_scale + bias`` in float64 on the operands'
    device, from the same int8 operands (scales () or [rows, 1])."""
    acc = int8_mm_ref(a, b).double()
    if a_zero is not None:
        acc = acc - a_zero.double().reshape(-1, 1) * b.double().sum(dim=1)[None, :]
    out = acc * a_scale.double().reshape(-1, 1) * b_scale.double().reshape(1, -1)
    if bias is not None:
        out = out + bias.double()[None, :]
    return out


def empty_quant_inputs(granularity, group_size, device="cpu"):
    """(x, k_empty) for the quantizers' empty cases: M = 0, K = 0 and an empty leading
    dimension, in fp32 and bf16, skipping K that a group does not divide. ``k_empty``: K = 0
    under group or block scales, whose zero scale columns the reference cannot read (check
    the shapes alone)."""
    import itertools

    shapes = [(0, 256), (0, 100), (4, 0), (5, 0)]
    if granularity in ("tensor", "token", "group"):
        shapes.append((2, 0, 256))
    for shape, dtype in itertools.product(shapes, (torch.float32, torch.bfloat16)):
        if granularity == "group" and shape[-1] % group_size:
            continue
        yield (torch.empty(shape, dtype=dtype, device=device),
               granularity in ("group", "block") and shape[-1] == 0)


# The GPUs the Triton kernels are compiled for in CI (GPUTarget's arguments), and the shared
# memory a block may use on each: H100/H200, A100, MI300X, MI355X.
GPU_TARGETS = {"sm90": ("cuda", 90, 32), "sm80": ("cuda", 80, 32),
               "gfx942": ("hip", "gfx942", 64), "gfx950": ("hip", "gfx950", 64)}
SMEM_LIMIT = {"sm90": 232448, "sm80": 166912, "gfx942": 65536, "gfx950": 163840}
# SMs (CUs) of each target's flagship card: H100 SXM, A100, MI300X, MI355X.
SM_COUNT = {"sm90": 132, "sm80": 108, "gfx942": 304, "gfx950": 256}


def compile_kernel(kernel, target, signature: dict, constexprs: dict, aligned=(),
                   options=None):
    """``triton.compile`` of the jitted ``kernel`` for ``target`` (GPUTarget's arguments), no
    device needed: ``signature`` {parameter: Triton type, or "constexpr"}, ``constexprs``
    {parameter: value}, ``aligned``: the parameters a launch would mark as 16-byte
    multiples. Run it in a process without TRITON_INTERPRET (call_in_fresh_process)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    index = {n: i for i, n in enumerate(kernel.arg_names)}
    src = ASTSource(fn=kernel, signature=signature,
                    constexprs={(index[n],): v for n, v in constexprs.items()},
                    attrs={(index[n],): [["tt.divisibility", 16]] for n in aligned})
    return triton.compile(src, target=GPUTarget(*target), options=dict(options or {}))


def compile_checks_in_fresh_process(test_file: str, target) -> None:
    """Run ``compile_checks(target)`` of the test module at ``test_file`` in a fresh Python
    without TRITON_INTERPRET: a process that imported triton for the interpreter cannot
    compile for a GPU."""
    call_in_fresh_process(test_file, f"compile_checks({tuple(target)!r})")


def call_in_fresh_process(test_file: str, call: str, timeout: int = 300) -> None:
    """Evaluate ``call`` (e.g. "compile_checks(('cuda', 90, 32))") on the test module at
    ``test_file`` in a fresh Python without TRITON_INTERPRET; fails with its stderr."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    folder, name = os.path.split(os.path.splitext(test_file)[0])
    code = f"import sys; sys.path.insert(0, {folder!r}); import {name} as t; t.{call}"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[-4000:]


def check_int4_quantize(w, group, symmetric, backend, what=""):
    """``backend``'s int4_quantize of ``w`` against the reference's on the same values, bit
    for bit (codes, scales, zero points), the result on w's device; returns it."""
    import lowbit
    got = lowbit.int4_quantize(w, group_size=group, symmetric=symmetric, backend=backend)
    want = lowbit.int4_quantize(w.cpu(), group_size=group, symmetric=symmetric,
                                backend="reference")
    assert got.qweight.device == w.device and got.scales.device == w.device
    assert_bits_equal(got.qweight, want.qweight, f"{what} codes")
    assert_bits_equal(got.scales, want.scales, f"{what} scales")
    if symmetric:
        assert got.zeros is None
    else:
        assert got.zeros.device == w.device
        assert_bits_equal(got.zeros, want.zeros, f"{what} zeros")
    return got


def int4_edge_group(case: str, device="cpu"):
    """(w, group, symmetric) of an int4 quantizer case that special_data does not reach:
    "subnormal_min", an asymmetric group whose only nonzero entry is -0.75 * 2^-126 (scale
    floored to 2^-126, zero point rint(0.75) = 1; bf16 holds that value exactly), and
    "fp16_scale_to_zero", a symmetric fp16 group of 2^-24 (scale 2^-24 / 7 rounds to 0 in
    fp16 and becomes 1); three rows, the second and third ordinary values."""
    g = torch.Generator().manual_seed(5)
    if case == "subnormal_min":
        w = torch.randn(3, 64, generator=g)
        w[0] = 0.0
        w[0, 5] = -0.75 * 2.0 ** -126
        return w.to(torch.bfloat16).to(device), 32, False
    if case == "fp16_scale_to_zero":
        w = torch.randn(3, 64, generator=g).half()
        w[0] = 0.0
        w[0, :7] = 2.0 ** -24
        return w.to(device), 32, True
    raise AssertionError(case)


def with_launch_hook(call):
    """call() with a Triton launch hook set (as a profiler sets one): Triton's own launch
    path then serves every launch, where lowbit's bound launches step aside. Returns
    (call's result, the launches the hook saw)."""
    from triton import knobs
    seen = []

    def hook(metadata):
        seen.append(metadata)

    chain = knobs.runtime.launch_enter_hook
    if hasattr(chain, "add"):  # Triton 3.6 keeps a chain of hooks
        chain.add(hook)
        restore = lambda: chain.remove(hook)  # noqa: E731
    else:
        knobs.runtime.launch_enter_hook = hook
        restore = lambda: setattr(knobs.runtime, "launch_enter_hook", chain)  # noqa: E731
    try:
        return call(), seen
    finally:
        restore()


def tiny_llama(transformers):
    """A 2-layer transformers Llama with random weights (seeded), bf16, eval: q, k, v, o,
    gate, up and down per layer, grouped-query attention (4 heads, 2 KV heads)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


# A transformers experts module (MoE), for QuantizedExperts without transformers installed.
def _dispatch(cls):
    """What transformers' use_experts_implementation does to a class that matters here: the
    layout flags on each instance and a functools.wraps wrapper as its forward."""
    init, forward = cls.__init__, cls.forward

    @functools.wraps(init)
    def __init__(self, *args, transposed=False, gated=True, bias=False, post_norm=False,
                 **kwargs):
        init(self, *args, transposed=transposed, gated=gated, bias=bias, post_norm=post_norm,
             **kwargs)
        self.is_transposed, self.has_gate, self.has_bias = transposed, gated, bias
        self.has_post_expert_norm = post_norm

    @functools.wraps(forward)
    def dispatched(self, *args, **kwargs):
        return forward(self, *args, **kwargs)

    cls.__init__, cls.forward = __init__, dispatched
    return cls


@_dispatch
class Experts(nn.Module):
    """transformers' eager experts loop (MixtralExperts' forward), in every layout the
    decorator's flags describe: transposed weights, no gate (up_proj alone), biases, a
    post-expert norm; the gate is SiLU(gate) * up over the two halves, or, with
    ``interleaved``, GPT-OSS's clamped gate over even and odd columns."""

    def __init__(self, n=4, d=64, f=96, *, transposed, gated, bias, post_norm,
                 interleaved=False):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        first = 2 * f if gated else f
        self.num_experts = n
        shape1, shape2 = ((n, d, first), (n, f, d)) if transposed else ((n, first, d), (n, d, f))
        name = "gate_up_proj" if gated else "up_proj"
        self.register_parameter(name, nn.Parameter(torch.randn(*shape1, generator=g) / d**0.5))
        self.down_proj = nn.Parameter(torch.randn(*shape2, generator=g) / f**0.5)
        if bias:
            self.register_parameter(f"{name}_bias",
                                    nn.Parameter(torch.randn(n, first, generator=g) / 4))
            self.down_proj_bias = nn.Parameter(torch.randn(n, d, generator=g) / 4)
        self.act_fn = nn.SiLU()
        self.post_expert_norm = nn.LayerNorm(d) if post_norm else None
        self.interleaved, self.limit = interleaved, 2.0

    def _apply_gate(self, y):
        if self.interleaved:
            gate, up = y[..., ::2].clamp(max=self.limit), y[..., 1::2].clamp(-self.limit,
                                                                           self.limit)
            return (up + 1) * gate * torch.sigmoid(gate * 1.702)
        gate, up = y.chunk(2, dim=-1)
        return self.act_fn(gate) * up

    def _proj(self, x, name, e):
        w = getattr(self, name)[e]
        y = x @ w if self.is_transposed else x @ w.t()
        return y + getattr(self, f"{name}_bias")[e] if self.has_bias else y

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1)
        mask = mask.permute(2, 1, 0)
        for e in range(self.num_experts):
            pos, token = torch.where(mask[e])
            if token.numel() == 0:
                continue
            y = self._proj(hidden_states[token], "gate_up_proj" if self.has_gate else "up_proj",
                           e)
            y = self._apply_gate(y) if self.has_gate else self.act_fn(y)
            y = self._proj(y, "down_proj", e)
            if self.has_post_expert_norm:
                y = self.post_expert_norm(y)
            y = y * top_k_weights[token, pos, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


EXPERT_LAYOUTS = {
    "mixtral": dict(transposed=False, gated=True, bias=False, post_norm=False),
    "gpt-oss": dict(transposed=True, gated=True, bias=True, post_norm=False, interleaved=True),
    "no-gate": dict(transposed=False, gated=False, bias=False, post_norm=False),
    "post-norm": dict(transposed=True, gated=True, bias=False, post_norm=True),
}


def routing(tokens, n=4, k=2, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(tokens)])
    weights = torch.rand(tokens, k, generator=g).softmax(-1)
    return index.to(device), weights.to(device)


def as_linear(lin):
    """``make`` for from_experts that keeps the expert's slice in full precision."""
    new = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None,
                    dtype=lin.weight.dtype, device=lin.weight.device)
    new.weight.data.copy_(lin.weight)
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias)
    return new
