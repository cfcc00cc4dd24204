"""FP8 encode/decode, bit-exact against ml_dtypes (a test oracle only, never a dependency).

Inputs: every bf16 bit pattern, every fp16 bit pattern (through the op), a few hundred
thousand random fp32 bit patterns, and hand-built fp32 values at the places rounding gets
hard: exact halfway points between adjacent fp8 values (ties to even), the overflow
boundary around max, and the subnormal boundaries. Decoding: all 256 codes of each format.
"""
import ml_dtypes
import numpy as np
import pytest
import torch

import lowbit
from lowbit.reference import FP8_FORMATS, fp8_decode, fp8_encode

FORMATS = ("e4m3fn", "e5m2", "e4m3fnuz")
ML = {"e4m3fn": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2,
      "e4m3fnuz": ml_dtypes.float8_e4m3fnuz}
TORCH = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2,
         "e4m3fnuz": torch.float8_e4m3fnuz}
# The SPEC's table, written out here rather than read from the library.
MAX = {"e4m3fn": 448.0, "e5m2": 57344.0, "e4m3fnuz": 240.0}
BIAS = {"e4m3fn": 7, "e5m2": 15, "e4m3fnuz": 8}
MBITS = {"e4m3fn": 3, "e5m2": 2, "e4m3fnuz": 3}
NAN = {"e4m3fn": 0x7F, "e5m2": 0x7F, "e4m3fnuz": 0x80}
MAX_CODE = {"e4m3fn": 0x7E, "e5m2": 0x7B, "e4m3fnuz": 0x7F}

fmts = pytest.mark.parametrize("fmt", FORMATS)
sats = pytest.mark.parametrize("saturate", [True, False], ids=["sat", "nosat"])


def oracle(x, fmt, saturate):
    """ml_dtypes' codes for float32 ``x`` under the SPEC's rules.

    saturate=True: the cast of x clipped to [-max, max] (NaN kept). Wherever ml_dtypes gives
    a NaN, the SPEC wants the canonical NaN code.
    """
    x = np.asarray(x, np.float32)
    if saturate:
        x = np.where(np.isnan(x), x, np.clip(x, -MAX[fmt], MAX[fmt])).astype(np.float32)
    with np.errstate(all="ignore"):
        y = x.astype(ML[fmt])
    codes = y.view(np.uint8).copy()
    codes[np.isnan(y.astype(np.float32))] = NAN[fmt]
    return codes


def all_bf16():
    return (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)


def random_fp32(n=300_000, seed=1234):
    bits = np.random.default_rng(seed).integers(0, 1 << 32, n, dtype=np.uint64)
    return bits.astype(np.uint32).view(np.float32)


def assert_codes_equal(x, got, want):
    got, want = np.asarray(got, np.uint8), np.asarray(want, np.uint8)
    bad = np.flatnonzero(got.reshape(-1) != want.reshape(-1))
    if bad.size:
        xs = np.asarray(x, np.float32).reshape(-1)
        rows = [f"x={xs[i]!r} (0x{xs[i:i+1].view(np.uint32)[0]:08x}): got 0x{got.reshape(-1)[i]:02x}"
                f" want 0x{want.reshape(-1)[i]:02x}" for i in bad[:8]]
        pytest.fail(f"{bad.size} mismatching codes, first ones:\n  " + "\n  ".join(rows))


def ulp_up(v):
    return np.nextafter(np.float32(v), np.float32(np.inf), dtype=np.float32)


def ulp_down(v):
    return np.nextafter(np.float32(v), np.float32(-np.inf), dtype=np.float32)


def finite_values(fmt):
    """(sorted non-negative finite values, their codes), computed from the bit fields."""
    b, m = BIAS[fmt], MBITS[fmt]
    vals, codes = [], []
    for c in range(MAX_CODE[fmt] + 1):
        e, f = c >> m, c & ((1 << m) - 1)
        v = f * 2.0 ** (1 - b - m) if e == 0 else (1 + f / (1 << m)) * 2.0 ** (e - b)
        vals.append(v)
        codes.append(c)
    return np.array(vals, np.float64), np.array(codes, np.uint8)


# ----------------------------------------------------------------------------- the table
@fmts
def test_format_table_matches_spec(fmt):
    f = FP8_FORMATS[fmt]
    assert (f.max_value, f.bias, f.mbits, f.nan_code, f.max_code) == (
        MAX[fmt], BIAS[fmt], MBITS[fmt], NAN[fmt], MAX_CODE[fmt])
    vals, _ = finite_values(fmt)
    assert vals[-1] == MAX[fmt]
    assert float(ml_dtypes.finfo(ML[fmt]).max) == MAX[fmt]


# --------------------------------------------------------------------- encode, exhaustive
@fmts
@sats
def test_encode_all_bf16_patterns(fmt, saturate):
    x = all_bf16()
    assert_codes_equal(x, fp8_encode(x, fmt, saturate), oracle(x, fmt, saturate))


@fmts
@sats
def test_encode_random_fp32_patterns(fmt, saturate):
    x = random_fp32()
    assert_codes_equal(x, fp8_encode(x, fmt, saturate), oracle(x, fmt, saturate))


@fmts
@sats
def test_encode_all_fp8_values_round_trip(fmt, saturate):
    """Every code decodes and re-encodes to itself (NaN codes to the canonical NaN; e5m2's
    +-Inf to +-max when saturating)."""
    codes = np.arange(256, dtype=np.uint8)
    v = fp8_decode(codes, fmt)
    want = np.where(np.isnan(v), NAN[fmt], codes)
    if saturate:
        want = np.where(np.isinf(v), MAX_CODE[fmt] | (codes & 0x80), want)
    want = want.astype(np.uint8)
    assert_codes_equal(v, fp8_encode(v, fmt, saturate), want)
    assert_codes_equal(v, oracle(v, fmt, saturate), want)


# ------------------------------------------------------------------ encode, hand-built edges
@fmts
@sats
def test_encode_halfway_points_tie_to_even(fmt, saturate):
    """The midpoint of two adjacent fp8 values goes to the one with an even code; one fp32
    ulp either side goes to the nearer one. Both signs; expectations built by hand."""
    vals, codes = finite_values(fmt)
    lo, hi = vals[:-1], vals[1:]
    mid = ((lo + hi) / 2).astype(np.float32)
    assert np.array_equal(mid.astype(np.float64), (lo + hi) / 2)  # exact in fp32
    even = np.where(codes[:-1] % 2 == 0, codes[:-1], codes[1:])
    below, above = ulp_down(mid), ulp_up(mid)
    x = np.concatenate([mid, below, above])
    want = np.concatenate([even, codes[:-1], codes[1:]]).astype(np.uint8)
    for sign in (1, -1):
        xs = (sign * x).astype(np.float32)
        w = want if sign == 1 else np.where(
            want == 0, 0 if fmt == "e4m3fnuz" else 0x80, want | 0x80).astype(np.uint8)
        assert_codes_equal(xs, fp8_encode(xs, fmt, saturate), w)
        assert_codes_equal(xs, oracle(xs, fmt, saturate), w)


# (value just past max that is a tie, whether that tie rounds up into overflow)
OVERFLOW_TIE = {"e4m3fn": (464.0, False), "e5m2": (61440.0, True), "e4m3fnuz": (248.0, True)}


@fmts
@sats
def test_encode_around_max(fmt, saturate):
    """max, the tie just above it (e4m3fn: 464 ties to 448, even; e5m2: 61440 and e4m3fnuz:
    248 tie up, past max), one ulp around that tie, large values, and Inf."""
    mx, mc, nan = MAX[fmt], MAX_CODE[fmt], NAN[fmt]
    tie, tie_overflows = OVERFLOW_TIE[fmt]
    if saturate:
        over = mc
    else:
        over = 0x7C if fmt == "e5m2" else nan  # e5m2 has Inf; the others give NaN
    cases = [
        (mx, mc), (ulp_up(mx), mc), (ulp_down(tie), mc),
        (tie, over if tie_overflows else mc), (ulp_up(tie), over),
        (2 * mx, over), (3.0e38, over), (np.inf, over),
    ]
    for sign in (1.0, -1.0):
        x = np.array([sign * v for v, _ in cases], np.float32)
        want = np.array([c if (sign > 0 or c == nan) else c | 0x80 for _, c in cases], np.uint8)
        assert_codes_equal(x, fp8_encode(x, fmt, saturate), want)
        assert_codes_equal(x, oracle(x, fmt, saturate), want)


@fmts
@sats
def test_encode_subnormal_boundaries(fmt, saturate):
    """s = smallest subnormal: s/2 ties to 0, just above goes to s, 3s/2 ties to 2s; the
    midpoint of the largest subnormal and the smallest normal ties up to the normal (even);
    fp32 subnormals become (signed) zero."""
    s = np.float32(2.0 ** (1 - BIAS[fmt] - MBITS[fmt]))
    nsub = (1 << MBITS[fmt]) - 1  # largest subnormal code
    cases = [
        (s, 1), (s / 2, 0), (ulp_up(s / 2), 1), (ulp_down(s / 2), 0), (3 * s / 2, 2),
        ((nsub + 0.5) * s, nsub + 1), (ulp_down((nsub + 0.5) * s), nsub),
        (np.float32(2.0 ** (1 - BIAS[fmt])), nsub + 1),
        (np.float32(1e-45), 0), (np.float32(1e-40), 0), (np.float32(0.0), 0),
    ]
    for sign in (1.0, -1.0):
        x = np.array([sign * v for v, _ in cases], np.float32)
        if sign > 0:
            want = [c for _, c in cases]
        elif fmt == "e4m3fnuz":  # no -0: a negative value that rounds to 0 is +0
            want = [c | 0x80 if c else 0 for _, c in cases]
        else:
            want = [c | 0x80 for _, c in cases]
        want = np.array(want, np.uint8)
        assert_codes_equal(x, fp8_encode(x, fmt, saturate), want)
        assert_codes_equal(x, oracle(x, fmt, saturate), want)


@fmts
@sats
def test_encode_nan_and_signed_zero(fmt, saturate):
    qnan = np.float32(np.nan)
    snan = np.array([0x7F800001], np.uint32).view(np.float32)[0]
    negnan = np.array([0xFFC00000], np.uint32).view(np.float32)[0]
    x = np.array([qnan, snan, negnan, 0.0, -0.0], np.float32)
    negzero = 0x00 if fmt == "e4m3fnuz" else 0x80
    want = np.array([NAN[fmt]] * 3 + [0x00, negzero], np.uint8)
    assert_codes_equal(x, fp8_encode(x, fmt, saturate), want)


@fmts
def test_encode_keeps_shape_and_reads_any_layout(fmt):
    x = np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32) * 50
    full = fp8_encode(x, fmt)
    assert full.shape == x.shape and full.dtype == np.uint8
    assert np.array_equal(fp8_encode(x.T, fmt), full.T)
    assert np.array_equal(fp8_encode(x[1::2, 3:], fmt), full[1::2, 3:])
    assert fp8_encode(np.float32(3.0), fmt).shape == ()
    assert fp8_encode(np.zeros((0, 4), np.float32), fmt).shape == (0, 4)


def test_encode_rejects_unknown_format():
    with pytest.raises(ValueError, match="fmt"):
        fp8_encode(np.ones(2, np.float32), "e3m4")


# -------------------------------------------------------------------------------- decode
@fmts
def test_decode_all_codes(fmt):
    codes = np.arange(256, dtype=np.uint8)
    ours = fp8_decode(codes, fmt)
    theirs = codes.view(ML[fmt]).astype(np.float32)
    assert ours.dtype == np.float32
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    finite = ~np.isnan(theirs)
    # Bit-exact, so -0 and +-Inf are checked too.
    assert np.array_equal(ours[finite].view(np.uint32), theirs[finite].view(np.uint32))
    nan_codes = set(np.flatnonzero(np.isnan(ours)).tolist())
    assert NAN[fmt] in nan_codes
    assert nan_codes == {"e4m3fn": {0x7F, 0xFF}, "e5m2": {0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF},
                         "e4m3fnuz": {0x80}}[fmt]


@fmts
def test_decode_matches_bit_field_formula(fmt):
    vals, codes = finite_values(fmt)
    assert np.array_equal(fp8_decode(codes, fmt).astype(np.float64), vals)
    neg = codes[1:] | 0x80 if fmt == "e4m3fnuz" else codes | 0x80
    assert np.array_equal(fp8_decode(neg.astype(np.uint8), fmt).astype(np.float64),
                          -(vals[1:] if fmt == "e4m3fnuz" else vals))


def test_decode_rejects_non_uint8():
    with pytest.raises(TypeError, match="codes"):
        fp8_decode(np.arange(4, dtype=np.int32), "e4m3fn")


# ------------------------------------------------------------------ through the torch op
@fmts
@sats
def test_op_bf16_patterns(fmt, saturate):
    """lowbit.quantize_fp8 with scale 1 on every bf16 pattern, given as fp32 and as bf16."""
    x = all_bf16()
    want = fp8_encode(x, fmt, saturate)
    xt = torch.from_numpy(x)
    xb = torch.from_numpy((np.arange(1 << 16, dtype=np.uint32)).astype(np.uint16)).view(torch.bfloat16)
    one = torch.tensor(1.0)
    for inp in (xt, xb):
        q, s = lowbit.quantize_fp8(inp, one, fmt=fmt, saturate=saturate)
        assert q.dtype == TORCH[fmt] and q.shape == inp.shape
        assert s.shape == () and s.dtype == torch.float32 and s.item() == 1.0
        assert_codes_equal(x, q.view(torch.uint8).numpy(), want)


@fmts
@sats
def test_op_fp16_patterns(fmt, saturate):
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    x = h.astype(np.float32)  # exact
    q, _ = lowbit.quantize_fp8(torch.from_numpy(h.copy()), torch.tensor(1.0), fmt=fmt,
                               saturate=saturate)
    assert_codes_equal(x, q.view(torch.uint8).numpy(), oracle(x, fmt, saturate))


@fmts
@sats
def test_op_random_fp32_patterns(fmt, saturate):
    x = random_fp32(200_000, seed=99)
    q, _ = lowbit.quantize_fp8(torch.from_numpy(x), torch.tensor(1.0), fmt=fmt,
                               saturate=saturate, backend="reference")
    assert_codes_equal(x, q.view(torch.uint8).numpy(), oracle(x, fmt, saturate))


@fmts
def test_op_dequantize_all_codes(fmt):
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(TORCH[fmt])
    v = lowbit.dequantize_fp8(codes, torch.tensor(1.0), out_dtype=torch.float32)
    want = fp8_decode(np.arange(256, dtype=np.uint8), fmt)
    got = v.numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))


@fmts
def test_torch_cast_agrees_on_in_range_values(fmt):
    """Sanity cross-check: torch's own cast and our non-saturating codes agree wherever the
    value is finite and within [-max, max] (they differ only in NaN/overflow policy)."""
    x = np.concatenate([all_bf16(), random_fp32(100_000, seed=7)])
    x = x[np.isfinite(x) & (np.abs(x) <= MAX[fmt])]
    theirs = torch.from_numpy(x).to(TORCH[fmt]).view(torch.uint8).numpy()
    assert_codes_equal(x, fp8_encode(x, fmt, saturate=False), theirs)
