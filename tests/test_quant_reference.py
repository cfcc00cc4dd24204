"""Properties of scaled quantization (reference, then the torch ops on CPU).

Every expectation here is computed independently of lowbit (tests/lowbit_testing.py): the
dynamic scales from explicit per-tile loops, error bounds from the SPEC's rounding rules.
Error bounds carry an explicit fp32 term: ``x * inv`` and ``q * scale`` are each one
correctly rounded fp32 operation (relative error <= 2^-24), which can move a value that is
within an fp32 ulp of a rounding tie, or add an ulp to the dequantized value.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import lowbit
from lowbit import reference as R
from lowbit_testing import (FLOAT_DTYPES, FP8, FP8_FORMATS, GRAN_IDS, GRANS, LAYOUTS, MIN_SCALE,
                            TINY_ABSMAX, absmax_scale, expand_scale, expected_dequantize_fp8,
                            expected_dequantize_int8, expected_int4_quantize,
                            expected_quantize_fp8, expected_quantize_int8, expected_scale_shape,
                            f32_bits_equal, floored, minmax, round_to, tiny_input,
                            unpack_nibbles, with_layout)

F32 = np.float32
EPS = 2.0 ** -24  # unit roundoff of fp32

# GRANS (lowbit_testing): "block" covers weights (128x128) and activations (1x128); shapes
# drawn below make ragged edges common.


# ------------------------------------------------------------------------------ inputs
@st.composite
def shapes(draw, gran, group_size, block):
    if gran == "group":
        k = group_size * draw(st.integers(1, 4))
    else:
        k = draw(st.sampled_from([1, 2, 7, 64, 127, 128, 129, 200, 256, 300]))
    if gran == "block" and tuple(block) == (128, 128):
        m = draw(st.sampled_from([0, 1, 5, 127, 128, 129, 200, 257]))
    else:
        m = draw(st.integers(0, 40))
    return m, k


@st.composite
def values(draw, shape):
    """float32 data of ``shape``: a distribution, a magnitude from 2^-20 to 2^20, and
    sprinkled exact zeros, constant rows and outliers (so all-zero and constant slices
    occur)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "uniform", "positive", "negative", "heavy", "ints"]))
    mag = 2.0 ** draw(st.integers(-20, 20))
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "uniform":
        x = rng.uniform(-1, 1, shape)
    elif kind == "positive":
        x = rng.uniform(0, 1, shape)
    elif kind == "negative":
        x = -rng.uniform(0, 1, shape)
    elif kind == "heavy":
        x = rng.standard_cauchy(shape)
    else:
        x = rng.integers(-3, 4, shape).astype(np.float64)
    x = (x * mag).astype(F32)
    if x.size:
        if draw(st.booleans()):
            x[rng.random(shape) < 0.2] = 0
        if x.ndim == 2 and x.shape[0] > 2 and draw(st.booleans()):
            x[0] = 0  # an all-zero row
            x[1] = F32(draw(st.sampled_from([-3.0, 0.75, 1e-3, 12345.0])) * mag)  # constant
    return x


def cases(gran, group_size, block):
    return shapes(gran, group_size, block).flatmap(values)


# The property tests draw the granularity within a family, so each family's test runs the
# profile's full example count across its cases.
FAMILIES = {"perrow": GRANS[:3], "group": GRANS[3:6], "block": GRANS[6:]}
families = pytest.mark.parametrize("family", list(FAMILIES))


def family_cases(family):
    """(granularity, group_size, block), x."""
    return st.sampled_from(FAMILIES[family]).flatmap(
        lambda g: cases(*g).map(lambda x: (g, x)))


# ------------------------------------------------------------------------------------ int8
@families
def test_int8_symmetric_properties(family):
    @given(family_cases(family))
    def check(case):
        (gran, group_size, block), x = case
        q, s, z = R.quantize_int8(x, granularity=gran, group_size=group_size, block=block)
        assert z is None and q.dtype == np.int8 and q.shape == x.shape
        want_s = absmax_scale(x, 127, gran, group_size, block)
        assert f32_bits_equal(s, want_s), "dynamic scale must be absmax / 127 in fp32"
        assert q.min(initial=0) >= -127
        sf = expand_scale(s, x.shape, gran, group_size, block)
        deq = R.dequantize_int8(q, s)
        assert np.array_equal(deq, (q.astype(F32) * sf).astype(F32))
        bound = sf / 2 + sf * 127 * 4 * EPS + np.abs(x) * 2 * EPS
        assert np.all(np.abs(x.astype(np.float64) - deq) <= bound)
        assert np.all(deq[x == 0] == 0) and np.all(q[x == 0] == 0)
        # static path with the dynamic scale gives the same codes
        q2, s2, _ = R.quantize_int8(x, s, granularity=gran, group_size=group_size, block=block)
        assert np.array_equal(q2, q) and f32_bits_equal(s2, s)

    check()


@families
def test_int8_asymmetric_properties(family):
    @given(family_cases(family))
    def check(case):
        (gran, group_size, block), x = case
        q, s, z = R.quantize_int8(x, granularity=gran, group_size=group_size, block=block,
                                  symmetric=False)
        lo, hi = minmax(x, gran, group_size, block)
        want_s = floored(hi - lo, 255)
        assert f32_bits_equal(s, want_s)
        want_z = np.clip(np.rint(F32(-128) - (lo / want_s).astype(F32)), -128, 127)
        assert np.array_equal(np.asarray(z), want_z.astype(np.int32))
        sf = expand_scale(s, x.shape, gran, group_size, block)
        zf = expand_scale(np.asarray(z, F32), x.shape, gran, group_size, block)
        deq = R.dequantize_int8(q, s, z)
        assert np.array_equal(deq, ((q.astype(F32) - zf) * sf).astype(F32))
        # The widened range [min(min, 0), max(max, 0)] spans 255 steps: every value is
        # within half a step (plus the fp32 term), and 0 is exact.
        bound = sf / 2 + sf * 255 * 4 * EPS + np.abs(x) * 2 * EPS
        assert np.all(np.abs(x.astype(np.float64) - deq) <= bound)
        assert np.all(deq[x == 0] == 0) and np.array_equal(q[x == 0], zf[x == 0].astype(np.int8))
        q2, _, _ = R.quantize_int8(x, s, z, granularity=gran, group_size=group_size,
                                   block=block, symmetric=False)
        assert np.array_equal(q2, q)

    check()


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_int8_zero_and_constant_rows(symmetric):
    x = np.zeros((4, 64), F32)
    x[1] = 2.5
    x[2] = -7.0
    x[3, :] = np.linspace(-1, 3, 64)
    q, s, z = R.quantize_int8(x, granularity="token", symmetric=symmetric)
    if symmetric:
        assert s[0, 0] == 1 and np.all(q[0] == 0)
        assert s[1, 0] == F32(2.5) / F32(127) and np.all(q[1] == 127)
        assert s[2, 0] == F32(7.0) / F32(127) and np.all(q[2] == -127)
    else:
        assert s[0, 0] == 1 and z[0, 0] == -128 and np.all(q[0] == -128)
        assert s[1, 0] == F32(2.5) / F32(255) and z[1, 0] == -128 and np.all(q[1] == 127)
        assert s[2, 0] == F32(7.0) / F32(255) and z[2, 0] == 127 and np.all(q[2] == -128)
    deq = R.dequantize_int8(q, s, z)
    assert np.all(deq[0] == 0)
    for r, c in ((1, 2.5), (2, -7.0)):
        assert np.all(np.abs(deq[r] - c) <= s[r, 0] / 2)


def test_int8_rounds_half_to_even():
    x = np.array([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.0, 200.0, -200.0]], F32)
    q, _, _ = R.quantize_int8(x, np.array(1.0, F32), granularity="tensor")
    assert q.tolist() == [[0, 2, 2, 0, -2, -2, 126, 127, 127, -127]]


# ------------------------------------------------------------------------------------- fp8
@pytest.mark.parametrize("fmt", FP8_FORMATS)
@families
def test_fp8_properties(fmt, family):
    _, fmax, bias, mbits, _ = FP8[fmt]

    @given(family_cases(family))
    def check(case):
        (gran, group_size, block), x = case
        codes, s = R.quantize_fp8(x, fmt=fmt, granularity=gran, group_size=group_size,
                                  block=block)
        assert codes.dtype == np.uint8 and codes.shape == x.shape
        assert s.shape == expected_scale_shape(x.shape, gran, group_size, block)
        assert f32_bits_equal(s, absmax_scale(x, fmax, gran, group_size, block))
        sf = expand_scale(s, x.shape, gran, group_size, block)
        deq = R.dequantize_fp8(codes, s, fmt=fmt).astype(np.float64)
        assert not np.isnan(deq).any()
        # Round to nearest: half an ulp, relative 2^-(mbits+1) for normal values, absolute
        # half the subnormal spacing 2^(1-bias-mbits)/2 below the smallest normal.
        ax = np.abs(x).astype(np.float64)
        bound = np.maximum(ax * 2.0 ** -(mbits + 1), sf * 2.0 ** (-bias - mbits))
        bound = bound * (1 + 4 * EPS) + ax * 4 * EPS
        assert np.all(np.abs(x - deq) <= bound)
        normal = ax >= sf * 2.0 ** (1 - bias)
        assert np.all(np.abs(x - deq)[normal] <= ax[normal] * (2.0 ** -(mbits + 1) + 4 * EPS))
        assert np.all(deq[x == 0] == 0)
        codes2, _ = R.quantize_fp8(x, s, fmt=fmt, granularity=gran, group_size=group_size,
                                   block=block)
        assert np.array_equal(codes2, codes)

    check()


@pytest.mark.parametrize("fmt", FP8_FORMATS)
def test_fp8_zero_and_constant_rows(fmt):
    _, fmax, *_ = FP8[fmt]
    x = np.zeros((3, 256), F32)
    x[1] = 3.0
    x[2] = -0.001
    codes, s = R.quantize_fp8(x, fmt=fmt, granularity="token")
    assert s[0, 0] == 1 and np.all(codes[0] == 0)
    assert s[1, 0] == F32(3.0) / F32(fmax)
    assert s[2, 0] == F32(0.001) / F32(fmax)
    deq = R.dequantize_fp8(codes, s, fmt=fmt)
    assert np.all(deq[0] == 0)
    assert np.all(np.abs(deq[1] - 3.0) <= 3.0 * 2.0 ** -(FP8[fmt][3] + 1))
    assert np.all(np.abs(deq[2] + 0.001) <= 0.001 * 2.0 ** -(FP8[fmt][3] + 1))


@pytest.mark.parametrize("fmt", FP8_FORMATS)
def test_fp8_nan_and_inf_inputs(fmt):
    """A NaN makes its slice's scale NaN (it propagates through absmax, as torch.amax
    does); a static scale keeps other slices unaffected; Inf saturates."""
    _, fmax, _, _, nan = FP8[fmt]
    x = np.ones((2, 8), F32)
    x[0, 3] = np.nan
    x[1, 5] = np.inf
    codes, s = R.quantize_fp8(x, np.array(1.0, F32), fmt=fmt)
    dec = R.dequantize_fp8(codes, np.array(1.0, F32), fmt=fmt)
    assert codes[0, 3] == nan and dec[1, 5] == fmax and dec[0, 0] == 1
    _, s = R.quantize_fp8(x, fmt=fmt, granularity="token")
    assert np.isnan(s[0, 0])


# ------------------------------------------------------------------ tiny dynamic scales
# An absmax under qmax * 2^-126 gets the scale floor 2^-126 (with absmax / qmax itself, the
# fp32 reciprocal is +Inf for the smaller ones, and 0 * Inf made the slice's zeros NaN).
@pytest.mark.parametrize("absmax", TINY_ABSMAX, ids=lambda a: f"{a:.3g}")
@pytest.mark.parametrize("gran,group_size,block", GRANS, ids=GRAN_IDS)
@pytest.mark.parametrize("fmt", FP8_FORMATS)
def test_fp8_tiny_absmax(fmt, gran, group_size, block, absmax):
    _, fmax, bias, mbits, _ = FP8[fmt]
    x = tiny_input(absmax)
    codes, s = R.quantize_fp8(x, fmt=fmt, granularity=gran, group_size=group_size, block=block)
    assert f32_bits_equal(s, absmax_scale(x, fmax, gran, group_size, block))
    assert np.all(s >= MIN_SCALE) and np.all(np.isfinite(F32(1) / s))
    assert np.any(s == MIN_SCALE) == (absmax < fmax * 2.0 ** -126)
    deq = R.dequantize_fp8(codes, s, fmt=fmt).astype(np.float64)
    assert not np.isnan(deq).any()
    assert np.all(deq[x == 0] == 0)
    # x * 2^126 and q * 2^-126 are exact, so the only error is fp8's rounding: half an ulp,
    # relative 2^-(mbits+1) where x * 2^126 is a normal fp8 value.
    sf = expand_scale(s, x.shape, gran, group_size, block).astype(np.float64)
    ax = np.abs(x).astype(np.float64)
    assert np.all(np.abs(x - deq) <= np.maximum(ax * 2.0 ** -(mbits + 1),
                                                sf * 2.0 ** (-bias - mbits)))
    normal = ax >= sf * 2.0 ** (1 - bias)
    assert np.all(np.abs(x - deq)[normal] <= ax[normal] * 2.0 ** -(mbits + 1))
    codes2, s2 = R.quantize_fp8(x, s, fmt=fmt, granularity=gran, group_size=group_size,
                                block=block)
    assert np.array_equal(codes2, codes) and f32_bits_equal(s2, s)


@pytest.mark.parametrize("absmax", TINY_ABSMAX, ids=lambda a: f"{a:.3g}")
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_int8_tiny_absmax(symmetric, absmax):
    x = tiny_input(absmax)
    q, s, z = R.quantize_int8(x, granularity="token", symmetric=symmetric)
    if symmetric:
        want = absmax_scale(x, 127, "token", 128, None)
    else:
        lo, hi = minmax(x, "token", 128, None)
        want = floored(hi - lo, 255)
    assert f32_bits_equal(s, want) and s[-1, 0] == 1 and np.all(s[:-1] >= MIN_SCALE)
    deq = R.dequantize_int8(q, s, z).astype(np.float64)
    assert not np.isnan(deq).any() and np.all(deq[x == 0] == 0)
    # Half a step, plus the fp32 rounding of x * inv and q * scale.
    sf = expand_scale(s, x.shape, "token").astype(np.float64)
    bound = sf / 2 + sf * 255 * 4 * EPS + np.abs(x) * 2 * EPS
    assert np.all(np.abs(x - deq) <= bound)


@pytest.mark.parametrize("absmax", TINY_ABSMAX, ids=lambda a: f"{a:.3g}")
@pytest.mark.parametrize("scale_dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
def test_int4_tiny_absmax(symmetric, scale_dtype, absmax):
    """The floor holds after the scales are rounded to bf16; fp16 cannot store 2^-126, so
    the stored scale rounds to 0 and becomes 1 (the values then quantize to 0)."""
    w = tiny_input(absmax, (4, 128))
    qweight, scales, zeros = R.quantize_int4(w, 64, symmetric, scale_dtype)
    assert np.all(scales[-1] == 1)
    deq = R.dequantize_int4(qweight, scales, zeros, 64).astype(np.float64)
    assert not np.isnan(deq).any() and np.all(deq[w == 0] == 0)
    if scale_dtype == "float16":
        assert np.all(scales == 1) and np.all(deq == 0)
        return
    assert np.all(scales >= MIN_SCALE)
    if absmax < 7 * 2.0 ** -126:
        assert np.all(scales[:-1] == MIN_SCALE)
    # Within one step of the stored scale (half a step, plus what rounding the scale to
    # bf16 costs: test_int4_properties has the exact bound).
    sf = np.repeat(scales.astype(np.float64), 64, axis=1)
    assert np.all(np.abs(w - deq) <= sf * (1 + 64 * EPS))


@pytest.mark.parametrize("fmt", FP8_FORMATS)
def test_fp8_static_scale_is_used_as_given(fmt):
    """A given scale is never changed (it is the caller's, and dequantization uses it):
    the floor applies to dynamic scales only."""
    x = tiny_input(1e-36)
    for value in (2.0 ** -126, 1e-30, 3e-39):
        scale = np.array(value, F32)
        codes, s = R.quantize_fp8(x, scale, fmt=fmt)
        assert f32_bits_equal(s, scale)
        want = R.fp8_encode((x * (F32(1) / scale).astype(F32)).astype(F32), fmt)
        assert np.array_equal(codes, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("gran,group_size,block", GRANS, ids=GRAN_IDS)
def test_op_tiny_absmax_round_trip(gran, group_size, block, dtype):
    """Through the public ops (bf16 holds these magnitudes too; it rounds 1e-45 to 0)."""
    for absmax in TINY_ABSMAX:
        x = torch.from_numpy(tiny_input(absmax)).to(dtype)
        q, s = lowbit.quantize_fp8(x, granularity=gran, group_size=group_size, block=block)
        assert torch.all((s == float(MIN_SCALE)) | (s == 1))
        d = lowbit.dequantize_fp8(q, s, out_dtype=torch.float32)
        assert not torch.isnan(d).any() and torch.all(d[x == 0] == 0)
        assert torch.all((d - x.float()).abs() <= x.float().abs() / 16 + float(MIN_SCALE) / 2)


# ------------------------------------------------------------------------------------ int4
INT4_SCALE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                     "float16": torch.float16}
# Relative rounding of a scale stored in that dtype (half an ulp).
SCALE_ROUNDING = {"float32": 2.0 ** -24, "bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}


def int4_cases():
    """group_size, w [N >= 1, K]."""
    return st.sampled_from([32, 64, 128]).flatmap(
        lambda g: shapes("group", g, (128, 128)).map(lambda mk: (max(mk[0], 1), mk[1]))
        .flatmap(values).map(lambda w: (g, w)))


@pytest.mark.parametrize("scale_dtype", list(INT4_SCALE_DTYPES))
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
def test_int4_properties(symmetric, scale_dtype):
    sdt = INT4_SCALE_DTYPES[scale_dtype]

    @given(int4_cases())
    def check(case):
        group_size, w = case
        # Scales are stored in the weight's dtype (int4_quantize's rule), so the weight is
        # given in that dtype too: fp16 weights, fp16 scales.
        if sdt == torch.float16:
            w = np.clip(w, -60000, 60000)
        w = round_to(w, sdt)
        qweight, scales, zeros = R.quantize_int4(w, group_size, symmetric, scale_dtype)
        n, k = w.shape
        assert qweight.shape == (n, k // 2) and qweight.dtype == np.uint8
        assert scales.shape == (n, k // group_size)
        u = unpack_nibbles(qweight)
        if symmetric:
            assert zeros is None
            exact = absmax_scale(w, 7, "group", group_size, None)
            z = np.full(scales.shape, 8.0)
        else:
            lo, hi = minmax(w, "group", group_size, None)
            exact = floored(hi - lo, 15)
        stored = round_to(exact, sdt)
        stored = np.where(stored == 0, F32(1), stored).astype(F32)
        assert f32_bits_equal(scales, stored)
        if not symmetric:
            z = np.clip(np.rint(-(lo / stored).astype(F32)), 0, 15)
            assert np.array_equal(zeros, z.astype(np.uint8)), "z = clamp(rint(-min/scale))"
        sf = np.repeat(scales.astype(np.float64), group_size, axis=1)
        zf = np.repeat(z, group_size, axis=1)
        deq = ((u - zf) * sf).astype(F32)  # one correctly rounded fp32 product
        assert np.array_equal(R.dequantize_int4(qweight, scales, zeros, group_size), deq)
        # Half a step of the stored scale. When storing rounded the scale *down* by a factor
        # 1 + e, the range spans (1 + e) * 7 (or 15) steps, and the clamp can cost up to
        # 7e (or 15e) steps more: e <= 2^-8 for bf16; fp16 subnormal scales lose more.
        e = np.repeat(np.maximum(exact.astype(np.float64) / stored - 1, 0), group_size, axis=1)
        steps = np.maximum(0.5, 7 * e) if symmetric else 0.5 + 15 * e
        bound = sf * (steps + 16 * 4 * EPS) + np.abs(w) * 2 * EPS
        assert np.all(np.abs(w - deq) <= bound)
        if sdt == torch.bfloat16 or sdt == torch.float32:
            assert np.all(e <= SCALE_ROUNDING[scale_dtype] * (1 + 2 ** -8))
        assert np.all(deq[w == 0] == 0)

    check()


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
def test_int4_zero_and_constant_groups(symmetric):
    w = np.zeros((3, 64), F32)
    w[1] = 0.7
    w[2] = -5.0
    qweight, scales, zeros = R.quantize_int4(w, 64, symmetric)
    u = unpack_nibbles(qweight)
    assert scales[0, 0] == 1
    if symmetric:
        assert np.all(u[0] == 8) and np.all(u[1] == 15) and np.all(u[2] == 1)
        assert scales[1, 0] == F32(0.7) / F32(7) and scales[2, 0] == F32(5.0) / F32(7)
    else:
        assert np.all(u[0] == 0) and zeros[0, 0] == 0
        assert np.all(u[1] == 15) and zeros[1, 0] == 0 and scales[1, 0] == F32(0.7) / F32(15)
        assert np.all(u[2] == 0) and zeros[2, 0] == 15 and scales[2, 0] == F32(5.0) / F32(15)
    deq = R.dequantize_int4(qweight, scales, zeros, 64)
    assert np.all(deq[0] == 0)
    assert np.all(np.abs(deq[1:] - w[1:]) <= scales[1:] / 2)


# --------------------------------------------------------------- the torch ops, exactly
def rand(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 3).to(dtype)


# Every input dtype contiguous, and each non-contiguous layout once (with a rotating dtype):
# the layouts are handled before the dtype matters, so the full product adds nothing.
X_CASES = [(torch.float32, "contiguous"), (torch.bfloat16, "contiguous"),
           (torch.float16, "contiguous"), (torch.bfloat16, "transposed"),
           (torch.float16, "sliced"), (torch.float32, "offset")]
xcases = pytest.mark.parametrize("dtype,layout", X_CASES,
                                 ids=[f"{str(d)[6:]}-{l}" for d, l in X_CASES])
op_grans = pytest.mark.parametrize("gran,group_size,block", GRANS, ids=GRAN_IDS)

def op_shapes(gran):
    """M = 0, 1, 17 and a ragged 130-row tile; K ragged too where the granularity allows."""
    return [(0, 256), (1, 128), (17, 256), (130, 256)] + ([(3, 200)] if gran != "group" else [])


def _np(t):
    return t.detach().float().numpy()


# The format only changes the codec (checked exhaustively in test_fp8_codec.py): every
# layout runs with e4m3fn, the other formats with two of them.
FP8_OP_CASES = [("e4m3fn", d, l) for d, l in X_CASES] + [
    ("e5m2", torch.bfloat16, "contiguous"), ("e5m2", torch.float16, "transposed"),
    ("e4m3fnuz", torch.float32, "contiguous"), ("e4m3fnuz", torch.bfloat16, "offset")]


@pytest.mark.parametrize("fmt,dtype,layout", FP8_OP_CASES,
                         ids=[f"{f}-{str(d)[6:]}-{l}" for f, d, l in FP8_OP_CASES])
@op_grans
def test_op_quantize_fp8_matches_independent_quantizer(fmt, gran, group_size, block, dtype,
                                                       layout):
    for i, shape in enumerate(op_shapes(gran)):
        x = with_layout(rand(shape, dtype, i), layout)
        q, s = lowbit.quantize_fp8(x, fmt=fmt, granularity=gran, group_size=group_size,
                                   block=block)
        want_q, want_s = expected_quantize_fp8(_np(x), None, fmt, gran, group_size, block)
        assert q.dtype == FP8[fmt][0] and q.shape == x.shape
        assert tuple(s.shape) == expected_scale_shape(shape, gran, group_size, block)
        assert np.array_equal(q.view(torch.uint8).numpy(), want_q)
        assert f32_bits_equal(s.numpy(), want_s)
        # static scale path
        q2, s2 = lowbit.quantize_fp8(x, s, fmt=fmt, granularity=gran, group_size=group_size,
                                     block=block)
        assert torch.equal(q2.view(torch.uint8), q.view(torch.uint8)) and torch.equal(s2, s)
        # and back, from q in the same layout, to the case's dtype
        d = lowbit.dequantize_fp8(with_layout(q, layout), s, out_dtype=dtype)
        want = torch.from_numpy(expected_dequantize_fp8(want_q, want_s, fmt, gran, group_size,
                                                        block)).to(dtype)
        assert d.dtype == dtype and torch.equal(d, want)


@xcases
@op_grans
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_op_quantize_int8_matches_independent_quantizer(symmetric, gran, group_size, block,
                                                        dtype, layout):
    for i, shape in enumerate(op_shapes(gran)):
        x = with_layout(rand(shape, dtype, i), layout)
        q, s, z = lowbit.quantize_int8(x, granularity=gran, group_size=group_size,
                                       block=block, symmetric=symmetric)
        want_q, want_s, want_z = expected_quantize_int8(_np(x), gran, group_size, block,
                                                        symmetric)
        sshape = expected_scale_shape(shape, gran, group_size, block)
        assert q.dtype == torch.int8 and q.shape == x.shape
        assert tuple(s.shape) == sshape and s.dtype == torch.float32
        assert np.array_equal(q.numpy(), want_q) and f32_bits_equal(s.numpy(), want_s)
        if symmetric:
            assert z is None
        else:
            assert z.dtype == torch.int32 and tuple(z.shape) == sshape
            assert np.array_equal(z.numpy(), want_z)
        q2, s2, z2 = lowbit.quantize_int8(x, s, granularity=gran, group_size=group_size,
                                          block=block, symmetric=symmetric, zero=z)
        assert torch.equal(q2, q) and torch.equal(s2, s)
        d = lowbit.dequantize_int8(with_layout(q, layout), s, z, out_dtype=dtype)
        want = torch.from_numpy(expected_dequantize_int8(want_q, want_s, want_z, gran,
                                                         group_size, block)).to(dtype)
        assert d.dtype == dtype and torch.equal(d, want)


def test_op_leading_dims_token_and_group():
    x = rand((2, 3, 128), torch.bfloat16)
    for gran, sshape in (("token", (2, 3, 1)), ("group", (2, 3, 2))):
        q, s = lowbit.quantize_fp8(x, granularity=gran, group_size=64)
        want_q, want_s = expected_quantize_fp8(_np(x), None, "e4m3fn", gran, 64)
        assert tuple(s.shape) == sshape
        assert np.array_equal(q.view(torch.uint8).numpy(), want_q)
        assert f32_bits_equal(s.numpy(), want_s)
        q8, s8, _ = lowbit.quantize_int8(x, granularity=gran, group_size=64)
        assert np.array_equal(q8.numpy(), expected_quantize_int8(_np(x), gran, 64)[0])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_op_int4_quantize_matches_independent_quantizer(group_size, symmetric, dtype):
    for i, (n, layout) in enumerate(zip((1, 17, 64, 33), LAYOUTS)):
        w = with_layout(rand((n, 256), dtype, i), layout)
        iw = lowbit.int4_quantize(w, group_size=group_size, symmetric=symmetric)
        want_q, want_s, want_z = expected_int4_quantize(_np(w), group_size, symmetric, dtype)
        assert iw.shape == (n, 256) and iw.group_size == group_size
        assert iw.scales.dtype == dtype  # scales are stored in the weight's dtype
        assert np.array_equal(iw.qweight.numpy(), want_q)
        assert f32_bits_equal(iw.scales.float().numpy(), want_s)
        if symmetric:
            assert iw.zeros is None
        else:
            assert np.array_equal(iw.zeros.numpy(), want_z)
