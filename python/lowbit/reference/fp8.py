"""FP8 encode/decode written with integer bit operations (the definition lowbit's kernels
are checked against).

Encoding follows the SPEC: round to nearest, ties to even, with subnormals; overflow and
+-Inf saturate to +-max (``saturate=True``) or become NaN (e4m3fn, e4m3fnuz) / +-Inf (e5m2);
every NaN becomes the format's canonical NaN code; -0 stays -0 except in e4m3fnuz.
"""
from __future__ import annotations

import numpy as np

from .formats import fp8_format

__all__ = ["fp8_encode", "fp8_decode", "round_to_bf16"]


def fp8_encode(x, fmt: str = "e4m3fn", saturate: bool = True) -> np.ndarray:
    """float32 array -> uint8 codes of ``fmt`` (same shape)."""
    f = fp8_format(fmt)
    x = np.asarray(x, dtype=np.float32)
    bits = np.ascontiguousarray(x).view(np.uint32).astype(np.int64).reshape(x.shape)
    sign = (bits >> 31) & 1
    mag_bits = bits & 0x7FFFFFFF
    is_nan = mag_bits > 0x7F800000
    is_inf = mag_bits == 0x7F800000

    exp_field = mag_bits >> 23
    # The significand as an integer with the implicit bit; fp32 subnormals have none and
    # share the exponent of the smallest normal.
    sig = np.where(exp_field > 0, (mag_bits & 0x7FFFFF) | 0x800000, mag_bits & 0x7FFFFF)
    exp = np.maximum(exp_field, 1) - 127  # unbiased exponent of sig's leading bit position

    # Bits of sig to drop: 23 - mbits for a normal result, more for a subnormal one. A shift
    # of 26 or more leaves nothing and a remainder under half an ulp, so the cap is harmless.
    min_exp = 1 - f.bias
    shift = (23 - f.mbits) + np.maximum(0, min_exp - exp)
    shift = np.minimum(shift, 40)
    kept = sig >> shift
    rem = sig & ((np.int64(1) << shift) - 1)
    half = np.int64(1) << (shift - 1)
    round_up = (rem > half) | ((rem == half) & ((kept & 1) == 1))
    kept = kept + round_up
    # A normal result: kept holds the implicit bit at position mbits, so adding
    # (biased_exp - 1) << mbits yields the code, and a rounding carry moves into the
    # exponent field by itself. A subnormal result: kept is the code (kept == 1 << mbits
    # after a carry is exactly the smallest normal's code).
    biased = exp + f.bias
    code = np.where(biased >= 1, ((biased - 1) << f.mbits) + kept, kept)

    overflow = is_inf | (~is_nan & (code > f.max_code))
    if saturate:
        code = np.where(overflow, f.max_code, code)
        nan_out = is_nan
    elif f.inf_code is not None:
        code = np.where(overflow, f.inf_code, code)
        nan_out = is_nan
    else:
        nan_out = is_nan | overflow

    if f.negative_zero:
        out = code | (sign << 7)
    else:
        # e4m3fnuz: 0x80 is NaN, so a negative value that rounds to zero is +0.
        out = np.where(code == 0, 0, code | (sign << 7))
    out = np.where(nan_out, f.nan_code, out)
    return out.astype(np.uint8)


def fp8_decode(codes, fmt: str = "e4m3fn") -> np.ndarray:
    """uint8 codes of ``fmt`` -> float32 (exact: every fp8 value is an fp32 value)."""
    f = fp8_format(fmt)
    c = np.asarray(codes)
    if c.dtype != np.uint8:
        raise TypeError(f"codes must be a uint8 array; got {c.dtype}")
    c = c.astype(np.int64)
    sign = c >> 7
    mag = c & 0x7F
    e = mag >> f.mbits
    m = mag & ((1 << f.mbits) - 1)
    # Normals: place the fields straight into an fp32 bit pattern.
    normal_bits = ((e - f.bias + 127) << 23) | (m << (23 - f.mbits))
    # Subnormals: m * 2^(1 - bias - mbits), a power-of-two scaling that is exact in fp32.
    sub_bits = (
        np.ldexp(m.astype(np.float32), 1 - f.bias - f.mbits).astype(np.float32).view(np.uint32)
    ).astype(np.int64)
    bits = np.where(e > 0, normal_bits, sub_bits) | (sign << 31)

    if f.name == "e4m3fn":
        nan = mag == 0x7F
        inf = np.zeros_like(nan)
    elif f.name == "e5m2":
        nan = mag > 0x7C
        inf = mag == 0x7C
    else:  # e4m3fnuz
        nan = c == 0x80
        inf = np.zeros_like(nan)
    bits = np.where(inf, 0x7F800000 | (sign << 31), bits)
    bits = np.where(nan, 0x7FC00000, bits)
    return bits.astype(np.uint32).view(np.float32)


def round_to_bf16(x) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even); returned as float32."""
    x = np.asarray(x, dtype=np.float32)
    bits = np.ascontiguousarray(x).view(np.uint32).astype(np.int64).reshape(x.shape)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    rounded = np.where(nan, 0x7FC00000, rounded)
    return rounded.astype(np.uint32).view(np.float32)
