"""FP8 quantization and dequantization in Triton, bit-exact with ``lowbit.reference``.

    q = encode(x_fp32 * inv),   inv = 1 / scale (one correctly rounded fp32 division)
    scale = max(absmax / fmt_max, 2^-126)    (dynamic; correctly rounded; all zeros -> 1;
                                              NaN propagates)
    x' = decode(q) * scale      (dequantize; rounded once to the output dtype)

Formats: e4m3fn, e5m2, e4m3fnuz; ``saturate`` as in the SPEC. Granularities and kernels:

=================== ===================================== =================================
tensor, static      ``_fp8_quant_tensor_kernel``          elementwise, scale read in-kernel
tensor, dynamic     ``_absmax_kernel`` + the above        atomic max of |x| bits, no sync
token / channel     ``_fp8_quant_segment_kernel``         one segment = one row
group, block 1x128  ``_fp8_quant_segment_kernel``         one segment = G (128) columns
block 128x128       ``_fp8_quant_block2d_kernel``         one program per tile
=================== ===================================== =================================

Why integer code: the encoder is the reference's bit algorithm (round to nearest even on the
fp32 significand, subnormals, saturation, NaN/Inf/-0 rules) written on int32 lanes, so it
gives the same bits on every GPU and under ``TRITON_INTERPRET=1``. The hardware cast
(``cvt.rn.satfinite.e4m3x2.f32``) covers only e4m3fn with saturation; it matched the
integer encoder on all 2^32 fp32 inputs on an H100, so it is used by default on sm_90 (twice
the bandwidth: 2.75 vs 1.40 TB/s at 8192 x 8192 bf16); ``LOWBIT_TRITON_FP8_HWCAST`` = 0 / 1
turns it off / on.

Exactness details that the code relies on:
- ``tl.math.div_rn`` is IEEE division; Triton's ``/`` on fp32 is an approximation on GPU.
- ``x * inv`` feeds only a bitcast, so no FMA contraction can absorb it.
- bf16 inputs are widened by shifting their bits (exact for subnormals and NaN payloads,
  which the interpreter's own bf16 conversion is not), and bf16 outputs are rounded to
  nearest even with integer code for the same reason.
- The absmax is a max over ``bits & 0x7FFFFFFF`` as integers: the order of non-negative
  floats, with any NaN above +Inf, so a NaN anywhere makes the scale NaN (``torch.amax``).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ._common import FP8_DTYPES, FP8_FORMAT_OF, FP8_FORMATS, capability, device_index, jit
from ._common import interpreting as _interpreting
from .heuristics import ELEMWISE_WARPS, block2d_sub_rows, elementwise_tile, segment_tile

__all__ = ["quantize_fp8", "dequantize_fp8", "fp8_encode", "fp8_decode", "fmt_constants"]


# --------------------------------------------------------------------------- device helpers
@jit
def fp8_encode(y, MBITS: tl.constexpr, BIAS: tl.constexpr, MAX_CODE: tl.constexpr,
               NAN_CODE: tl.constexpr, INF_CODE: tl.constexpr, NEG_ZERO: tl.constexpr,
               SATURATE: tl.constexpr, HW_CAST: tl.constexpr):
    """fp32 -> fp8 codes (int32 in [0, 255]); lowbit.reference.fp8_encode, line for line."""
    if HW_CAST:
        # e4m3fn + saturate only (the host checks): satfinite RNE conversion on sm_89+.
        out = y.to(tl.float8e4nv).to(tl.uint8, bitcast=True).to(tl.int32)
        # The instruction promises some NaN code, not which: write the canonical one.
        out = tl.where(y != y, NAN_CODE, out)
    else:
        bits = y.to(tl.int32, bitcast=True)
        sign = (bits >> 31) & 1
        mag = bits & 0x7FFFFFFF
        is_nan = mag > 0x7F800000
        is_inf = mag == 0x7F800000
        exp_field = mag >> 23
        frac = mag & 0x7FFFFF
        # The significand with its implicit bit; fp32 subnormals have none and share the
        # exponent of the smallest normal.
        sig = tl.where(exp_field > 0, frac | 0x800000, frac)
        e = tl.maximum(exp_field, 1) - 127
        # Bits to drop: 23 - MBITS for a normal result, more for a subnormal one. From 25 on,
        # nothing is kept and the remainder (< 2^24) is under half an ulp, so capping there
        # is exact and keeps every shift inside int32.
        shift = tl.minimum((23 - MBITS) + tl.maximum((1 - BIAS) - e, 0), 25)
        kept = sig >> shift
        rem = sig & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        up = (rem > half) | ((rem == half) & ((kept & 1) == 1))
        kept = kept + up.to(tl.int32)
        # Normal: kept holds the implicit bit at MBITS, so adding (biased - 1) << MBITS gives
        # the code and a rounding carry moves into the exponent by itself. Subnormal: kept is
        # the code.
        biased = e + BIAS
        code = tl.where(biased >= 1, ((biased - 1) << MBITS) + kept, kept)
        overflow = is_inf | ((~is_nan) & (code > MAX_CODE))
        if SATURATE:
            code = tl.where(overflow, MAX_CODE, code)
            nan_out = is_nan
        elif INF_CODE >= 0:
            code = tl.where(overflow, INF_CODE, code)
            nan_out = is_nan
        else:
            nan_out = is_nan | overflow
        if NEG_ZERO:
            out = code | (sign << 7)
        else:
            # e4m3fnuz: 0x80 is NaN, so a negative value that rounds to zero is +0.
            out = tl.where(code == 0, 0, code | (sign << 7))
        out = tl.where(nan_out, NAN_CODE, out)
    return out


@jit
def fp8_decode(c, MBITS: tl.constexpr, BIAS: tl.constexpr, FMT_ID: tl.constexpr,
               SUB_UNIT: tl.constexpr):
    """fp8 codes (any integer type) -> fp32, exactly (lowbit.reference.fp8_decode).
    FMT_ID: 0 e4m3fn, 1 e5m2, 2 e4m3fnuz. SUB_UNIT = 2^(1 - BIAS - MBITS)."""
    c = c.to(tl.int32) & 0xFF
    sign = c >> 7
    mag = c & 0x7F
    e = mag >> MBITS
    m = mag & ((1 << MBITS) - 1)
    normal = ((e - BIAS + 127) << 23) | (m << (23 - MBITS))
    sub = (m.to(tl.float32) * SUB_UNIT).to(tl.int32, bitcast=True)  # exact power-of-2 scaling
    bits = tl.where(e > 0, normal, sub) | (sign << 31)
    if FMT_ID == 0:
        nan = mag == 0x7F
    elif FMT_ID == 1:
        nan = mag > 0x7C
        bits = tl.where(mag == 0x7C, 0x7F800000 | (sign << 31), bits)
    else:
        nan = c == 0x80
    bits = tl.where(nan, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@jit
def _load_f32(ptrs, mask, X_BF16: tl.constexpr):
    """Load fp32/fp16 (converted) or bf16 (passed as int16 bits, widened by a shift)."""
    if X_BF16:
        raw = tl.load(ptrs, mask=mask, other=0)
        return (raw.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@jit
def _abs_bits(x):
    return x.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@jit
def _scale_from_amax_bits(amax_bits, QMAX: tl.constexpr):
    """max(absmax / qmax, 2^-126), correctly rounded; an all-zero amax -> 1; NaN stays NaN.
    The floor (lowbit.reference.quant.MIN_SCALE, the smallest normal fp32) keeps 1 / scale
    finite. It is applied to the bits (2^-126 is 0x00800000; the NaN patterns lie above it),
    which keeps NaN without relying on tl.maximum's NaN rule and makes the result the same
    with flush-to-zero: a subnormal absmax or quotient is under the floor either way."""
    amax = amax_bits.to(tl.float32, bitcast=True)
    s = tl.math.div_rn(amax, tl.full(amax.shape, QMAX, tl.float32))
    s_bits = s.to(tl.int32, bitcast=True) & 0x7FFFFFFF  # s >= 0 or NaN
    s = tl.where(s_bits < 0x00800000, 0x00800000, s_bits).to(tl.float32, bitcast=True)
    return tl.where(amax_bits == 0, 1.0, s)


@jit
def _inv(s):
    return tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s)


@jit
def f32_to_bf16_bits(v):
    """fp32 -> bf16 bits (int16), round to nearest even; NaN -> 0x7FC0 (torch's CPU cast)."""
    b = v.to(tl.int32, bitcast=True)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF
    r = tl.where((b & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, r)
    return r.to(tl.int16)


# --------------------------------------------------------------------------------- kernels
@jit
def _absmax_kernel(x_ptr, amax_ptr, R, K, stride_xr, stride_xk, n_tiles_k,
                   X_BF16: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-tensor amax: a tile max of |x| bits, then one integer atomic max per program."""
    pid = tl.program_id(0)
    pid_r = pid // n_tiles_k
    pid_k = pid % n_tiles_k
    rows = (pid_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows < R)[:, None] & (cols < K)[None, :]
    x = _load_f32(x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xk, mask, X_BF16)
    m = tl.max(tl.max(_abs_bits(x), axis=1), axis=0)
    tl.atomic_max(amax_ptr, m)


@jit
def _fp8_quant_tensor_kernel(x_ptr, q_ptr, s_in_ptr, s_out_ptr, amax_ptr, R, K,
                             stride_xr, stride_xk, stride_qr, n_tiles_k,
                             X_BF16: tl.constexpr, DYNAMIC: tl.constexpr, QMAX: tl.constexpr,
                             MBITS: tl.constexpr, BIAS: tl.constexpr, MAX_CODE: tl.constexpr,
                             NAN_CODE: tl.constexpr, INF_CODE: tl.constexpr,
                             NEG_ZERO: tl.constexpr, SATURATE: tl.constexpr,
                             HW_CAST: tl.constexpr,
                             BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """One scale for the whole tensor: static (read from a 0-d tensor) or derived from the
    amax that ``_absmax_kernel`` left in ``amax_ptr``. Program 0 writes the scale out."""
    pid = tl.program_id(0)
    pid_r = pid // n_tiles_k
    pid_k = pid % n_tiles_k
    if DYNAMIC:
        s = _scale_from_amax_bits(tl.load(amax_ptr), QMAX)
    else:
        s = tl.load(s_in_ptr)
    if pid == 0:
        tl.store(s_out_ptr, s)
    inv = _inv(s)
    rows = (pid_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows < R)[:, None] & (cols < K)[None, :]
    x = _load_f32(x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xk, mask, X_BF16)
    code = fp8_encode(x * inv, MBITS, BIAS, MAX_CODE, NAN_CODE, INF_CODE, NEG_ZERO, SATURATE,
                      HW_CAST)
    tl.store(q_ptr + rows[:, None] * stride_qr + cols[None, :], code.to(tl.uint8), mask=mask)


@jit
def _fp8_quant_segment_kernel(x_ptr, q_ptr, s_in_ptr, s_out_ptr, S, NSEG, SEG_LEN, K,
                              stride_xr, stride_xk, stride_qr,
                              stride_sir, stride_sik, stride_sor, stride_sok,
                              X_BF16: tl.constexpr, DYNAMIC: tl.constexpr, QMAX: tl.constexpr,
                              MBITS: tl.constexpr, BIAS: tl.constexpr, MAX_CODE: tl.constexpr,
                              NAN_CODE: tl.constexpr, INF_CODE: tl.constexpr,
                              NEG_ZERO: tl.constexpr, SATURATE: tl.constexpr,
                              HW_CAST: tl.constexpr, BLOCK_S: tl.constexpr,
                              BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr):
    """One scale per segment: row r of x is cut into NSEG segments of SEG_LEN columns (the
    last may be ragged, masked by K). Per token/channel NSEG = 1 and SEG_LEN = K; per group
    SEG_LEN = G; per 1x128 block SEG_LEN = 128. A program takes BLOCK_S segments.

    ONE_TILE (SEG_LEN <= BLOCK_K): the segment stays in registers between the absmax and
    the encode, one read of x. Otherwise a first loop finds the absmax and a second reads
    the row again while it is still in L2.
    """
    seg = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    seg_ok = seg < S
    r = (seg // NSEG).to(tl.int64)
    g = seg % NSEG
    col0 = g * SEG_LEN
    x_row = x_ptr + r * stride_xr
    q_row = q_ptr + r * stride_qr
    j = tl.arange(0, BLOCK_K)
    if ONE_TILE:
        cols = col0[:, None] + j[None, :]
        mask = seg_ok[:, None] & (j[None, :] < SEG_LEN) & (cols < K)
        cols = cols.to(tl.int64)
        x = _load_f32(x_row[:, None] + cols * stride_xk, mask, X_BF16)
        if DYNAMIC:
            s = _scale_from_amax_bits(tl.max(_abs_bits(x), axis=1), QMAX)
        else:
            s = tl.load(s_in_ptr + r * stride_sir + g * stride_sik, mask=seg_ok, other=1.0)
        tl.store(s_out_ptr + r * stride_sor + g * stride_sok, s, mask=seg_ok)
        inv = _inv(s)
        code = fp8_encode(x * inv[:, None], MBITS, BIAS, MAX_CODE, NAN_CODE, INF_CODE,
                          NEG_ZERO, SATURATE, HW_CAST)
        tl.store(q_row[:, None] + cols, code.to(tl.uint8), mask=mask)
    else:
        if DYNAMIC:
            amax = tl.zeros([BLOCK_S, BLOCK_K], tl.int32)
            for k0 in range(0, SEG_LEN, BLOCK_K):
                cols = col0[:, None] + (k0 + j)[None, :]
                mask = seg_ok[:, None] & ((k0 + j) < SEG_LEN)[None, :] & (cols < K)
                x = _load_f32(x_row[:, None] + cols.to(tl.int64) * stride_xk, mask, X_BF16)
                amax = tl.maximum(amax, _abs_bits(x))
            s = _scale_from_amax_bits(tl.max(amax, axis=1), QMAX)
        else:
            s = tl.load(s_in_ptr + r * stride_sir + g * stride_sik, mask=seg_ok, other=1.0)
        tl.store(s_out_ptr + r * stride_sor + g * stride_sok, s, mask=seg_ok)
        inv = _inv(s)
        for k0 in range(0, SEG_LEN, BLOCK_K):
            cols = col0[:, None] + (k0 + j)[None, :]
            mask = seg_ok[:, None] & ((k0 + j) < SEG_LEN)[None, :] & (cols < K)
            cols = cols.to(tl.int64)
            x = _load_f32(x_row[:, None] + cols * stride_xk, mask, X_BF16)
            code = fp8_encode(x * inv[:, None], MBITS, BIAS, MAX_CODE, NAN_CODE, INF_CODE,
                              NEG_ZERO, SATURATE, HW_CAST)
            tl.store(q_row[:, None] + cols, code.to(tl.uint8), mask=mask)


@jit
def _fp8_quant_block2d_kernel(x_ptr, q_ptr, s_in_ptr, s_out_ptr, M, K, n_blk_k,
                              stride_xr, stride_xk, stride_qr,
                              stride_sir, stride_sik, stride_sor, stride_sok,
                              X_BF16: tl.constexpr, DYNAMIC: tl.constexpr, QMAX: tl.constexpr,
                              MBITS: tl.constexpr, BIAS: tl.constexpr, MAX_CODE: tl.constexpr,
                              NAN_CODE: tl.constexpr, INF_CODE: tl.constexpr,
                              NEG_ZERO: tl.constexpr, SATURATE: tl.constexpr,
                              HW_CAST: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                              SUB_R: tl.constexpr):
    """One scale per BH x BW tile of a weight (128 x 128): a program per tile, walking it in
    SUB_R-row slices twice (absmax, then encode; the second pass hits L1/L2)."""
    pid = tl.program_id(0)
    bi = pid // n_blk_k
    bj = pid % n_blk_k
    cols = (bj * BW + tl.arange(0, BW)).to(tl.int64)
    col_ok = cols < K
    sub = tl.arange(0, SUB_R)
    if DYNAMIC:
        amax = tl.zeros([SUB_R, BW], tl.int32)
        for r0 in range(0, BH, SUB_R):
            rows = (bi * BH + r0 + sub).to(tl.int64)
            mask = (rows < M)[:, None] & col_ok[None, :]
            x = _load_f32(x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xk, mask,
                          X_BF16)
            amax = tl.maximum(amax, _abs_bits(x))
        s = _scale_from_amax_bits(tl.max(tl.max(amax, axis=1), axis=0), QMAX)
    else:
        s = tl.load(s_in_ptr + bi * stride_sir + bj * stride_sik)
    tl.store(s_out_ptr + bi * stride_sor + bj * stride_sok, s)
    inv = _inv(s)
    for r0 in range(0, BH, SUB_R):
        rows = (bi * BH + r0 + sub).to(tl.int64)
        mask = (rows < M)[:, None] & col_ok[None, :]
        x = _load_f32(x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xk, mask,
                      X_BF16)
        code = fp8_encode(x * inv, MBITS, BIAS, MAX_CODE, NAN_CODE, INF_CODE, NEG_ZERO,
                          SATURATE, HW_CAST)
        tl.store(q_ptr + rows[:, None] * stride_qr + cols[None, :], code.to(tl.uint8), mask=mask)


@jit
def _fp8_dequant_kernel(q_ptr, s_ptr, o_ptr, R, K, stride_qr, stride_qk, stride_sr, stride_sk,
                        stride_or, n_tiles_k,
                        MBITS: tl.constexpr, BIAS: tl.constexpr, FMT_ID: tl.constexpr,
                        SUB_UNIT: tl.constexpr, PER_TENSOR: tl.constexpr, RB: tl.constexpr,
                        CW: tl.constexpr, OUT_BF16: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """decode(q) * scale in fp32, rounded once to the output dtype. The scale of element
    (r, c) is s[r // RB, c // CW]: RB = 1 (per row / group) or 128 (block); CW = 0 means one
    scale per row, else the group / block width. PER_TENSOR reads a single scale."""
    pid = tl.program_id(0)
    pid_r = pid // n_tiles_k
    pid_k = pid % n_tiles_k
    rows = (pid_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < R
    mask = row_ok[:, None] & (cols < K)[None, :]
    c = tl.load(q_ptr + rows[:, None] * stride_qr + cols[None, :] * stride_qk, mask=mask, other=0)
    v = fp8_decode(c, MBITS, BIAS, FMT_ID, SUB_UNIT)
    if PER_TENSOR:
        y = v * tl.load(s_ptr)
    elif CW == 0:
        s = tl.load(s_ptr + (rows // RB) * stride_sr, mask=row_ok, other=1.0)
        y = v * s[:, None]
    else:
        s = tl.load(s_ptr + (rows // RB)[:, None] * stride_sr + (cols // CW)[None, :] * stride_sk,
                    mask=mask, other=1.0)
        y = v * s
    o_ptrs = o_ptr + rows[:, None] * stride_or + cols[None, :]
    if OUT_BF16:
        tl.store(o_ptrs, f32_to_bf16_bits(y), mask=mask)
    else:
        tl.store(o_ptrs, y.to(o_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host side
_FMT_CONSTS = {}


def fmt_constants(fmt: str) -> dict:
    """The constexpr arguments of fp8_encode / fp8_decode for ``fmt``."""
    c = _FMT_CONSTS.get(fmt)
    if c is None:
        f = FP8_FORMATS[fmt]
        c = dict(MBITS=f.mbits, BIAS=f.bias, MAX_CODE=f.max_code, NAN_CODE=f.nan_code,
                 INF_CODE=f.inf_code, NEG_ZERO=f.negative_zero, QMAX=float(f.max_value),
                 FMT_ID=f.fmt_id, SUB_UNIT=float(2.0 ** (1 - f.bias - f.mbits)))
        _FMT_CONSTS[fmt] = c
    return c


def _hw_cast_wanted(fmt: str, saturate: bool, device: torch.device,
                    hw_cast: Optional[bool]) -> bool:
    """The hardware e4m3fn cast (cvt.rn.satfinite) replaces the integer encoder where it is
    proven identical: on sm_90 it matched the integer encoder on all 2^32 fp32 patterns (and
    the reference on all bf16 / fp16 patterns) on an H100, so it is on by default there.
    LOWBIT_TRITON_FP8_HWCAST=0 turns it off; =1 also allows it on sm_89 (unverified)."""
    if fmt != "e4m3fn" or not saturate or device.type != "cuda" or _interpreting():
        return False
    if hw_cast is None:
        env = os.environ.get("LOWBIT_TRITON_FP8_HWCAST")
        if env == "0":
            return False
        cap = capability(device_index(device))
        return cap >= (8, 9) if env == "1" else cap == (9, 0)
    if not hw_cast:
        return False
    return capability(device_index(device)) >= (8, 9)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """x as a 2-D [rows, K] view (a copy only when leading dims cannot be merged)."""
    if x.dim() == 2:
        return x
    if x.dim() == 0:
        return x.reshape(1, 1)
    return x.reshape(-1, x.shape[-1])


def _kernel_input(x2: torch.Tensor):
    """(tensor to pass, X_BF16): bf16 travels as its int16 bits."""
    if x2.dtype == torch.bfloat16:
        return x2.view(torch.int16), True
    return x2, False


def quantize_fp8(x: torch.Tensor, scale: Optional[torch.Tensor], fmt: str = "e4m3fn",
                 tile: Tuple[int, int] = (0, 0), scale_shape: Sequence[int] = (),
                 saturate: bool = True,
                 hw_cast: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (q of torch's fp8 dtype of ``fmt``, fp32 scale of ``scale_shape``), one scale per
    ``tile`` = (rows, cols) of x viewed as [rows, K], 0 standing for the whole extent:
    (0, 0) per tensor, (1, 0) per row, (1, G) per group or 1 x 128 block, (128, 128) per
    weight block (lowbit.scale_layout.quant_tile and scale_shape give both; the default is
    per tensor). Arguments already validated; ``hw_cast`` overrides
    ``LOWBIT_TRITON_FP8_HWCAST``."""
    qdtype = FP8_DTYPES[fmt]
    fc = fmt_constants(fmt)
    enc = dict(MBITS=fc["MBITS"], BIAS=fc["BIAS"], MAX_CODE=fc["MAX_CODE"],
               NAN_CODE=fc["NAN_CODE"], INF_CODE=fc["INF_CODE"], NEG_ZERO=fc["NEG_ZERO"],
               SATURATE=bool(saturate), QMAX=fc["QMAX"],
               HW_CAST=_hw_cast_wanted(fmt, saturate, x.device, hw_cast))
    dynamic = scale is None
    q = torch.empty(x.shape, dtype=qdtype, device=x.device)
    sshape = tuple(scale_shape)
    s_out = torch.empty(sshape, dtype=torch.float32, device=x.device)

    if x.numel() == 0:
        if dynamic:
            s_out.fill_(1.0)
        else:
            s_out.copy_(scale)
        return q, s_out

    x2 = _as_rows(x)
    xk, x_bf16 = _kernel_input(x2)
    rows, k = x2.shape
    q2 = q.view(rows, k)
    s_in = s_out if dynamic else scale

    tile_rows, tile_cols = tile
    if tile_rows == 0:
        if x.is_contiguous():  # one long row: the widest tiles
            xk, q2, rows, k = xk.reshape(1, -1), q2.reshape(1, -1), 1, x.numel()
        br, bk = elementwise_tile(rows, k, _interpreting())
        n_tiles_k = triton.cdiv(k, bk)
        grid = (triton.cdiv(rows, br) * n_tiles_k,)
        amax = s_out  # unused placeholder when static
        if dynamic:
            amax = torch.zeros(1, dtype=torch.int32, device=x.device)
            _absmax_kernel[grid](xk, amax, rows, k, xk.stride(0), xk.stride(1), n_tiles_k,
                                 X_BF16=x_bf16, BLOCK_R=br, BLOCK_K=bk,
                                 num_warps=ELEMWISE_WARPS)
        _fp8_quant_tensor_kernel[grid](
            xk, q2.view(torch.uint8), s_in, s_out, amax, rows, k, xk.stride(0), xk.stride(1),
            q2.stride(0), n_tiles_k, X_BF16=x_bf16, DYNAMIC=dynamic, BLOCK_R=br, BLOCK_K=bk,
            num_warps=ELEMWISE_WARPS, **enc)
        return q, s_out

    if tile_rows > 1:
        n_blk_r, n_blk_k = sshape
        si = s_in.view(n_blk_r, n_blk_k) if dynamic else s_in
        _fp8_quant_block2d_kernel[(n_blk_r * n_blk_k,)](
            xk, q2.view(torch.uint8), si, s_out, rows, k, n_blk_k,
            xk.stride(0), xk.stride(1), q2.stride(0), si.stride(0), si.stride(1),
            s_out.stride(0), s_out.stride(1), X_BF16=x_bf16, DYNAMIC=dynamic,
            BH=tile_rows, BW=tile_cols, SUB_R=block2d_sub_rows(_interpreting()), num_warps=8,
            **enc)
        return q, s_out

    # Per row, group or 1 x 128 block: segments of one row.
    seg_len = tile_cols or k
    nseg = sshape[-1]
    so2 = s_out.view(rows, nseg)
    si2 = so2 if dynamic else s_in.reshape(rows, nseg)
    nsegs = rows * nseg
    bs, bk, one_tile, warps = segment_tile(nsegs, seg_len, _interpreting())
    _fp8_quant_segment_kernel[(triton.cdiv(nsegs, bs),)](
        xk, q2.view(torch.uint8), si2, so2, nsegs, nseg, seg_len, k,
        xk.stride(0), xk.stride(1), q2.stride(0), si2.stride(0), si2.stride(1),
        so2.stride(0), so2.stride(1), X_BF16=x_bf16, DYNAMIC=dynamic,
        BLOCK_S=bs, BLOCK_K=bk, ONE_TILE=one_tile, num_warps=warps, **enc)
    return q, s_out


def _scale_map(scale: torch.Tensor, tile: Tuple[int, int]):
    """(scale as 2-D, RB, CW, per_tensor) for a dequantization scale whose entries each
    cover ``tile`` (lowbit.scale_layout.scale_tile; CW = 0: one scale per row)."""
    rb, cw = tile
    if rb == 0:
        return scale, 1, 0, True
    if rb == 1:
        return scale.reshape(-1, scale.shape[-1]), 1, cw, False
    return scale, rb, cw, False  # [ceil(M/128), ceil(K/128)] weight blocks


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype,
                   tile: Tuple[int, int]) -> torch.Tensor:
    """decode(q) * scale -> out_dtype, each scale entry covering ``tile`` of q (as
    ``_scale_map`` reads it); arguments validated by lowbit.ops."""
    fc = fmt_constants(FP8_FORMAT_OF[q.dtype])
    out = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    if q.numel() == 0:
        return out
    q2 = _as_rows(q.view(torch.uint8))
    rows, k = q2.shape
    o2 = out.view(rows, k)
    out_bf16 = out_dtype == torch.bfloat16
    if out_bf16:
        o2 = o2.view(torch.int16)
    s2, rb, cw, per_tensor = _scale_map(scale, tile)
    ssr = s2.stride(0) if s2.dim() == 2 else 0
    ssk = s2.stride(1) if s2.dim() == 2 else 0
    br, bk = elementwise_tile(rows, k, _interpreting())
    n_tiles_k = triton.cdiv(k, bk)
    _fp8_dequant_kernel[(triton.cdiv(rows, br) * n_tiles_k,)](
        q2, s2, o2, rows, k, q2.stride(0), q2.stride(1), ssr, ssk, o2.stride(0), n_tiles_k,
        MBITS=fc["MBITS"], BIAS=fc["BIAS"], FMT_ID=fc["FMT_ID"], SUB_UNIT=fc["SUB_UNIT"],
        PER_TENSOR=per_tensor, RB=rb, CW=cw, OUT_BF16=out_bf16, BLOCK_R=br, BLOCK_K=bk,
        num_warps=ELEMWISE_WARPS)
    return out
