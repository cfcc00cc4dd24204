"""FP8 scaled GEMM in Triton: ``out[m, n] = sum_k a[m, k] sa(m, k) * b[n, k] sb(n, k) + bias[n]``.

a: [M, K] fp8, b: [N, K] fp8 (K-major, the nn.Linear.weight layout), fp32 accumulation,
output bf16 / fp16 / fp32. Scales (fp32) per operand:

=========== ================================ ============================================
mode        a_scale / b_scale                where it is applied
=========== ================================ ============================================
0 tensor    ``()``                           epilogue
1 row       ``[M, 1]`` / ``[N, 1]``          epilogue
2 block     ``[M, ceil(K/128)]`` /           to each K-step's partial product, in fp32
            ``[ceil(N/128), ceil(K/128)]``   (DeepSeek-V3 1x128 / 128x128 block scaling)
=========== ================================ ============================================

Accumulation. Hopper's fp8 wgmma keeps about 14 bits of mantissa in its accumulator; at
K = 4096 that costs percent-level error. Unless ``fast_accum``, every K-step (BLOCK_K <= 128)
runs ``tl.dot`` from a zero accumulator and adds the partial product to a separate fp32
accumulator: the promotion of CUTLASS's "2xAcc" / DeepGEMM. (On sm_90 Triton does not fold
``acc + dot(a, b, 0)`` back into ``dot(a, b, acc)`` for fp8 operands, because their
``max_num_imprecise_acc`` is non-zero.) ``fast_accum`` uses ``tl.dot(a, b, acc)``.
Block scales force the per-step form in both modes. Measured on an H100 at M = 128,
K = 16384, on data with a common offset: relative error 1.0e-4 promoted, 0.32 with
``fast_accum``; the BLOCK_M = 16 tiles run mma.sync, which accumulates fp8 in full fp32
(3.6e-8 either way). ``LOWBIT_TRITON_FP8_PROMOTE=dot`` selects the equivalent
``tl.dot(a, b, acc, max_num_imprecise_acc=BLOCK_K)`` (same error, same speed measured).

Operands: e4m3fn and e5m2 (OCP) go to ``tl.dot`` as they are (NVIDIA sm_89+, and AMD's
software emulation before CDNA4). e4m3fnuz (AMD MI300's format) pairs only with e4m3fnuz:
on CDNA3 (gfx940-942) its matrix cores multiply it natively, and everywhere else (NVIDIA,
other AMD chips, the interpreter) the kernel decodes the codes to fp16 after loading them
(``DECODE``: exact, since every e4m3 value is an fp16 value, NaN included) and runs an fp16
``tl.dot`` with fp32 accumulation. Either way the result is the same product in fp32.

Any M, N, K: loads are masked, so no alignment is required; M = 0 returns at once.
``GemmConfig.k_unroll = 2`` takes two K-steps per loop iteration (two dots written before
either is promoted); the result is the same as with 1. Tile choice comes from
``heuristics.fp8_gemm_config`` (a fixed table; no autotuning on the hot path;
``LOWBIT_TRITON_AUTOTUNE=1`` autotunes over ``heuristics.fp8_gemm_configs()`` for offline
tuning).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (allocator, bind, device_index, fp8_decode, grouped_tile, jit,
                      smem_per_block)
from ._common import interpreting as _interpreting
from .fp8_quant import f32_to_bf16_bits, fmt_constants
from .heuristics import fp8_gemm_config, fp8_gemm_configs
from .targets import fnuz_native

__all__ = ["fp8_scaled_mm", "scale_mode", "decodes", "fnuz_native"]

SCALE_TENSOR, SCALE_ROW, SCALE_BLOCK = 0, 1, 2
# How the accurate mode promotes: "add" (acc += tl.dot(a, b) from zero each K-step) or "dot"
# (tl.dot(a, b, acc, max_num_imprecise_acc=BLOCK_K)); both add into fp32 every BLOCK_K.
PROMOTE_DEFAULT = "add"


@jit
def _load_k_step(a_ptrs, b_ptrs, offs_k, k_left, m_ok, n_ok):
    """One K-step's a [BLOCK_M, BLOCK_K] and b [BLOCK_K, BLOCK_N] tiles; K at or past k_left
    (all of it when k_left <= 0) and rows past M / N read as 0."""
    a = tl.load(a_ptrs, mask=m_ok[:, None] & (offs_k[None, :] < k_left), other=0.0)
    b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & n_ok[None, :], other=0.0)
    return a, b


@jit
def _decoded(a, b, DECODE: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
             FMT_ID: tl.constexpr, SUB_UNIT: tl.constexpr):
    """The K-step's tiles as ``tl.dot`` takes them: as loaded, or (DECODE) their fp8 codes
    decoded to fp16, exactly: every e4m3 value (magnitudes 2^-10 to 240 for e4m3fnuz) and
    NaN are fp16 values. (fp16 rather than bf16: the interpreter multiplies bf16 tiles as
    their integer bits.)"""
    if DECODE:
        a = fp8_decode(a, MBITS, BIAS, FMT_ID, SUB_UNIT).to(tl.float16)
        b = fp8_decode(b, MBITS, BIAS, FMT_ID, SUB_UNIT).to(tl.float16)
    return a, b


@jit
def _block_scaled(part, k0, K, sa_ptr, sb_ptr, offs_m64, offs_n64, m_ok, n_ok,
                  stride_sam, stride_sak, stride_sbn, stride_sbk,
                  A_MODE: tl.constexpr, B_MODE: tl.constexpr):
    """The partial product of the K-step starting at k0, times its 128-block scales. BLOCK_K
    divides 128, so the step lies inside scale block k0 // 128. A step at or past K (the
    unrolled loop's empty second half) reads no scale: its column ceil(K/128) may not exist."""
    kb = k0 // 128
    # tl.where rather than m_ok & (k0 < K): the interpreter widens a broadcast int1 scalar
    # to int32, which tl.load refuses as a mask.
    if A_MODE == 2:
        sa = tl.load(sa_ptr + offs_m64 * stride_sam + kb * stride_sak,
                     mask=tl.where(k0 < K, m_ok, False), other=0.0)
        part = part * sa[:, None]
    if B_MODE == 2:
        sb = tl.load(sb_ptr + (offs_n64 // 128) * stride_sbn + kb * stride_sbk,
                     mask=tl.where(k0 < K, n_ok, False), other=0.0)
        part = part * sb[None, :]
    return part


@jit
def _fp8_scaled_mm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, M, N, K,
                          stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
                          stride_sam, stride_sak, stride_sbn, stride_sbk,
                          A_MODE: tl.constexpr, B_MODE: tl.constexpr, BLOCKWISE: tl.constexpr,
                          HAS_BIAS: tl.constexpr, FAST_ACCUM: tl.constexpr,
                          PROMOTE_IN_DOT: tl.constexpr, BF16_BITS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          GROUP_M: tl.constexpr, K_UNROLL: tl.constexpr,
                          # DECODE: a and b are the operands' codes as uint8 (Triton's
                          # NVIDIA backend takes no e4m3fnuz pointer), decoded after each
                          # load; MBITS ... SUB_UNIT: their format's fp8_decode constants.
                          DECODE: tl.constexpr = False, MBITS: tl.constexpr = 3,
                          BIAS: tl.constexpr = 8, FMT_ID: tl.constexpr = 2,
                          SUB_UNIT: tl.constexpr = 2.0 ** -10,
                          # SWAPPED: the launcher passed the product transposed (a the
                          # weight, b the activations, c's strides swapped): the bias runs
                          # along the rows.
                          SWAPPED: tl.constexpr = False):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    offs_m64 = offs_m.to(tl.int64)
    offs_n64 = offs_n.to(tl.int64)
    # K offsets and steps in 64 bits: the K-stride of a column-major view can be large enough
    # that BLOCK_K of it passes 2^31 (the usual stride of 1 folds away).
    stride_ak = tl.cast(stride_ak, tl.int64)
    stride_bk = tl.cast(stride_bk, tl.int64)
    a_ptrs = a_ptr + offs_m64[:, None] * stride_am + offs_k[None, :] * stride_ak
    # b is [N, K] K-major; the tile is read as [BLOCK_K, BLOCK_N], contiguous along K, the
    # operand order fp8 wgmma wants.
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n64[None, :] * stride_bn

    # K_UNROLL = 2: each iteration takes two K-steps, chunks 0 and 1, of BLOCK_K each.
    # When the number of K-steps is odd, the last chunk 1 lies wholly past K: its loads are
    # masked to zeros, its block scales are not read, and it adds an exact 0. (a1, b1, p1
    # exist only under K_UNROLL == 2, a constexpr, and are used only under the same test.)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(0, tl.cdiv(K, BLOCK_K * K_UNROLL)):
        k0 = kt * (BLOCK_K * K_UNROLL)
        a0, b0 = _load_k_step(a_ptrs, b_ptrs, offs_k, K - k0, m_ok, n_ok)
        a0, b0 = _decoded(a0, b0, DECODE, MBITS, BIAS, FMT_ID, SUB_UNIT)
        if K_UNROLL == 2:
            a1, b1 = _load_k_step(a_ptrs + BLOCK_K * stride_ak, b_ptrs + BLOCK_K * stride_bk,
                                  offs_k, K - k0 - BLOCK_K, m_ok, n_ok)
            a1, b1 = _decoded(a1, b1, DECODE, MBITS, BIAS, FMT_ID, SUB_UNIT)
        if FAST_ACCUM and not BLOCKWISE:
            acc = tl.dot(a0, b0, acc)
            if K_UNROLL == 2:
                acc = tl.dot(a1, b1, acc)
        elif PROMOTE_IN_DOT and not BLOCKWISE:
            # The same promotion done by Triton's wgmma lowering: a partial accumulator
            # added into acc every max_num_imprecise_acc (= BLOCK_K) K elements, with acc
            # still a loop-carried dot accumulator.
            acc = tl.dot(a0, b0, acc, max_num_imprecise_acc=BLOCK_K)
            if K_UNROLL == 2:
                acc = tl.dot(a1, b1, acc, max_num_imprecise_acc=BLOCK_K)
        else:
            # Promotion: a fresh partial sum each K-step, added into acc in fp32. Triton
            # waits for a fresh dot's wgmma to finish before its result is used, so the
            # tensor cores idle while it is added; with K_UNROLL = 2 both dots are written
            # before either is used, so that the second may run during the first's
            # promotion. (Triton 3.6 and 3.9 still place a wait 0 right after each dot in
            # sm_90a PTX; what is certain is one loop iteration, with its cp.async wait and
            # barrier, per two K-steps.) The additions keep their order: the sum equals
            # K_UNROLL = 1's.
            p0 = tl.dot(a0, b0)
            if K_UNROLL == 2:
                p1 = tl.dot(a1, b1)
            if BLOCKWISE:
                p0 = _block_scaled(p0, k0, K, sa_ptr, sb_ptr, offs_m64, offs_n64, m_ok, n_ok,
                                   stride_sam, stride_sak, stride_sbn, stride_sbk,
                                   A_MODE, B_MODE)
            acc += p0
            if K_UNROLL == 2:
                if BLOCKWISE:
                    p1 = _block_scaled(p1, k0 + BLOCK_K, K, sa_ptr, sb_ptr, offs_m64,
                                       offs_n64, m_ok, n_ok, stride_sam, stride_sak,
                                       stride_sbn, stride_sbk, A_MODE, B_MODE)
                acc += p1
        a_ptrs += (BLOCK_K * K_UNROLL) * stride_ak
        b_ptrs += (BLOCK_K * K_UNROLL) * stride_bk

    # Epilogue in fp32: the per-tensor / per-row scales, then the bias, then one rounding.
    if A_MODE == 0:
        acc = acc * tl.load(sa_ptr)
    elif A_MODE == 1:
        sa = tl.load(sa_ptr + offs_m64 * stride_sam, mask=m_ok, other=0.0)
        acc = acc * sa[:, None]
    if B_MODE == 0:
        acc = acc * tl.load(sb_ptr)
    elif B_MODE == 1:
        sb = tl.load(sb_ptr + offs_n64 * stride_sbn, mask=n_ok, other=0.0)
        acc = acc * sb[None, :]
    if HAS_BIAS:
        if SWAPPED:
            bias = tl.load(bias_ptr + offs_m, mask=m_ok, other=0.0).to(tl.float32)
            acc = acc + bias[:, None]
        else:
            bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            acc = acc + bias[None, :]
    c_ptrs = c_ptr + offs_m64[:, None] * stride_cm + offs_n64[None, :] * stride_cn
    c_mask = m_ok[:, None] & n_ok[None, :]
    if BF16_BITS:  # the interpreter's own fp32 -> bf16 cast truncates; round to nearest even
        tl.store(c_ptrs, f32_to_bf16_bits(acc), mask=c_mask)
    else:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


FNUZ = "e4m3fnuz"
# The largest M the launcher multiplies transposed (the weight's rows as the dot's M).
SWAP_AB_MAX_M = 16


def decodes(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the kernel decodes operands of ``dtype`` to fp16 before its dots on
    ``device``: e4m3fnuz wherever it is not native (targets.fnuz_native), the interpreter
    included."""
    return dtype == torch.float8_e4m3fnuz and (_interpreting() or not fnuz_native(device))


def _codes(t: torch.Tensor) -> torch.Tensor:
    """An fp8 operand as the uint8 codes the decoding kernel reads."""
    return t.view(torch.uint8)


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _autotuned_kernel():
    """The kernel wrapped in triton.autotune over heuristics.fp8_gemm_configs() (offline
    tuning only: the first call per shape key benchmarks every config)."""
    global _AUTOTUNED
    if _AUTOTUNED is None:
        configs = [triton.Config(dict(BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k,
                                      GROUP_M=c.group_m, K_UNROLL=c.k_unroll),
                                 num_warps=c.num_warps, num_stages=c.num_stages)
                   for c in fp8_gemm_configs()]
        _AUTOTUNED = triton.autotune(configs=configs, key=["M", "N", "K", "A_MODE", "B_MODE",
                                                           "FAST_ACCUM"])(_fp8_scaled_mm_kernel)
    return _AUTOTUNED


_AUTOTUNED = None


def scale_mode(tile) -> int:
    """The kernel's A_MODE / B_MODE for a scale whose entries each cover ``tile`` = (rows,
    cols) of its operand (lowbit.scale_layout.scale_tile): 0 per tensor, 1 per row, else 2,
    a 128-block scale (a's [M, ceil(K/128)], b's [ceil(N/128), ceil(K/128)])."""
    if tile[0] == 0:
        return SCALE_TENSOR
    if tile == (1, 0):
        return SCALE_ROW
    return SCALE_BLOCK


def fp8_scaled_mm(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor,
                  b_scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  out_dtype: torch.dtype = torch.bfloat16, fast_accum: bool = False,
                  config=None, promote_in_dot: Optional[bool] = None, *,
                  a_tile, b_tile) -> torch.Tensor:
    """a [M, K] fp8 x b [N, K] fp8 -> [M, N] of out_dtype (arguments validated by
    lowbit.ops). ``a_tile`` / ``b_tile``: what each scale entry covers (see
    ``scale_mode``; the caller reads them off the scales' shapes with
    lowbit.scale_layout.scale_tile). ``config`` (a
    heuristics.GemmConfig) overrides the table, and ``promote_in_dot`` the accurate mode's
    form (LOWBIT_TRITON_FP8_PROMOTE=dot|add), for tuning."""
    args = (a, b, a_scale, b_scale, bias, out_dtype, fast_accum)
    if config is None and os.environ.get("LOWBIT_TRITON_AUTOTUNE") == "1":
        return _autotuned(*args, promote_in_dot, a_tile=a_tile, b_tile=b_tile)
    return fp8_scaled_mm_launcher(*args, config, promote_in_dot, a_tile=a_tile,
                                  b_tile=b_tile)(*args)


def _layout(a, b, a_scale, b_scale, out_dtype, promote_in_dot, a_tile, b_tile):
    """(scale modes, constexprs, scale strides, whether c is bf16 bits) of a signature."""
    a_mode, b_mode = scale_mode(a_tile), scale_mode(b_tile)
    blockwise = SCALE_BLOCK in (a_mode, b_mode)  # block scales apply inside the K loop
    if promote_in_dot is None:
        promote_in_dot = os.environ.get("LOWBIT_TRITON_FP8_PROMOTE", PROMOTE_DEFAULT) == "dot"
    sam, sak = (a_scale.stride(0), a_scale.stride(1)) if a_scale.dim() == 2 else (0, 0)
    sbn, sbk = (b_scale.stride(0), b_scale.stride(1)) if b_scale.dim() == 2 else (0, 0)
    # Under TRITON_INTERPRET=1 a bf16 output is written as int16 bits rounded in-kernel.
    bf16_bits = out_dtype == torch.bfloat16 and _interpreting()
    consts = dict(A_MODE=a_mode, B_MODE=b_mode, BLOCKWISE=blockwise,
                  PROMOTE_IN_DOT=promote_in_dot, BF16_BITS=bf16_bits)
    if decodes(a.dtype, a.device):
        f = fmt_constants(FNUZ)
        consts.update(DECODE=True, MBITS=f["MBITS"], BIAS=f["BIAS"], FMT_ID=f["FMT_ID"],
                      SUB_UNIT=f["SUB_UNIT"])
    return consts, (sam, sak, sbn, sbk), bf16_bits


def fp8_scaled_mm_launcher(a, b, a_scale, b_scale, bias, out_dtype, fast_accum, config=None,
                           promote_in_dot=None, *, a_tile, b_tile):
    """launch(a, b, a_scale, b_scale, bias, out_dtype, fast_accum) -> out for arguments of
    this signature (shapes, strides, dtypes, scale layouts): the config, the grid and every
    constexpr are worked out once, so that a call is the output's allocation and the kernel's
    launch. ``LOWBIT_TRITON_FP8_PROMOTE`` is read here, when the signature is prepared."""
    m, k = a.shape
    n = b.shape[0]
    dev = a.device
    if m == 0:
        return lambda a, b, a_scale, b_scale, bias, out_dtype, fast_accum: torch.empty(
            (0, n), dtype=out_dtype, device=dev)
    consts, scale_strides, bf16_bits = _layout(a, b, a_scale, b_scale, out_dtype,
                                               promote_in_dot, a_tile, b_tile)
    consts.update(FAST_ACCUM=bool(fast_accum), HAS_BIAS=bias is not None)
    cfg = config if config is not None else fp8_gemm_config(
        m, n, k, fast_accum=bool(fast_accum), blockwise=consts["BLOCKWISE"],
        smem_limit=None if _interpreting() else smem_per_block(device_index(dev)),
        decoded=consts.get("DECODE", False))
    # Decode (M <= SWAP_AB_MAX_M, scales per row or tensor): out^T = b a^T, the weight's
    # rows as the dot's M (64: wgmma on sm_90, with fp8 operands as they are) and the tokens
    # as its N, rather than 16 tokens as M (mma.sync, which on sm_90 takes fp8 only widened
    # to fp16: bench/NOTES.md, "The Triton FP8 GEMM at decode"). The same products, the
    # same per-step promotion; the config's tile transposed.
    swap = config is None and m <= SWAP_AB_MAX_M and not consts["BLOCKWISE"]
    if swap:
        cfg = cfg._replace(block_m=cfg.block_n, block_n=cfg.block_m)
        consts.update(A_MODE=consts["B_MODE"], B_MODE=consts["A_MODE"], SWAPPED=True)
        sam, sak, sbn, sbk = scale_strides
        scale_strides = (sbn, sbk, sam, sak)
    consts.update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                  GROUP_M=cfg.group_m, K_UNROLL=cfg.k_unroll, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages)
    # The kernel's operands: (a, b, their scales, c's row and column strides), transposed
    # when swapped. c's strides are those of a contiguous [m, n] output.
    ka, kb, ksa, ksb, c_strides = ((b, a, b_scale, a_scale, (1, n)) if swap
                                   else (a, b, a_scale, b_scale, (n, 1)))
    rows, cols = ka.shape[0], kb.shape[0]
    grid = (triton.cdiv(rows, cfg.block_m) * triton.cdiv(cols, cfg.block_n),)
    sizes = (rows, cols, k, ka.stride(0), ka.stride(1), kb.stride(0), kb.stride(1), *c_strides,
             *scale_strides)
    # Bound on stand-ins for the output (and the bias when there is none): only their
    # dtypes and alignment are specialized on, and a fresh allocation is aligned.
    c0 = torch.empty(16, dtype=out_dtype, device=dev)
    c0 = c0.view(torch.int16) if bf16_bits else c0
    bias0 = bias.contiguous() if bias is not None else c0
    codes = _codes if consts.get("DECODE") else _same
    kernel = bind(_fp8_scaled_mm_kernel, grid,
                  (codes(ka), codes(kb), c0, ksa, ksb, bias0, *sizes), consts)
    new = allocator()

    def launch(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
        out = new(dev, out_dtype, m, n)
        # The kernel reads bias[n] at unit stride.
        bias = bias.contiguous() if bias is not None else out
        if swap:  # the kernel's a is the weight, its b the activations
            a, b, a_scale, b_scale = b, a, b_scale, a_scale
        # The direct launch takes the data pointers; Triton's own path (the interpreter, a
        # launch hook) the tensors, a bf16 output as its int16 bits under the interpreter.
        if not kernel.direct(a.data_ptr(), b.data_ptr(), out.data_ptr(), a_scale.data_ptr(),
                             b_scale.data_ptr(), bias.data_ptr(), *sizes):
            c = out.view(torch.int16) if bf16_bits else out
            kernel(codes(a), codes(b), c, a_scale, b_scale, c if bias is out else bias, *sizes)
        return out

    return launch


def _autotuned(a, b, a_scale, b_scale, bias, out_dtype, fast_accum, promote_in_dot, *,
               a_tile, b_tile):
    m, k = a.shape
    n = b.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0:
        return out
    consts, scale_strides, bf16_bits = _layout(a, b, a_scale, b_scale, out_dtype,
                                               promote_in_dot, a_tile, b_tile)
    c = out.view(torch.int16) if bf16_bits else out
    bias_arg = bias.contiguous() if bias is not None else out

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    if consts.get("DECODE"):
        a, b = _codes(a), _codes(b)
    _autotuned_kernel()[grid](a, b, c, a_scale, b_scale, bias_arg, m, n, k, a.stride(0),
                              a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
                              *scale_strides, HAS_BIAS=bias is not None,
                              FAST_ACCUM=bool(fast_accum), **consts)
    return out
