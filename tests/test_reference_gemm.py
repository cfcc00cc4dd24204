"""The GEMMs through the public torch API (CPU, reference backend) against numbers computed
here in int64 / float64 from the same quantized operands.

int8_mm is exact. The others meet the SPEC's relative Frobenius error: <= 1e-2 for bf16/fp16
outputs, <= 2e-3 for fp32 outputs; paths that are integer-exact by construction are exact.
"""
import numpy as np
import pytest
import torch

import lowbit
from lowbit_testing import (FLOAT_DTYPES, GEMM_TOL, expand_tiles, rel_frobenius,
                            unpack_nibbles, with_layout)

out_dtypes = pytest.mark.parametrize("out_dtype", FLOAT_DTYPES, ids=lambda d: str(d)[6:])
MNK = [(0, 5, 64), (1, 1, 1), (1, 33, 4104), (17, 1, 200), (17, 33, 128), (3, 130, 257)]
mnk = pytest.mark.parametrize("m,n,k", MNK, ids=[f"{m}x{n}x{k}" for m, n, k in MNK])


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rand_i8(shape, seed, lo=-128, hi=128):
    return torch.randint(lo, hi, shape, generator=gen(seed), dtype=torch.int8)


def i64(t):
    return t.numpy().astype(np.int64)


# --------------------------------------------------------------------------------- int8_mm
@mnk
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced", "offset"])
def test_int8_mm_exact(m, n, k, layout):
    a = with_layout(rand_i8((m, k), 1), layout)
    b = with_layout(rand_i8((n, k), 2), layout)
    c = lowbit.int8_mm(a, b)
    assert c.dtype == torch.int32 and c.shape == (m, n)
    assert np.array_equal(c.numpy().astype(np.int64), i64(a) @ i64(b).T)


@pytest.mark.parametrize("va,vb", [(-128, -128), (127, 127), (-128, 127), (127, -128)])
@pytest.mark.parametrize("k", [4104, 131071])
def test_int8_mm_extreme_values(va, vb, k):
    """Constant extremes: the largest |sum| K < 2^17 allows; -128 * -128 * 131071 still
    fits int32."""
    m, n = (3, 2) if k == 4104 else (1, 1)
    a = torch.full((m, k), va, dtype=torch.int8)
    b = torch.full((n, k), vb, dtype=torch.int8)
    c = lowbit.int8_mm(a, b)
    want = va * vb * k
    assert -(2**31) <= want < 2**31
    assert torch.equal(c, torch.full((m, n), want, dtype=torch.int32))


def test_int8_mm_mixed_extremes_exact():
    k = 4104
    a = torch.where(torch.rand(17, k, generator=gen(3)) < 0.5, -128, 127).to(torch.int8)
    b = torch.where(torch.rand(9, k, generator=gen(4)) < 0.5, -128, 127).to(torch.int8)
    assert np.array_equal(lowbit.int8_mm(a, b).numpy().astype(np.int64), i64(a) @ i64(b).T)


# ------------------------------------------------------------------------------- int8_gemm
def int8_gemm_f64(a, b, sa, sb, bias=None, a_zero=None):
    acc = (i64(a) @ i64(b).T).astype(np.float64)
    m = acc.shape[0]
    if a_zero is not None:
        acc = acc - np.broadcast_to(i64(a_zero).reshape(-1, 1), (m, 1)) * i64(b).sum(1)[None]
    out = acc * np.broadcast_to(sa.double().numpy().reshape(-1, 1), (m, 1))
    out = out * sb.double().numpy().reshape(1, -1)
    if bias is not None:
        out = out + bias.double().numpy()[None]
    return out


SCALES = ["tensor", "row"]


def scale_for(kind, rows, seed):
    g = gen(seed)
    if kind == "tensor":
        return torch.rand((), generator=g) * 0.01 + 0.001
    return torch.rand(rows, 1, generator=g) * 0.01 + 0.001


@mnk
@out_dtypes
@pytest.mark.parametrize("a_scale_kind", SCALES)
@pytest.mark.parametrize("b_scale_kind", SCALES)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("zero", [None, "tensor", "row"], ids=["sym", "azero", "azero_row"])
def test_int8_gemm(m, n, k, out_dtype, a_scale_kind, b_scale_kind, with_bias, zero):
    a, b = rand_i8((m, k), 5), rand_i8((n, k), 6)
    sa, sb = scale_for(a_scale_kind, m, 7), scale_for(b_scale_kind, n, 8)
    bias = torch.randn(n, generator=gen(9)) if with_bias else None
    a_zero = None
    if zero == "tensor":
        a_zero = torch.tensor(-3, dtype=torch.int32)
    elif zero == "row":
        a_zero = torch.randint(-128, 128, (m, 1), generator=gen(10), dtype=torch.int32)
    out = lowbit.int8_gemm(a, b, sa, sb, bias, out_dtype=out_dtype, a_zero=a_zero)
    assert out.dtype == out_dtype and out.shape == (m, n)
    want = int8_gemm_f64(a, b, sa, sb, bias, a_zero)
    assert rel_frobenius(out.double().numpy(), want) <= GEMM_TOL[out_dtype]


def test_int8_gemm_bf16_bias():
    a, b = rand_i8((4, 96), 11), rand_i8((8, 96), 12)
    sa, sb = torch.tensor(0.02), torch.full((8, 1), 0.01)
    bias = torch.randn(8, generator=gen(13)).bfloat16()
    out = lowbit.int8_gemm(a, b, sa, sb, bias, out_dtype=torch.float32)
    assert rel_frobenius(out.numpy(), int8_gemm_f64(a, b, sa, sb, bias)) <= 2e-3


@pytest.mark.parametrize("with_zero", [False, True])
def test_int8_gemm_exact_integer_path(with_zero):
    """Unit scales, no bias, fp32 out, |acc| < 2^24: every step is exact."""
    a, b = rand_i8((17, 200), 14, -50, 50), rand_i8((9, 200), 15, -50, 50)
    one = torch.tensor(1.0)
    a_zero = torch.full((17, 1), 7, dtype=torch.int32) if with_zero else None
    out = lowbit.int8_gemm(a, b, one, torch.ones(9, 1), out_dtype=torch.float32, a_zero=a_zero)
    want = i64(a) @ i64(b).T
    if with_zero:
        want = want - 7 * i64(b).sum(1)[None]
    assert np.abs(want).max() < 2**24
    assert np.array_equal(out.numpy(), want.astype(np.float32))


def test_int8_gemm_asymmetric_end_to_end():
    """quantize_int8(symmetric=False) activations x symmetric per-channel weights:
    the a_zero correction makes the GEMM equal the dequantized product."""
    x = torch.randn(17, 256, generator=gen(16)) + 1.5  # all-positive-ish: a real zero point
    w = torch.randn(33, 256, generator=gen(17))
    qa, sa, za = lowbit.quantize_int8(x, symmetric=False)
    qb, sb, _ = lowbit.quantize_int8(w, granularity="channel")
    out = lowbit.int8_gemm(qa, qb, sa, sb, out_dtype=torch.float32, a_zero=za)
    xd = lowbit.dequantize_int8(qa, sa, za, out_dtype=torch.float32).double()
    wd = lowbit.dequantize_int8(qb, sb, out_dtype=torch.float32).double()
    assert rel_frobenius(out.numpy(), (xd @ wd.T).numpy()) <= 2e-3


# --------------------------------------------------------------------------- fp8_scaled_mm
FP8_PAIRS = [(torch.float8_e4m3fn, torch.float8_e4m3fn), (torch.float8_e5m2, torch.float8_e5m2),
             (torch.float8_e4m3fn, torch.float8_e5m2)]


def rand_fp8(shape, dtype, seed):
    # in-range normals, cast by torch (finite codes only)
    return (torch.randn(shape, generator=gen(seed)) * 8).to(dtype)


def fp8_scale(kind, rows, k, seed, is_b):
    g = gen(seed)
    kb = -(-k // 128)
    shape = {"tensor": (), "row": (rows, 1),
             "block": ((-(-rows // 128), kb) if is_b else (rows, kb))}[kind]
    return torch.rand(shape, generator=g) * 0.1 + 0.01


def expand(s, rows, k, kind, is_b):
    s = s.double().numpy()
    if kind == "tensor":
        return np.full((rows, k), float(s))
    if kind == "row":
        return np.repeat(s, k, axis=1)
    return expand_tiles(s, (rows, k), (128 if is_b else 1, 128))


FP8_SCALE_CASES = [("tensor", "tensor"), ("row", "row"), ("row", "tensor"),
                   ("block", "block"), ("tensor", "row")]
FP8_MNK = [(0, 4, 128), (1, 1, 1), (1, 130, 4104), (17, 33, 200), (17, 1, 128), (5, 257, 384)]


def fp8_cases():
    """Every shape with every scale combination; the fp8 dtype pair rotates across them."""
    for i, (m, n, k) in enumerate(FP8_MNK):
        for j, (a_kind, b_kind) in enumerate(FP8_SCALE_CASES):
            pair = FP8_PAIRS[(i + j) % len(FP8_PAIRS)]
            name = f"{m}x{n}x{k}-{a_kind}-{b_kind}-{str(pair[0])[12:]}-{str(pair[1])[12:]}"
            yield pytest.param(m, n, k, a_kind, b_kind, pair, id=name)


@pytest.mark.parametrize("m,n,k,a_kind,b_kind,dtypes", list(fp8_cases()))
@out_dtypes
def test_fp8_scaled_mm(m, n, k, a_kind, b_kind, dtypes, out_dtype):
    a, b = rand_fp8((m, k), dtypes[0], 20), rand_fp8((n, k), dtypes[1], 21)
    sa, sb = fp8_scale(a_kind, m, k, 22, False), fp8_scale(b_kind, n, k, 23, True)
    bias = torch.randn(n, generator=gen(24))
    ad = a.double().numpy() * expand(sa, m, k, a_kind, False)
    bd = b.double().numpy() * expand(sb, n, k, b_kind, True)
    for with_bias, fast_accum in ((False, False), (True, False), (False, True)):
        out = lowbit.fp8_scaled_mm(a, b, sa, sb, bias if with_bias else None,
                                   out_dtype=out_dtype, fast_accum=fast_accum)
        assert out.dtype == out_dtype and out.shape == (m, n)
        want = ad @ bd.T + (bias.double().numpy()[None] if with_bias else 0)
        assert rel_frobenius(out.double().numpy(), want) <= GEMM_TOL[out_dtype]


def test_fp8_scaled_mm_block_scales_are_per_tile():
    """A distinct scale per 128-block: only a per-tile product gets these right."""
    m, n, k = 3, 200, 300
    a = torch.ones(m, k).to(torch.float8_e4m3fn)
    b = torch.ones(n, k).to(torch.float8_e4m3fn)
    sa = torch.tensor([[1.0, 2.0, 4.0]] * m)  # [M, ceil(K/128)]
    sb = torch.tensor([[1.0, 10.0, 100.0], [1000.0, 1.0, 1.0]])  # [ceil(N/128), ceil(K/128)]
    out = lowbit.fp8_scaled_mm(a, b, sa, sb, out_dtype=torch.float32)
    # K blocks hold 128, 128, 44 elements
    row0 = 128 * 1 * 1 + 128 * 2 * 10 + 44 * 4 * 100
    row1 = 128 * 1 * 1000 + 128 * 2 * 1 + 44 * 4 * 1
    assert torch.equal(out[:, :128], torch.full((m, 128), float(row0)))
    assert torch.equal(out[:, 128:], torch.full((m, n - 128), float(row1)))


def test_fp8_scaled_mm_end_to_end():
    """quantize_fp8 (1x128 activation blocks, 128x128 weight blocks) -> fp8_scaled_mm is
    close to the fp32 product."""
    x = torch.randn(17, 384, generator=gen(30))
    w = torch.randn(130, 384, generator=gen(31))
    qa, sa = lowbit.quantize_fp8(x, granularity="block", block=(1, 128))
    qb, sb = lowbit.quantize_fp8(w, granularity="block", block=(128, 128))
    out = lowbit.fp8_scaled_mm(qa, qb, sa, sb, out_dtype=torch.float32)
    ad = lowbit.dequantize_fp8(qa, sa, out_dtype=torch.float32).double()
    bd = lowbit.dequantize_fp8(qb, sb, out_dtype=torch.float32).double()
    assert rel_frobenius(out.numpy(), (ad @ bd.T).numpy()) <= 2e-3
    assert rel_frobenius(out.numpy(), (x.double() @ w.double().T).numpy()) <= 0.1


# ------------------------------------------------------------------------------ w4a16_gemm
def dense_from(w):
    """The Int4Weight's dense [N, K] float64 weight, from its fields (independent unpack)."""
    u = unpack_nibbles(w.qweight.numpy()).astype(np.float64)
    g = w.group_size
    z = 8.0 if w.zeros is None else np.repeat(w.zeros.numpy().astype(np.float64), g, axis=1)
    return (u - z) * np.repeat(w.scales.double().numpy(), g, axis=1)


W4_MNK = [(0, 8, 256), (1, 1, 128), (17, 48, 256), (5, 33, 4224)]


@pytest.mark.parametrize("m,n,k", W4_MNK, ids=[f"{m}x{n}x{k}" for m, n, k in W4_MNK])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: str(d)[6:])
def test_w4a16_gemm(m, n, k, group_size, symmetric, dtype):
    w = lowbit.int4_quantize(torch.randn(n, k, generator=gen(40)).to(dtype),
                             group_size=group_size, symmetric=symmetric)
    x = torch.randn(m, k, generator=gen(41)).to(dtype)
    bias = torch.randn(n, generator=gen(42)).to(dtype)
    wd = dense_from(w)
    for b, layout in ((None, "contiguous"), (bias, "transposed")):
        out = lowbit.w4a16_gemm(with_layout(x, layout), w, b)
        assert out.dtype == dtype and out.shape == (m, n)
        want = x.double().numpy() @ wd.T + (0 if b is None else b.double().numpy()[None])
        assert rel_frobenius(out.double().numpy(), want) <= GEMM_TOL[dtype]


# ------------------------------------------------------------------------------ w8a16_gemm
W8_GRANS = [("channel", 128), ("group", 32), ("group", 64), ("group", 128)]


@pytest.mark.parametrize("m,n,k", W4_MNK, ids=[f"{m}x{n}x{k}" for m, n, k in W4_MNK])
@pytest.mark.parametrize("gran,group_size", W8_GRANS,
                         ids=["channel", "group32", "group64", "group128"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: str(d)[6:])
def test_w8a16_gemm(m, n, k, gran, group_size, dtype):
    w = torch.randn(n, k, generator=gen(50)).to(dtype)
    q, s, _ = lowbit.quantize_int8(w, granularity=gran, group_size=group_size)
    assert q.dtype == torch.int8 and s.shape == ((n, 1) if gran == "channel"
                                                 else (n, k // group_size))
    x = torch.randn(m, k, generator=gen(51)).to(dtype)
    bias = torch.randn(n, generator=gen(52)).to(dtype)
    # The dense weight in float64, each int8 value times its scale, expanded here.
    wd = i64(q).astype(np.float64) * np.repeat(s.double().numpy(), k // s.shape[1], axis=1)
    for b, layout in ((None, "contiguous"), (bias, "transposed"), (bias.float(), "offset")):
        out = lowbit.w8a16_gemm(with_layout(x, layout), q, s, b)
        assert out.dtype == dtype and out.shape == (m, n)
        want = x.double().numpy() @ wd.T + (0 if b is None else b.double().numpy()[None])
        assert rel_frobenius(out.double().numpy(), want) <= GEMM_TOL[dtype]


def test_w8a16_gemm_per_group_scales_are_per_group():
    """Scaling one group of one row changes only that row's share of that group's K."""
    x = torch.randn(3, 128, generator=gen(53))
    q = rand_i8((5, 128), 54, lo=-127)
    s = torch.full((5, 4), 0.01)
    base = lowbit.w8a16_gemm(x, q, s)
    s2 = s.clone()
    s2[2, 1] = 0.03
    got = lowbit.w8a16_gemm(x, q, s2) - base
    want = 0.02 * (x[:, 32:64].double() @ q[2, 32:64].double())
    assert torch.allclose(got[:, 2].double(), want, rtol=1e-4, atol=1e-5)
    assert torch.equal(got[:, [0, 1, 3, 4]], torch.zeros(3, 4))
