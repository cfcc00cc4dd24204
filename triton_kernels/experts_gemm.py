"""A MoE layer's W8A8 expert GEMMs in one launch: every routed (token, expert) pair's row
times its expert's weight, for all experts of a projection at once.

Each program takes one block of BLOCK_M pairs routed to the same expert and one BLOCK_N
slice of that expert's output channels:

    c[c_row[p], n] = (sum_k a[a_row[p], k] * w_e[n, k]) * a_scale[a_row[p]] * w_scale_e[n]
                     (+ bias_e[n])

with ``e = block_expert[block]`` and the pair p's two rows from ``a_row`` / ``c_row``
(``-1``: an empty lane; a block of expert -1 does nothing). The experts' weights are not
stacked: each expert keeps its own module's tensors, and the kernel reads their addresses
from tables (``w_table`` etc., int64 data pointers), so quantizing a MoE layer needs no
second copy of its weights. The routing (which pairs go to which block) is built on the
device by the caller, with no host read, so the launch is capturable in a CUDA graph.

a: fp8 e4m3fn or int8 [R, K], per-row fp32 scales [R, 1]; weights [N, K] of the same type,
contiguous, fp32 per-channel scales [N, 1]; bias bf16 / fp16 / fp32 or none; out bf16 /
fp16 / fp32. fp8 sums each K-step's product into an fp32 accumulator (the promotion of
fp8_gemm.py); int8 accumulates in int32, exactly. The epilogue rounds as fp8_scaled_mm /
int8_gemm do: the product to fp32, times the row scale, times the channel scale, plus the
bias, each in fp32 (no FMA: ``enable_fp_fusion=False``), then once to the out dtype.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ._common import f32_to_bf16_bits, jit, load_f32
from ._common import interpreting as _interpreting

__all__ = ["experts_w8a8", "BLOCK_M", "pointer_table"]

BLOCK_M = 16  # pairs a program takes (tl.dot's smallest M); the caller's routing blocks


@jit
def _experts_w8a8_kernel(a_ptr, sa_ptr, a_row_ptr, c_row_ptr, block_expert_ptr,
                         w_table, ws_table, bias_table, c_ptr, N, K, stride_am, stride_cm,
                         INT8: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_BF16: tl.constexpr,
                         BIAS_F16: tl.constexpr, BF16_BITS: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    block = tl.program_id(0)
    e = tl.load(block_expert_ptr + block)
    if e < 0:
        return
    lanes = block * BLOCK_M + tl.arange(0, BLOCK_M)
    a_row = tl.load(a_row_ptr + lanes)
    m_ok = a_row >= 0
    a_row64 = tl.where(m_ok, a_row, 0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_n64 = offs_n.to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    if INT8:
        w_ptr = tl.load(w_table + e).to(tl.pointer_type(tl.int8))
    else:
        w_ptr = tl.load(w_table + e).to(tl.pointer_type(tl.float8e4nv))
    a_ptrs = a_ptr + a_row64[:, None] * stride_am + offs_k[None, :]
    # The weight [N, K] K-major; its tile read as [BLOCK_K, BLOCK_N], contiguous along K.
    b_ptrs = w_ptr + offs_n64[None, :] * K + offs_k[:, None]
    if INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        if INT8:
            a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        else:
            a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc += tl.dot(a, b)  # each K-step promoted into fp32 (fp8_gemm.py's "add")
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    ws_ptr = tl.load(ws_table + e).to(tl.pointer_type(tl.float32))
    sa = tl.load(sa_ptr + a_row64, mask=m_ok, other=0.0)
    sb = tl.load(ws_ptr + offs_n64, mask=n_ok, other=0.0)
    out = acc.to(tl.float32) * sa[:, None]
    out = out * sb[None, :]
    if HAS_BIAS:
        if BIAS_BF16:
            bias_ptr = tl.load(bias_table + e).to(tl.pointer_type(tl.int16))
        elif BIAS_F16:
            bias_ptr = tl.load(bias_table + e).to(tl.pointer_type(tl.float16))
        else:
            bias_ptr = tl.load(bias_table + e).to(tl.pointer_type(tl.float32))
        out = out + load_f32(bias_ptr + offs_n64, n_ok, BIAS_BF16)[None, :]
    c_row = tl.load(c_row_ptr + lanes).to(tl.int64)
    c_ptrs = c_ptr + c_row[:, None] * stride_cm + offs_n64[None, :]
    c_mask = m_ok[:, None] & n_ok[None, :]
    if BF16_BITS:  # the interpreter's own fp32 -> bf16 cast truncates
        tl.store(c_ptrs, f32_to_bf16_bits(out), mask=c_mask)
    else:
        tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=c_mask)


_TABLES: dict = {}  # tuple of data pointers -> (device table, its pinned host source)


def pointer_table(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """int64 [len(tensors)] on ``device``: the tensors' data pointers, built once per set of
    addresses. The copy comes from pinned memory, kept beside the table, so a first call
    inside a CUDA-graph capture records a copy that stays valid for the graph's replays. A
    table only says where tensors are: one kept for addresses that a later set of tensors
    reuses is right for those too."""
    key = (device, *(t.data_ptr() for t in tensors))
    hit = _TABLES.get(key)
    if hit is None:
        host = torch.tensor(key[1:], dtype=torch.int64)
        if device.type == "cuda":
            host = host.pin_memory()
        hit = _TABLES[key] = (host.to(device, non_blocking=True), host)
    return hit[0]


_SMS: dict = {}


def _config(blocks: int, n: int, device: torch.device) -> dict:
    """Tiles for ``blocks`` blocks of pairs over N channels. Decode streams the weights: the
    narrowest channel slice that still fills every SM four times over would leave each
    program too little to stream, so the widest of 128 / 64 / 32 / 16 channels that gives
    at least four programs an SM (the down projection of two experts at N = 4096 takes 32),
    with 256 K a step below 64 channels so that a stage stays 8 KB of weight."""
    if device.type == "cuda":
        sms = _SMS.get(device.index)
        if sms is None:
            sms = _SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 1
    block_n = 16
    for bn in (128, 64, 32):
        if blocks * triton.cdiv(n, bn) >= 4 * sms:
            block_n = bn
            break
    return dict(BLOCK_N=block_n, BLOCK_K=128 if block_n >= 64 else 256, num_warps=4,
                num_stages=4)


def experts_w8a8(a: torch.Tensor, a_scale: torch.Tensor, a_row: torch.Tensor,
                 c_row: torch.Tensor, block_expert: torch.Tensor,
                 weights: Sequence[torch.Tensor], scales: Sequence[torch.Tensor],
                 biases: Optional[Sequence[torch.Tensor]], rows_out: int,
                 out_dtype: torch.dtype) -> torch.Tensor:
    """out [rows_out, N] of ``out_dtype`` (rows no block writes are zero); see the module.
    a [R, K] contiguous; a_scale [R, 1] fp32; a_row, c_row int32 [blocks * BLOCK_M];
    block_expert int32 [blocks]; weights / scales / biases: one per expert, all alike."""
    n, k = weights[0].shape
    dev = a.device
    bf16_bits = out_dtype == torch.bfloat16 and _interpreting()
    out = torch.zeros(rows_out, n, dtype=out_dtype, device=dev)
    blocks = block_expert.shape[0]
    if blocks == 0 or rows_out == 0 or n == 0:
        return out
    bias_bf16 = biases is not None and biases[0].dtype == torch.bfloat16
    w_tab = pointer_table(weights, dev)
    ws_tab = pointer_table(scales, dev)
    b_tab = pointer_table(biases, dev) if biases is not None else w_tab
    cfg = _config(blocks, n, dev)
    grid = (blocks, triton.cdiv(n, cfg["BLOCK_N"]))
    c = out.view(torch.int16) if bf16_bits else out
    _experts_w8a8_kernel[grid](
        a, a_scale, a_row, c_row, block_expert, w_tab, ws_tab, b_tab, c, n, k, a.stride(0),
        out.stride(0), INT8=a.dtype == torch.int8, HAS_BIAS=biases is not None,
        BIAS_BF16=bias_bf16, BIAS_F16=biases is not None and biases[0].dtype == torch.float16,
        BF16_BITS=bf16_bits, BLOCK_M=BLOCK_M,
        enable_fp_fusion=False, **cfg)
    return out
