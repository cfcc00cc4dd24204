"""Weight-only GEMMs in Triton, W4A16 and W8A16, from one kernel templated on the weight's
bit width (the constexpr ``BITS``):

    out[m, n] = sum_k x[m, k] * (u[n, k] - z[n, g(k)]) * s[n, g(k)] + bias[n]

- ``BITS = 4`` (``w4a16_gemm``): the canonical int4 layout of the SPEC, ``qweight`` uint8
  [N, K // 2] (byte j of row n: k = 2j in the low nibble, k = 2j + 1 in the high one),
  ``scales`` [N, K // G] fp16 / bf16 / fp32, ``zeros`` uint8 [N, K // G] or None (z = 8).
- ``BITS = 8`` (``w8a16_gemm``): ``w`` int8 [N, K] (z = 0), fp32 ``w_scale`` [N, 1] per
  channel or [N, K // G] per group.

x is [M, K] bf16 / fp16 (fp32 too, multiplied in IEEE fp32); the output is x's dtype.

Numerics. Each K-step loads the weight and subtracts the zero point, exactly (|u - z| <=
15, or 127 for int8: both fit bf16's 8-bit significand), then ``tl.dot`` accumulates in
fp32. Where the scale goes (a K-step never straddles two groups: BLOCK_K divides G):
- per channel: one multiply of the fp32 sum in the epilogue;
- per group, decode: on the step's fp32 dot (``acc += dot(x, u - z) * s``), so the weight
  operand stays exact and the per-step work is BLOCK_M x BLOCK_N multiplies, not
  BLOCK_N x BLOCK_K (with M <= 16 the weight's conversion bounds the speed);
- per group, tiled (``SCALE_W``): on the weight, ``((u - z) * s)`` in fp32 rounded to x's
  dtype, so the dot accumulates in place (one accumulator: the two of the form above
  spill at 128 x 128 tiles and break Hopper's chained wgmma). The rounding of the
  dequantized weight (2^-9 relative in bf16) stays far inside the SPEC's 1e-2; with
  fp16 x a dequantized weight must lie in fp16's range (it does for any weight that was
  fp16 or bf16-in-fp16-range before quantization).

Regimes, by M (``heuristics.WXA16_GEMM_TABLE``):
- decode, M <= 16: few output tiles, so the K-steps are split among
  ``heuristics.wxa16_split_k`` programs per tile to keep every SM streaming the weight.
  Each split writes its fp32 partial tile to a workspace [SPLIT, M, N] and counts itself in
  the tile's arrival counter (one acquire-release atomic); the last of the tile's programs
  to arrive sums the partials in split order, adds the bias, rounds once and sets the
  counter back to zero. The sum's order does not depend on the arrival order: the result is
  the same bits on every run. One launch a call (a second kernel for the sum cost a
  launch's host time, about as much again as the GEMM's), with the counters and the
  workspace kept per device and stream (``scratch.split_scratch``; counters zeroed once,
  left zero by every launch) and a pair of its own for a launch being captured in a CUDA
  graph.
- tiled, M > 16: one program per output tile (grouped order for L2 reuse), all of K; at
  M <= 64 N tiles narrowed (to 32) while they number fewer than the SMs; above, 128 x 128
  tiles while they fill 3/4 of the SMs, else narrower ones (``heuristics.WXA16_FILL_TILES``).

Above the fused kernel's range (int4: M = 128, int8: M = 256; bf16 and fp16 x;
lowbit/backends/triton.py, DEQUANT_MIN_M) the backend
dequantizes the weight to x's dtype with ``_wxa16_dequant_kernel``
(``wxa16_dequant_launcher``) for a dense GEMM to multiply: the same weight bits as the CUDA
backend's dequantizer, ``(u - z) * s`` in fp32 rounded once, and a temporary [N, K] weight
per call (the backend's ``triton_w4a16_gemm_dequant`` and ``triton_w8a16_gemm_dequant``).

Any M (0 included), any N, K a multiple of the group size (any K per channel); strided x
is read through its strides. Under ``TRITON_INTERPRET=1`` (CI), whose NumPy has no bf16,
bf16 tensors travel as their int16 bits: x is widened to fp32 and multiplied in fp32
(exact: every bf16 is an fp32), and the output is rounded to bf16 in the kernel.
Nothing here is NVIDIA-only (no inline assembly): the same source serves AMD GPUs.

``w4a16_gemm_launcher`` / ``w8a16_gemm_launcher`` work out a signature's config, split, grid
and constexprs once and bind the kernel (``_common.bind``): the Triton backend's prepared
calls are the output's allocation and one launch.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (allocator, bind, device_index, f32_to_bf16_bits, grouped_tile, jit,
                      kernel_input, load_f32, sm_count, smem_per_block, tile_offsets)
from ._common import interpreting as _interpreting
from .heuristics import WXA16_DECODE_MAX_M, wxa16_gemm_config, wxa16_split_k
from .scratch import split_scratch

_SCRATCH_DTYPES = (torch.int32, torch.float32)  # the tile counters, the partial sums

__all__ = ["w4a16_gemm", "w8a16_gemm", "w4a16_gemm_launcher", "w8a16_gemm_launcher",
           "w4a16_dequant_launcher", "w8a16_dequant_launcher"]

# Under the interpreter a program costs milliseconds of Python: a GPU's SM count would
# make hundreds of splits, so the decode split is sized for this many "SMs" there (enough
# to exercise the split and its sum).
INTERPRET_SMS = 4


@jit
def _nibbles_minus(u, z):
    """u - z[:, None] in z's dtype for nibbles u (uint8, 0..15), exactly and without a
    conversion instruction per element (an int-to-float conversion runs at a quarter of the
    ALU's rate): u's bits ORed into the exponent of 2^p (bf16 128, fp16 1024, fp32 2^23) are
    the number 2^p + u, and one subtraction of 2^p + z, exact (small integers), leaves
    u - z."""
    if z.dtype == tl.bfloat16:
        t = (u.to(tl.int16) | 0x4300).to(tl.bfloat16, bitcast=True)
        return t - (z + 128.0)[:, None]
    elif z.dtype == tl.float16:
        t = (u.to(tl.int16) | 0x6400).to(tl.float16, bitcast=True)
        return t - (z + 1024.0)[:, None]
    else:
        t = (u.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True)
        return t - (z + 8388608.0)[:, None]


@jit
def _nibble_bytes(w_rows, k0, K, n_ok, stride_wk, BLOCK_K: tl.constexpr,
                  EVEN_K: tl.constexpr):
    """The K-step's packed int4 bytes [BLOCK_N, BLOCK_K // 2] (byte j: k = k0 + 2 j in the
    low nibble, k0 + 2 j + 1 in the high one). Half as many bytes as K-values; K and k0 are
    even, so a byte is whole or absent. EVEN_K: K is a multiple of BLOCK_K, so the mask is
    the rows' alone, the same along K, and the loads can be vectors."""
    j = tl.arange(0, BLOCK_K // 2)
    if EVEN_K:
        ok = n_ok[:, None]
    else:
        ok = n_ok[:, None] & ((k0 + 2 * j) < K)[None, :]
    return tl.load(w_rows[:, None] + ((k0 // 2) + j)[None, :] * stride_wk, mask=ok, other=0)


@jit
def _nibble_tiles(w_rows, k0, K, n_ok, z, stride_wk, BLOCK_K: tl.constexpr,
                  EVEN_K: tl.constexpr):
    """The K-step's int4 weights as two [BLOCK_N, BLOCK_K // 2] tiles ``u - z`` in z's
    dtype: the low nibbles (k = k0 + 2 j) and the high ones (k0 + 2 j + 1), for two dots
    against x's even and odd columns, so that no interleave reorders the nibbles."""
    b = _nibble_bytes(w_rows, k0, K, n_ok, stride_wk, BLOCK_K, EVEN_K).to(tl.int16)
    return _nibbles_minus(b & 0xF, z), _nibbles_minus(b >> 4, z)


@jit
def _weight_tile(w_rows, k0, K, n_ok, z, stride_wk, BITS: tl.constexpr,
                 BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """The K-step's weights ``u - z`` [BLOCK_N, BLOCK_K] in z's dtype (x's, for the dot):
    ``w_rows`` points to the rows' starts, ``z`` [BLOCK_N] is the zero point. Nibbles
    stay 8-bit until the conversion (a quarter of int32's registers), and ``u - z`` is
    exact in bf16 / fp16 (|u - z| <= 15). K past the end reads 0 (x is 0 there too, so
    the product is 0 whatever ``u - z`` is). EVEN_K: as in _nibble_bytes."""
    if BITS == 4:
        b = _nibble_bytes(w_rows, k0, K, n_ok, stride_wk, BLOCK_K, EVEN_K)
        u = tl.interleave(b & 0xF, b >> 4)  # column 2j: the low nibble, 2j + 1: the high
        w = _nibbles_minus(u, z)
    else:
        # int8 values are exact in bf16 / fp16; the zero point is 0.
        kk = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            ok = n_ok[:, None]
        else:
            ok = n_ok[:, None] & (kk < K)[None, :]
        w = tl.load(w_rows[:, None] + kk[None, :] * stride_wk, mask=ok, other=0).to(z.dtype)
    return w


@jit
def _dot(x, w, acc, FP32_DOT: tl.constexpr):
    """acc + x @ w in fp32; fp32 operands multiply in IEEE fp32 (not TF32)."""
    if FP32_DOT:
        return tl.dot(x, w, acc, input_precision="ieee")
    else:
        return tl.dot(x, w, acc)


@jit
def _store_out(acc, bias_ptr, offs_n, n_ok, c_ptrs, c_mask, HAS_BIAS: tl.constexpr,
               BIAS_BF16: tl.constexpr, OUT_BF16_BITS: tl.constexpr):
    """acc (fp32) + bias, rounded once to the output dtype."""
    if HAS_BIAS:
        acc = acc + load_f32(bias_ptr + offs_n, n_ok, BIAS_BF16)[None, :]
    if OUT_BF16_BITS:  # the interpreter's own fp32 -> bf16 cast truncates
        tl.store(c_ptrs, f32_to_bf16_bits(acc), mask=c_mask)
    else:
        tl.store(c_ptrs, acc.to(c_ptrs.dtype.element_ty), mask=c_mask)


@jit
def _wxa16_kernel(x_ptr, w_ptr, s_ptr, z_ptr, bias_ptr, c_ptr, ws_ptr, cnt_ptr, M, N, K, G,
                  STEPS_PER_SPLIT,
                  stride_xm, stride_xk, stride_wn, stride_wk, stride_sn, stride_sg,
                  stride_zn, stride_zg, stride_cs, stride_cm, stride_cn,
                  BITS: tl.constexpr, PER_CHANNEL: tl.constexpr, SCALE_W: tl.constexpr,
                  S_IN_DOT: tl.constexpr, HAS_ZERO: tl.constexpr,
                  S_BF16: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_BF16: tl.constexpr,
                  X_BF16_BITS: tl.constexpr, FP32_DOT: tl.constexpr, PARTIAL: tl.constexpr,
                  OUT_BF16_BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr,
                  AMD_STORE_WAIT: tl.constexpr = False):
    """Program (tile, split): the output tile's sum over the split's K-steps
    [split * STEPS_PER_SPLIT, ...). PARTIAL: the fp32 sum goes to the workspace ws[split]
    (rows and columns at c's strides, splits stride_cs apart), and the tile's last program
    to arrive at its counter cnt[tile] (int32, zero at the launch) writes the output;
    else the sum is the output. AMD_STORE_WAIT: compiled for an AMD GPU (see below)."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    split = tl.program_id(1)
    offs_m, offs_n, m_ok, n_ok, offs_m64, offs_n64 = tile_offsets(pid_m, pid_n, M, N,
                                                                  BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # K offsets in 64 bits: (K - 1) x the K-stride of a column-major x or a transposed int8
    # weight can pass 2^31 (the usual stride of 1 folds away).
    stride_xk = tl.cast(stride_xk, tl.int64)
    stride_wk = tl.cast(stride_wk, tl.int64)
    x_rows = x_ptr + offs_m64[:, None] * stride_xm
    w_rows = w_ptr + offs_n64 * stride_wn
    s_rows = s_ptr + offs_n64 * stride_sn
    z_rows = z_ptr + offs_n64 * stride_zn
    # The dot's operand dtype: x's, or fp32 for bf16 bits under the interpreter.
    if X_BF16_BITS:
        DOT_T: tl.constexpr = tl.float32
    else:
        DOT_T: tl.constexpr = x_ptr.dtype.element_ty
    # u - z is formed in fp32 when the scale multiplies the weight, else in DOT_T. S_IN_DOT
    # (scales of x's dtype, bf16 or fp16): the weight times its scale in DOT_T too, packed
    # pairs instead of fp32 per element and a conversion (u - z is exact there, and the
    # product of two 16-bit values rounded once is the fp32 product rounded once: the same
    # bits as the fp32 path).
    if SCALE_W and not S_IN_DOT:
        Z_T: tl.constexpr = tl.float32
    else:
        Z_T: tl.constexpr = DOT_T
    z = tl.full((BLOCK_N,), 8 if BITS == 4 else 0, Z_T)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    kt_lo = split * STEPS_PER_SPLIT
    kt_hi = tl.minimum(kt_lo + STEPS_PER_SPLIT, tl.cdiv(K, BLOCK_K))
    for kt in range(kt_lo, kt_hi):
        k0 = kt * BLOCK_K
        kx = k0 + offs_k
        if EVEN_K:
            x_ok = m_ok[:, None]
        else:
            x_ok = m_ok[:, None] & (kx < K)[None, :]
        if X_BF16_BITS:
            x = load_f32(x_rows + kx[None, :] * stride_xk, x_ok, True)
        else:
            x = tl.load(x_rows + kx[None, :] * stride_xk, mask=x_ok, other=0.0)
        if HAS_ZERO:
            z = tl.load(z_rows + (k0 // G) * stride_zg, mask=n_ok, other=0).to(Z_T)
        if BITS == 4 and not SCALE_W:
            # Two dots over x's even and odd columns: the nibbles need no interleave.
            x_lo, x_hi = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_K // 2, 2)))
            w_lo, w_hi = _nibble_tiles(w_rows, k0, K, n_ok, z, stride_wk, BLOCK_K, EVEN_K)
            if PER_CHANNEL:
                acc = _dot(x_hi, tl.trans(w_hi), _dot(x_lo, tl.trans(w_lo), acc, FP32_DOT),
                           FP32_DOT)
            else:
                s = load_f32(s_rows + (k0 // G) * stride_sg, n_ok, S_BF16)
                part = _dot(x_lo, tl.trans(w_lo), tl.zeros((BLOCK_M, BLOCK_N), tl.float32),
                            FP32_DOT)
                acc += _dot(x_hi, tl.trans(w_hi), part, FP32_DOT) * s[None, :]
        else:
            w = _weight_tile(w_rows, k0, K, n_ok, z, stride_wk, BITS, BLOCK_K, EVEN_K)
            if PER_CHANNEL:
                acc = _dot(x, tl.trans(w), acc, FP32_DOT)
            else:
                # The step lies in group k0 // G.
                s_ptrs = s_rows + (k0 // G) * stride_sg
                if SCALE_W and S_IN_DOT:
                    s16 = tl.load(s_ptrs, mask=n_ok, other=0)
                    if S_BF16:
                        s16 = s16.to(tl.bfloat16, bitcast=True)
                    acc = _dot(x, tl.trans(w * s16[:, None]), acc, FP32_DOT)
                else:
                    s = load_f32(s_ptrs, n_ok, S_BF16)
                    if SCALE_W:
                        w = (w * s[:, None]).to(DOT_T)
                        acc = _dot(x, tl.trans(w), acc, FP32_DOT)
                    else:
                        part = _dot(x, tl.trans(w), tl.zeros((BLOCK_M, BLOCK_N), tl.float32),
                                    FP32_DOT)
                        acc += part * s[None, :]
    if PER_CHANNEL:
        acc = acc * load_f32(s_rows, n_ok, S_BF16)[None, :]

    c_mask = m_ok[:, None] & n_ok[None, :]
    tile_at = offs_m64[:, None] * stride_cm + offs_n64[None, :] * stride_cn
    if PARTIAL:
        stride_cs = tl.cast(stride_cs, tl.int64)
        tl.store(ws_ptr + split.to(tl.int64) * stride_cs + tile_at, acc, mask=c_mask)
        # Every thread's partial is stored before the program counts itself: the barrier
        # orders them before the one thread's atomic, whose release covers them (and its
        # acquire, broadcast through the barrier Triton puts after a scalar atomic, the
        # other partials before the reads below). On NVIDIA, bar.sync orders the stores of
        # the threads it waits for; AMD's s_barrier only meets the waves, and the atomic's
        # release waits for its own wave's stores alone, so each wave first waits for its
        # own (the asm has side effects: it stays after the store; one per element).
        if AMD_STORE_WAIT:
            acc = tl.inline_asm_elementwise("s_waitcnt vmcnt(0)", "=v,0", [acc],
                                            dtype=tl.float32, is_pure=False, pack=1)
        tl.debug_barrier()
        tile = tl.program_id(0)
        n_split = tl.num_programs(1)
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == n_split - 1:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(0, n_split):
                # .cg: from L2, where the other programs' stores are (not an L1 line).
                acc += tl.load(ws_ptr + tl.cast(s, tl.int64) * stride_cs + tile_at,
                               mask=c_mask, other=0.0, cache_modifier=".cg")
            _store_out(acc, bias_ptr, offs_n, n_ok, c_ptr + tile_at, c_mask, HAS_BIAS,
                       BIAS_BF16, OUT_BF16_BITS)
            # Every program of the tile has counted: zero again for the next launch.
            tl.store(cnt_ptr + tile, 0)
    else:
        _store_out(acc, bias_ptr, offs_n, n_ok, c_ptr + tile_at, c_mask, HAS_BIAS, BIAS_BF16,
                   OUT_BF16_BITS)


@jit
def _wxa16_dequant_kernel(w_ptr, s_ptr, z_ptr, c_ptr, N, K, G, stride_wn, stride_wk,
                          stride_sn, stride_sg, stride_zn, stride_zg, stride_cm,
                          BITS: tl.constexpr, HAS_ZERO: tl.constexpr, S_BF16: tl.constexpr,
                          OUT_BF16_BITS: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """out [N, K] (row stride ``stride_cm``, unit column stride) = (u - z) * s in fp32,
    rounded once to out's dtype, for a dense GEMM to multiply. One program per
    [BLOCK_N, BLOCK_K] tile, which lies in one scale group (BLOCK_K divides G; per channel,
    G = K), on one flat grid, a row block's K tiles in turn (a second grid axis stops at
    65535 tiles, which K / BLOCK_K passes from K = 2^21 at G = 32)."""
    tiles_k = tl.cdiv(K, BLOCK_K)
    offs_n = tl.program_id(0) // tiles_k * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_n64 = offs_n.to(tl.int64)
    k0 = tl.program_id(0) % tiles_k * BLOCK_K
    stride_wk = tl.cast(stride_wk, tl.int64)  # (as _wxa16_kernel's)
    gi = k0 // G
    if HAS_ZERO:
        z = tl.load(z_ptr + offs_n64 * stride_zn + gi * stride_zg, mask=n_ok,
                    other=0).to(tl.float32)
    else:
        z = tl.full((BLOCK_N,), 8 if BITS == 4 else 0, tl.float32)
    w = _weight_tile(w_ptr + offs_n64 * stride_wn, k0, K, n_ok, z, stride_wk, BITS, BLOCK_K,
                     EVEN_K)
    w = w * load_f32(s_ptr + offs_n64 * stride_sn + gi * stride_sg, n_ok, S_BF16)[:, None]
    kk = k0 + tl.arange(0, BLOCK_K)
    ptrs = c_ptr + offs_n64[:, None] * stride_cm + kk[None, :]
    if EVEN_K:
        mask = n_ok[:, None]
    else:
        mask = n_ok[:, None] & (kk < K)[None, :]
    if OUT_BF16_BITS:  # the interpreter's own fp32 -> bf16 cast truncates
        tl.store(ptrs, f32_to_bf16_bits(w), mask=mask)
    else:
        tl.store(ptrs, w.to(ptrs.dtype.element_ty), mask=mask)


# The dequantizer's tile: 64 rows x up to 128 K, 16 KB of bf16 written per program (a stream:
# the tile only has to be large enough to keep the loads in flight).
_DEQ_BLOCK_N, _DEQ_BLOCK_K = 64, 128


def wxa16_dequant_launcher(w: torch.Tensor, bits: int, scales: torch.Tensor,
                           zeros: Optional[torch.Tensor], group_size: int, k: int, dtype):
    """launch(w, scales, zeros) -> the weight [N, K] dequantized to ``dtype`` (bf16 or
    fp16), for arguments of this signature (``w``: the canonical int4 qweight [N, K // 2]
    with ``bits`` 4, int8 [N, K] with 8; ``group_size`` 0: one scale per row), the kernel
    bound once. Bit-identical with the CUDA backend's dequantizer."""
    n = w.shape[0]
    dev, empty, shape = w.device, torch.empty, (n, k)
    if n == 0 or k == 0:
        return lambda w, scales, zeros: empty(shape, dtype=dtype, device=dev)
    g = group_size if group_size else k
    # A tile lies in one group: BLOCK_K divides G (any BLOCK_K per channel, one group).
    bk = min(_DEQ_BLOCK_K, g & -g) if group_size else _DEQ_BLOCK_K
    sk, s_bf16 = kernel_input(scales)
    zk = zeros if zeros is not None else sk  # (not read without zeros)
    out_bits = _interpreting() and dtype == torch.bfloat16
    o0 = empty(16, dtype=dtype, device=dev)  # an aligned stand-in of the output
    o0 = o0.view(torch.int16) if out_bits else o0
    sizes = (n, k, g, w.stride(0), w.stride(1), sk.stride(0), sk.stride(1), zk.stride(0),
             zk.stride(1), k)
    kern = bind(_wxa16_dequant_kernel, (triton.cdiv(n, _DEQ_BLOCK_N) * triton.cdiv(k, bk),),
                (w, sk, zk, o0, *sizes),
                dict(BITS=bits, HAS_ZERO=zeros is not None, S_BF16=s_bf16,
                     OUT_BF16_BITS=out_bits, BLOCK_N=_DEQ_BLOCK_N, BLOCK_K=bk,
                     EVEN_K=k % bk == 0, num_warps=4))

    new = allocator()

    def launch(w, scales, zeros):
        out = new(dev, dtype, n, k)
        sp = scales.data_ptr()
        if kern.direct(w.data_ptr(), sp, zeros.data_ptr() if zeros is not None else sp,
                       out.data_ptr(), *sizes):
            return out
        s_k = kernel_input(scales)[0]
        kern(w, s_k, zeros if zeros is not None else s_k,
             out.view(torch.int16) if out_bits else out, *sizes)
        return out

    return launch


def _stream_of(dev: torch.device):
    """``stream()``: the current stream's handle on ``dev`` (the one a launch goes to), or
    None where tensors live on the host."""
    if dev.type == "cpu":
        return lambda: None
    get, index = triton.runtime.driver.active.get_current_stream, device_index(dev)
    return lambda: get(index)


def wxa16_gemm_launcher(x: torch.Tensor, w: torch.Tensor, bits: int, scales: torch.Tensor,
                        zeros: Optional[torch.Tensor], group_size: int,
                        bias: Optional[torch.Tensor], config=None, split_k: Optional[int] = None):
    """launch(x, w, scales, zeros, bias) -> out for arguments of the signature of these
    (shapes, strides, dtypes, alignment; ``group_size`` 0: one scale per row of the weight,
    scales [N, 1]): the config, the split, the grid and the constexprs are worked out and
    the kernel bound once (_common.bind), so that a call is the output's allocation and one
    launch. Arguments are validated by lowbit.ops."""
    m, k = x.shape
    n = w.shape[0]
    dev, dtype, empty, shape = x.device, x.dtype, torch.empty, (m, n)
    if m == 0 or n == 0:
        return lambda x, w, scales, zeros, bias: empty(shape, dtype=dtype, device=dev)
    if k == 0:  # no product (and no scale to read: scales may be [N, 0]): the bias, rounded
        return lambda x, w, scales, zeros, bias: (
            torch.zeros(shape, dtype=dtype, device=dev) if bias is None
            else bias.to(dtype).expand(shape).clone())
    interp = _interpreting()
    sms = INTERPRET_SMS if interp else sm_count(device_index(x.device))
    cfg = config if config is not None else wxa16_gemm_config(
        m, n, k, group_size, bits, x.element_size(),
        None if interp else smem_per_block(device_index(x.device)), sms)
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    if group_size and group_size % bk:
        raise ValueError(f"BLOCK_K = {bk} must divide the group size {group_size}")
    steps = triton.cdiv(k, bk)
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    decode = m <= WXA16_DECODE_MAX_M
    if split_k is None:
        if not decode:
            split_k = 1
        else:
            # Scales apply per K-step, so a split may end anywhere, even inside a group.
            split_k = wxa16_split_k(tiles, steps, sms)
    per_split = max(triton.cdiv(steps, max(split_k, 1)), 1)
    split = max(triton.cdiv(steps, per_split), 1)
    partial = split > 1

    xk, x_bits = kernel_input(x) if interp else (x, False)
    sk, s_bf16 = kernel_input(scales)
    # The kernel reads bias[n] at unit stride.
    bias_k, bias_bf16 = kernel_input(bias.contiguous()) if bias is not None else (sk, False)
    zk = zeros if zeros is not None else sk  # (not read without zeros)
    out_bits = interp and dtype == torch.bfloat16
    # Aligned stand-ins of the output (as the kernel sees it), the workspace and the
    # counters, which a launch takes from split_scratch: [M, N], [SPLIT, M, N], [tiles].
    c0 = empty(16, dtype=dtype, device=dev)
    c0 = c0.view(torch.int16) if out_bits else c0
    ws0 = empty(16, dtype=torch.float32, device=dev) if partial else c0
    cnt0 = torch.zeros(16, dtype=torch.int32, device=dev) if partial else c0
    # A per-channel scale's group is all of K (its column index k0 // G is 0).
    g = group_size if group_size else max(k, 1)
    sizes = (m, n, k, g, per_split, xk.stride(0), xk.stride(1), w.stride(0), w.stride(1),
             sk.stride(0), sk.stride(1), zk.stride(0), zk.stride(1),
             m * n if partial else 0, n, 1)
    gemm = bind(_wxa16_kernel, (tiles, split), (xk, w, sk, zk, bias_k, c0, ws0, cnt0, *sizes),
                dict(BITS=bits, PER_CHANNEL=not group_size,
                     SCALE_W=bool(group_size) and not decode,
                     S_IN_DOT=scales.dtype == dtype and dtype != torch.float32 and not x_bits,
                     HAS_ZERO=zeros is not None, S_BF16=s_bf16,
                     HAS_BIAS=bias is not None, BIAS_BF16=bias_bf16, X_BF16_BITS=x_bits,
                     FP32_DOT=dtype == torch.float32, PARTIAL=partial,
                     OUT_BF16_BITS=out_bits, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                     GROUP_M=cfg.group_m, EVEN_K=k % bk == 0,
                     AMD_STORE_WAIT=partial and not interp and torch.version.hip is not None,
                     num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    new, stream = allocator(), _stream_of(dev)
    ws_floats = split * m * n

    def launch(x, w, scales, zeros, bias):
        out = new(dev, dtype, m, n)
        if partial:
            now = stream()
            cnt, ws = split_scratch(dev, now, tiles, ws_floats,
                                    now is not None and torch.cuda.is_current_stream_capturing(),
                                    _SCRATCH_DTYPES)
        else:
            cnt = ws = out
        bias = bias.contiguous() if bias is not None else None
        # The direct launch takes the data pointers (no views to build); Triton's own path,
        # where bind leaves the launch to it, the tensors as bound.
        sp = scales.data_ptr()
        if gemm.direct(x.data_ptr(), w.data_ptr(), sp,
                       zeros.data_ptr() if zeros is not None else sp,
                       bias.data_ptr() if bias is not None else sp, out.data_ptr(),
                       ws.data_ptr(), cnt.data_ptr(), *sizes):
            return out
        s_k = kernel_input(scales)[0]
        b_k = kernel_input(bias)[0] if bias is not None else s_k
        c = out.view(torch.int16) if out_bits else out
        gemm(kernel_input(x)[0] if interp else x, w, s_k, zeros if zeros is not None else s_k,
             b_k, c, ws if partial else c, cnt if partial else c, *sizes)
        return out

    return launch


def w4a16_gemm_launcher(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                        zeros: Optional[torch.Tensor], group_size: int,
                        perm: Optional[torch.Tensor] = None,
                        bias: Optional[torch.Tensor] = None, *, config=None,
                        split_k: Optional[int] = None):
    """launch(x, qweight, scales, zeros, group_size, perm, bias) -> out, w4a16_gemm for
    arguments of this signature, its launches bound once (wxa16_gemm_launcher)."""
    group = _int4_group(scales, group_size)
    if perm is not None:
        # Act order gathers x's columns once per call: a copy of x (M x K, small beside the
        # weight at decode sizes) that keeps the kernel's x loads contiguous.
        inner = wxa16_gemm_launcher(x.index_select(1, perm), qweight, 4, scales, zeros,
                                    group, bias, config, split_k)
        return lambda x, qweight, scales, zeros, group_size, perm, bias: inner(
            x.index_select(1, perm), qweight, scales, zeros, bias)
    inner = wxa16_gemm_launcher(x, qweight, 4, scales, zeros, group, bias, config, split_k)
    return lambda x, qweight, scales, zeros, group_size, perm, bias: inner(
        x, qweight, scales, zeros, bias)


def _int4_group(scales: torch.Tensor, group_size: int) -> int:
    """The kernels' group of an int4 weight: one group of the whole row (per channel, G = K,
    scales [N, 1]) is group 0."""
    return 0 if scales.shape[1] == 1 else group_size


def _group_of(w: torch.Tensor, w_scale: torch.Tensor) -> int:
    """The int8 weight's group size from its scales' shape: 0 per channel (and at K = 0,
    whose scales may be [N, 0])."""
    return 0 if w_scale.shape[1] <= 1 else w.shape[1] // w_scale.shape[1]


def w4a16_dequant_launcher(qweight: torch.Tensor, scales: torch.Tensor,
                           zeros: Optional[torch.Tensor], group_size: int, k: int, dtype):
    """launch(qweight, scales, zeros) -> the canonical int4 weight [N, K] dequantized to
    ``dtype`` (wxa16_dequant_launcher)."""
    return wxa16_dequant_launcher(qweight, 4, scales, zeros, _int4_group(scales, group_size),
                                  k, dtype)


def w8a16_dequant_launcher(w: torch.Tensor, w_scale: torch.Tensor, dtype):
    """launch(w, w_scale, None) -> the int8 weight [N, K] dequantized to ``dtype``
    (wxa16_dequant_launcher)."""
    return wxa16_dequant_launcher(w, 8, w_scale, None, _group_of(w, w_scale), w.shape[1],
                                  dtype)


def w8a16_gemm_launcher(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
                        bias: Optional[torch.Tensor] = None, *, config=None,
                        split_k: Optional[int] = None):
    """launch(x, w, w_scale, bias) -> out, w8a16_gemm for arguments of this signature, its
    launches bound once (wxa16_gemm_launcher)."""
    inner = wxa16_gemm_launcher(x, w, 8, w_scale, None, _group_of(w, w_scale), bias, config,
                                split_k)
    return lambda x, w, w_scale, bias: inner(x, w, w_scale, None, bias)


def w4a16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
               zeros: Optional[torch.Tensor], group_size: int,
               perm: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, *,
               config=None, split_k: Optional[int] = None) -> torch.Tensor:
    """x [M, K] times the canonical int4 weight (module docstring) -> [M, N] in x's dtype.
    ``perm`` (GPTQ act order): the product reads x[:, perm]. ``config`` (a
    heuristics.GemmConfig) and ``split_k`` override the table, for tuning and tests."""
    return w4a16_gemm_launcher(x, qweight, scales, zeros, group_size, perm, bias,
                               config=config, split_k=split_k)(
        x, qweight, scales, zeros, group_size, perm, bias)


def w8a16_gemm(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
               bias: Optional[torch.Tensor] = None, *, config=None,
               split_k: Optional[int] = None) -> torch.Tensor:
    """x [M, K] times the int8 weight ``w`` [N, K] with fp32 ``w_scale`` [N, 1] (per
    channel) or [N, K // G] (per group) -> [M, N] in x's dtype."""
    return w8a16_gemm_launcher(x, w, w_scale, bias, config=config, split_k=split_k)(
        x, w, w_scale, bias)
