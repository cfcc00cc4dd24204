"""INT8 GEMMs in Triton: a [M, K] int8 x b [N, K] int8 (K-major, the nn.Linear.weight
layout), accumulated exactly in int32 by ``tl.dot`` (IMMA: mma.sync on sm_80 / sm_89,
wgmma s8 on sm_90).

- ``int8_mm``: the int32 product ``a @ b.T`` (exact for K < 131072: |a b| <= 2^14 per term).
- ``int8_gemm``: the fused fp32 epilogue of lowbit.reference.gemm.int8_gemm,

      out[m, n] = ((acc[m, n] - a_zero[m] * b_sum[n]) * a_scale[m]) * b_scale[n] + bias[n]

  with ``b_sum[n] = sum_k b[n, k]`` (the weight's row sums, precomputed once by a module,
  or computed here when a_zero is given without them). The zero-point correction is
  integer arithmetic in int64: the true value ``sum_k (a - z) b`` reaches 255 * 128 * K,
  past int32 from K = 65794 on. The corrected integer is rounded to fp32 once, then the
  two multiplies and the add are each rounded to fp32 (the kernel compiles with
  ``enable_fp_fusion=False``, so no FMA merges them), then one rounding to out dtype: the
  reference's numbers, bit for bit. a_scale is () or [M, 1]; b_scale () or [N, 1]; a_zero
  () or [M, 1] int32; bias [N] of bf16 / fp16 / fp32; out bf16 / fp16 / fp32.

Any M (0 included), N and K: loads are masked, so no alignment is required. Tiles come
from ``heuristics.int8_gemm_config`` (a fixed table).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (allocator, bind, device_index, f32_to_bf16_bits, grouped_tile, jit,
                      kernel_input, load_f32, smem_per_block)
from ._common import interpreting as _interpreting
from .fp8_gemm import _load_k_step
from .heuristics import int8_gemm_config

__all__ = ["int8_mm", "int8_gemm", "int8_mm_launcher", "int8_gemm_launcher", "row_sums"]


@jit
def _row_or_scalar(ptr, offs64, ok, stride, ROW: tl.constexpr, OTHER: tl.constexpr):
    """ptr[offs * stride] per row (masked), or the single value at ptr."""
    if ROW:
        v = tl.load(ptr + offs64 * stride, mask=ok, other=OTHER)
    else:
        v = tl.load(ptr)
    return v


@jit
def _int8_gemm_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, za_ptr, bsum_ptr,
                      M, N, K, stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
                      stride_sam, stride_sbn, stride_zam, stride_bsum,
                      EPILOGUE: tl.constexpr, A_ROW: tl.constexpr, B_ROW: tl.constexpr,
                      HAS_BIAS: tl.constexpr, BIAS_BF16: tl.constexpr, HAS_ZERO: tl.constexpr,
                      ZERO_ROW: tl.constexpr, BF16_BITS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    offs_m64 = offs_m.to(tl.int64)
    offs_n64 = offs_n.to(tl.int64)
    # K offsets and steps in 64 bits, as the fp8 GEMM's.
    stride_ak = tl.cast(stride_ak, tl.int64)
    stride_bk = tl.cast(stride_bk, tl.int64)
    a_ptrs = a_ptr + offs_m64[:, None] * stride_am + offs_k[None, :] * stride_ak
    # b is [N, K] K-major; its tile is read as [BLOCK_K, BLOCK_N], contiguous along K.
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n64[None, :] * stride_bn

    # int32 accumulates exactly: no promotion, one loop-carried dot.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        a, b = _load_k_step(a_ptrs, b_ptrs, offs_k, K - kt * BLOCK_K, m_ok, n_ok)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    c_ptrs = c_ptr + offs_m64[:, None] * stride_cm + offs_n64[None, :] * stride_cn
    c_mask = m_ok[:, None] & n_ok[None, :]
    if not EPILOGUE:
        tl.store(c_ptrs, acc, mask=c_mask)
    else:
        if HAS_ZERO:
            z = _row_or_scalar(za_ptr, offs_m64, m_ok, stride_zam, ZERO_ROW, 0).to(tl.int64)
            bsum = tl.load(bsum_ptr + offs_n64 * stride_bsum, mask=n_ok, other=0).to(tl.int64)
            if ZERO_ROW:
                corr = z[:, None] * bsum[None, :]
            else:
                corr = z * bsum[None, :]
            out = (acc.to(tl.int64) - corr).to(tl.float32)
        else:
            out = acc.to(tl.float32)
        sa = _row_or_scalar(sa_ptr, offs_m64, m_ok, stride_sam, A_ROW, 0.0)
        if A_ROW:
            out = out * sa[:, None]
        else:
            out = out * sa
        sb = _row_or_scalar(sb_ptr, offs_n64, n_ok, stride_sbn, B_ROW, 0.0)
        if B_ROW:
            out = out * sb[None, :]
        else:
            out = out * sb
        if HAS_BIAS:
            bias = load_f32(bias_ptr + offs_n, n_ok, BIAS_BF16)
            out = out + bias[None, :]
        if BF16_BITS:  # the interpreter's own fp32 -> bf16 cast truncates
            tl.store(c_ptrs, f32_to_bf16_bits(out), mask=c_mask)
        else:
            tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=c_mask)


def row_sums(b: torch.Tensor) -> torch.Tensor:
    """int32 [N]: sum_k b[n, k] of an int8 [N, K] weight (|sum| <= 128 K, exact), the
    ``b_sum`` that ``int8_gemm`` takes with a zero point."""
    return b.sum(dim=1, dtype=torch.int32)


def _as_bound_sums(b_sum: torch.Tensor) -> torch.Tensor:
    """A caller's row sums as the kernel was bound for them: int32, read at unit stride from
    a 16-byte-aligned start (the aligned stand-in of the binding)."""
    b_sum = b_sum.to(torch.int32).contiguous()
    return b_sum.clone() if b_sum.data_ptr() % 16 else b_sum


def _bind(a, b, c, epilogue: dict, config):
    """launch(a, b, out, a_scale, b_scale, bias or None, a_zero, b_sum) for arguments of the
    signature of these (``c`` and the epilogue tensors may be stand-ins of the right dtypes:
    the output's strides are those of a contiguous [M, N] tensor): the tiles, the grid and
    the constexprs are worked out and the kernel compiled once (_common.bind)."""
    m, k = a.shape
    n = b.shape[0]
    cfg = config if config is not None else int8_gemm_config(
        m, n, k, smem_limit=None if _interpreting() else smem_per_block(device_index(a.device)))
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    epilogue = dict(epilogue)
    tensors, strides = epilogue.pop("tensors"), epilogue.pop("strides")
    sizes = (m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), n, 1, *strides)
    consts = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                  GROUP_M=cfg.group_m, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                  enable_fp_fusion=False, **epilogue)
    kernel = bind(_int8_gemm_kernel, grid, (a, b, c, *tensors, *sizes), consts)
    c_dtype = c.dtype  # (int16 for the bits of a bf16 output under the interpreter)

    def launch(a, b, c, sa, sb, bias, za, bs):
        # bias None: no bias. The direct launch takes the data pointers (no views to build);
        # Triton's own path, where bind leaves the launch to it, the tensors as bound.
        cp = c.data_ptr()
        if not kernel.direct(a.data_ptr(), b.data_ptr(), cp, sa.data_ptr(), sb.data_ptr(),
                             cp if bias is None else bias.data_ptr(), za.data_ptr(),
                             bs.data_ptr(), *sizes):
            c = c.view(c_dtype)
            kernel(a, b, c, sa, sb, c if bias is None else kernel_input(bias)[0], za, bs,
                   *sizes)

    return launch


_MM = dict(strides=(0, 0, 0, 0), EPILOGUE=False, A_ROW=False, B_ROW=False, HAS_BIAS=False,
           BIAS_BF16=False, HAS_ZERO=False, ZERO_ROW=False, BF16_BITS=False)


def int8_mm_launcher(a: torch.Tensor, b: torch.Tensor, config=None):
    """launch(a, b) -> a @ b.T in int32 for arguments of the signature of a and b (shapes,
    strides, alignment): a call is the output's allocation and the kernel's launch."""
    m, n, dev = a.shape[0], b.shape[0], a.device
    empty, shape = torch.empty, (m, n)
    if m == 0 or n == 0:
        return lambda a, b: empty(shape, dtype=torch.int32, device=dev)
    c0 = empty(16, dtype=torch.int32, device=dev)  # an aligned int32 stand-in
    kernel = _bind(a, b, c0, dict(_MM, tensors=(c0,) * 5), config)

    new = allocator()

    def launch(a, b):
        out = new(dev, torch.int32, m, n)
        kernel(a, b, out, out, out, None, out, out)
        return out

    return launch


def int8_mm(a: torch.Tensor, b: torch.Tensor, config=None) -> torch.Tensor:
    """a [M, K] int8 x b [N, K] int8 -> int32 [M, N], exact (arguments validated by
    lowbit.ops). ``config`` (a heuristics.GemmConfig) overrides the table."""
    return int8_mm_launcher(a, b, config)(a, b)


def int8_gemm_launcher(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor,
                       b_scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                       out_dtype: torch.dtype = torch.bfloat16,
                       a_zero: Optional[torch.Tensor] = None, config=None):
    """launch(a, b, a_scale, b_scale, bias, out_dtype, a_zero, b_sum=None) -> out for
    arguments of this signature (shapes, strides, dtypes, alignment): the epilogue's
    constexprs, the tiles and the grid are worked out once. ``b_sum``: ``row_sums(b)``,
    computed by the launch when a zero point comes without it."""
    m, n, dev = a.shape[0], b.shape[0], a.device
    empty, shape = torch.empty, (m, n)
    if m == 0 or n == 0:
        return lambda a, b, a_scale, b_scale, bias, out_dtype, a_zero, b_sum=None: empty(
            shape, dtype=out_dtype, device=dev)
    # Under TRITON_INTERPRET=1 a bf16 output is written as int16 bits rounded in-kernel.
    bf16_bits = out_dtype == torch.bfloat16 and _interpreting()
    c0 = empty(16, dtype=out_dtype, device=dev)  # an aligned stand-in of the out dtype
    c0 = c0.view(torch.int16) if bf16_bits else c0
    has_zero = a_zero is not None
    # The kernel reads bias[n] at unit stride; bf16 travels as its int16 bits.
    bias0, bias_bf16 = kernel_input(bias.contiguous()) if bias is not None else (c0, False)
    za0 = a_zero if has_zero else a_scale
    bs0 = empty(16, dtype=torch.int32, device=dev) if has_zero else a_scale
    epilogue = dict(
        tensors=(a_scale, b_scale, bias0, za0, bs0),
        strides=(a_scale.stride(0) if a_scale.dim() else 0,
                 b_scale.stride(0) if b_scale.dim() else 0,
                 za0.stride(0) if za0.dim() else 0, 1 if has_zero else 0),
        EPILOGUE=True, A_ROW=a_scale.dim() > 0, B_ROW=b_scale.dim() > 0,
        HAS_BIAS=bias is not None, BIAS_BF16=bias_bf16, HAS_ZERO=has_zero,
        ZERO_ROW=has_zero and a_zero.dim() > 0, BF16_BITS=bf16_bits)
    kernel = _bind(a, b, c0, epilogue, config)
    new = allocator()

    def launch(a, b, a_scale, b_scale, bias, out_dtype, a_zero, b_sum=None):
        out = new(dev, out_dtype, m, n)
        # The kernel reads bias[n] at unit stride.
        bias = bias.contiguous() if bias is not None else None
        if has_zero:
            b_sum = row_sums(b) if b_sum is None else _as_bound_sums(b_sum)
            kernel(a, b, out, a_scale, b_scale, bias, a_zero, b_sum)
        else:
            kernel(a, b, out, a_scale, b_scale, bias, a_scale, a_scale)
        return out

    return launch


def int8_gemm(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
              bias: Optional[torch.Tensor] = None, out_dtype: torch.dtype = torch.bfloat16,
              a_zero: Optional[torch.Tensor] = None, b_sum: Optional[torch.Tensor] = None,
              config=None) -> torch.Tensor:
    """The fused INT8 GEMM (see the module); arguments validated by lowbit.ops. ``b_sum``:
    ``row_sums(b)`` computed once by the caller (used only with ``a_zero``; computed here
    when missing). ``config`` overrides the table."""
    return int8_gemm_launcher(a, b, a_scale, b_scale, bias, out_dtype, a_zero, config)(
        a, b, a_scale, b_scale, bias, out_dtype, a_zero, b_sum)
