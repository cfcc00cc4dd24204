"""int4_quantize in Triton: group-wise int4 weight quantization into the canonical packed
layout (uint8 [N, K // 2], k = 2j in the low nibble of byte j), bit-exact with
``lowbit.reference.int4.quantize_int4``, the portable twin of the CUDA kernel
(csrc/wxa16/int4_quant.cu).

One program quantizes BLOCK_N rows x one group (a row per channel: the group is all of K,
read in pieces of up to 128, twice: once for its statistic, once to encode). Every step is the reference's fp32
operation: the group's statistic (max |w|, or the range widened to hold 0) as integer keys,
``scale = max(extent / levels, 2^-126)`` (1 for a zero extent; ``_scale_from_extent_bits``),
rounded to the scales' storage dtype (bf16 by the bit rule, fp16 by the cast, both to
nearest even; a scale that rounds to 0 becomes 1), ``inv = 1 / scale`` correctly rounded,
the zero point from the stored scale, then ``rint(w * inv)`` (the add of ``rint_f32`` kept
apart from the multiply: the launch turns FMA fusion off), a NaN product counting as 0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (_abs_bits, _inv, _key_value, _keys, _launch_options,
                      _scale_from_extent_bits, f32_to_bf16_bits, interpreting, jit,
                      kernel_input, load_f32, rint_f32, round_to_bf16, INT8)

# S_KIND: how the scales are stored (the weight's dtype when half, else fp32).
_S_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@jit
def _int4_quant_kernel(w_ptr, q_ptr, s_ptr, z_ptr, N, stride_n, stride_k, ngroups,
                       G: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr,
                       X_BF16: tl.constexpr, S_KIND: tl.constexpr, ASYM: tl.constexpr):
    # One flat grid (a grid's second axis stops at 65535: K / G can exceed it).
    pid_n = tl.program_id(0) // ngroups
    g = tl.program_id(0) % ngroups
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_ok = rows < N
    # The group in CHUNK-wide pieces (one piece for G <= 128; a row per channel takes
    # G / CHUNK): the statistic over all of them, then each piece encoded. One piece stays
    # in registers between the two loops (x is carried); more are read again (from L2).
    w_rows = w_ptr + rows[:, None] * stride_n
    x = tl.zeros((BLOCK_N, CHUNK), tl.float32)
    if ASYM:
        # Order keys; 0 is the key of +0, which the widened range holds.
        hi_k = tl.zeros((BLOCK_N,), tl.int32)
        lo_k = tl.zeros((BLOCK_N,), tl.int32)
    else:
        abs_k = tl.zeros((BLOCK_N,), tl.int32)
    for c in range(0, G // CHUNK):
        cols = (g * G + c * CHUNK + tl.arange(0, CHUNK)).to(tl.int64)
        x = load_f32(w_rows + cols[None, :] * stride_k, row_ok[:, None], X_BF16)
        if ASYM:
            hi, lo = _keys(x, 2)
            hi_k = tl.maximum(hi_k, tl.max(hi, axis=1))
            lo_k = tl.minimum(lo_k, tl.min(lo, axis=1))
        else:
            abs_k = tl.maximum(abs_k, tl.max(_abs_bits(x), axis=1))
    if ASYM:
        lo_v = _key_value(lo_k)
        ext = _key_value(hi_k) - lo_v
        s = _scale_from_extent_bits(ext.to(tl.int32, bitcast=True), 15.0)
    else:
        s = _scale_from_extent_bits(abs_k, 7.0)
    if S_KIND == 1:
        s = round_to_bf16(s)
    elif S_KIND == 2:
        s = s.to(tl.float16).to(tl.float32)
    s = tl.where(s == 0.0, 1.0, s)
    inv = _inv(s)
    if ASYM:
        z = rint_f32(tl.math.div_rn(-lo_v, s))  # -(lo / s): the sign flip is exact
        z = tl.minimum(tl.maximum(tl.where(z != z, 0.0, z), 0.0), 15.0)
    for c in range(0, G // CHUNK):
        if G != CHUNK:
            cols = (g * G + c * CHUNK + tl.arange(0, CHUNK)).to(tl.int64)
            x = load_f32(w_rows + cols[None, :] * stride_k, row_ok[:, None], X_BF16)
        r = rint_f32(x * inv[:, None])
        r = tl.where(r != r, 0.0, r)
        if ASYM:
            u = tl.minimum(tl.maximum(r + z[:, None], 0.0), 15.0)
        else:
            u = tl.minimum(tl.maximum(r, -8.0), 7.0) + 8.0
        lo_nib, hi_nib = tl.split(tl.reshape(u.to(tl.int32), (BLOCK_N, CHUNK // 2, 2)))
        qcols = g * (G // 2) + c * (CHUNK // 2) + tl.arange(0, CHUNK // 2)
        tl.store(q_ptr + rows[:, None] * (ngroups * (G // 2)) + qcols[None, :],
                 (lo_nib | (hi_nib << 4)).to(tl.uint8), mask=row_ok[:, None])
    sidx = rows * ngroups + g
    if S_KIND == 1:
        tl.store(s_ptr + sidx, f32_to_bf16_bits(s), mask=row_ok)
    elif S_KIND == 2:
        tl.store(s_ptr + sidx, s.to(tl.float16), mask=row_ok)
    else:
        tl.store(s_ptr + sidx, s, mask=row_ok)
    if ASYM:
        tl.store(z_ptr + sidx, z.to(tl.uint8), mask=row_ok)


# Weight rows per program: 32 on a GPU, 16 under the interpreter (whose programs cost
# Python time whatever their size, and whose tests use small weights).
BLOCK_N, INTERPRET_BLOCK_N = 32, 16


def _chunk(group_size: int) -> int:
    """The piece of a group one step loads, a power of two: the largest of 128, 64, 32
    dividing the group (the group itself for G = 32, 64, 128; a row per channel has K a
    multiple of 32)."""
    return next(c for c in (128, 64, 32) if group_size % c == 0)


def int4_quantize(w: torch.Tensor, group_size: int, symmetric: bool, s_dtype: torch.dtype):
    """w [N, K] fp32 / bf16 / fp16 (any strides; K a multiple of group_size = 32, 64 or 128,
    or group_size = K, a multiple of 32: one group per row, per channel)
    -> (qweight uint8 [N, K // 2], scales [N, K // G] stored as ``s_dtype`` (fp32, bf16 or
    fp16: the op's rule, lowbit.ops.int4_scale_dtype), zeros uint8 [N, K // G], or an empty
    tensor when symmetric)."""
    n, k = w.shape
    dev = w.device
    ngroups = k // group_size
    q = torch.empty((n, k // 2), dtype=torch.uint8, device=dev)
    s = torch.empty((n, ngroups), dtype=s_dtype, device=dev)
    z = torch.empty((0,) if symmetric else (n, ngroups), dtype=torch.uint8, device=dev)
    if n == 0 or ngroups == 0:
        return q, s, z
    wk, x_bf16 = kernel_input(w)
    block_n = INTERPRET_BLOCK_N if interpreting() else BLOCK_N
    _int4_quant_kernel[(triton.cdiv(n, block_n) * ngroups,)](
        wk, q, s.view(torch.int16) if s_dtype == torch.bfloat16 else s,
        q if symmetric else z, n, wk.stride(0), wk.stride(1), ngroups,
        G=group_size, CHUNK=_chunk(group_size), BLOCK_N=block_n, X_BF16=x_bf16,
        S_KIND=_S_KIND[s_dtype],
        ASYM=not symmetric, num_warps=4, **_launch_options(INT8))
    return q, s, z
