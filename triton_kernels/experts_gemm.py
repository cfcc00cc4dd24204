"""A MoE layer's W8A8 expert GEMMs in one launch: every routed (token, expert) pair's row
times its expert's weight, for all experts of a projection at once.

The pairs are p = slot * T + token (transformers' slot-major order) of the router's
``top_k_index`` [T, top_k]. Program (e * B + b, j) takes expert e's pairs of rank
b * BLOCK_M ... b * BLOCK_M + BLOCK_M - 1 (ranked in pair order: the order of transformers'
loop) and the j-th BLOCK_N slice of its output channels:

    c[p, n] = (sum_k a[row(p), k] * w_e[n, k]) * a_scale[row(p)] * w_scale_e[n] (+ bias_e[n])

with row(p) the pair's token (the first projection reads x) or p itself (the down
projection reads the pairs' rows). Each program reads the whole routing (a few hundred ids
at decode) and finds its pairs itself: no sort, no launch before the GEMM, no host read,
so the launch is capturable in a CUDA graph. B = ceil(T * top_k / BLOCK_M) blocks are
launched per expert; those past an expert's pairs return at once. The experts' weights are
not stacked: each expert keeps its own module's tensors, and the kernel reads their
addresses from tables (``pointer_table``), so quantizing a MoE layer needs no second copy
of its weights.

a: fp8 e4m3fn or int8 [R, K], per-row fp32 scales [R, 1]; weights [N, K] of the same type,
contiguous, fp32 per-channel scales [N, 1]; bias bf16 / fp16 / fp32 or none; out bf16 /
fp16 / fp32. fp8 sums each K-step's product into an fp32 accumulator (the promotion of
fp8_gemm.py); int8 accumulates in int32, exactly. The epilogue rounds as fp8_scaled_mm /
int8_gemm do: the product to fp32, times the row scale, times the channel scale, plus the
bias, each in fp32 (no FMA: ``enable_fp_fusion=False``), then once to the out dtype. Given
routing weights (the down projection of QuantizedExperts), it then multiplies that rounded
value by the pair's weight in fp32 and stores fp32: the term the module sums per token.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ._common import (bind, device_index, f32_to_bf16_bits, jit, load_f32, round_to_bf16,
                      sm_count)
from ._common import interpreting as _interpreting

__all__ = ["experts_w8a8", "BLOCK_M", "pointer_table"]

BLOCK_M = 16  # pairs a program takes (tl.dot's smallest M)


@jit
def _experts_w8a8_kernel(a_ptr, sa_ptr, ids_ptr, w_table, ws_table, bias_table, rw_ptr, c_ptr,
                         T, P, E, N, K, stride_it, stride_is, stride_am, stride_cm,
                         stride_rt, stride_rs, BLOCKS_PER_EXPERT, A_BY_TOKEN: tl.constexpr,
                         INT8: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_BF16: tl.constexpr,
                         BIAS_F16: tl.constexpr, BF16_BITS: tl.constexpr, BLOCK_P: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         W_ALIGNED: tl.constexpr = False, WS_ALIGNED: tl.constexpr = False,
                         ROUTE: tl.constexpr = False, ROUND_BF16: tl.constexpr = False,
                         ROUND_F16: tl.constexpr = False, RW_BF16: tl.constexpr = False):
    e = tl.program_id(0) // BLOCKS_PER_EXPERT
    first = (tl.program_id(0) % BLOCKS_PER_EXPERT) * BLOCK_M
    # The routing, read whole by every program (P <= a few hundred ids, from L2): pair
    # p = slot * T + token; this expert's pairs ranked in pair order (the loop's order);
    # lane j takes the pair of rank first + j.
    offs_p = tl.arange(0, BLOCK_P)
    p_ok = offs_p < P
    ids = tl.load(ids_ptr + (offs_p % T).to(tl.int64) * stride_it +
                  (offs_p // T).to(tl.int64) * stride_is, mask=p_ok, other=-1)
    hit = (ids == e) & p_ok
    count = tl.sum(hit.to(tl.int32), axis=0)
    if count <= first:
        return
    rank = tl.cumsum(hit.to(tl.int32), axis=0) - 1
    want = first + tl.arange(0, BLOCK_M)
    match = hit[None, :] & (rank[None, :] == want[:, None])
    pair = tl.sum(tl.where(match, offs_p[None, :], 0), axis=1)
    m_ok = want < count
    if A_BY_TOKEN:
        a_row64 = (pair % T).to(tl.int64)
    else:
        a_row64 = pair.to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_n64 = offs_n.to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    # A weight's address comes from memory, so Triton knows nothing of its alignment and
    # would read the weight a byte at a time; the host checked the table's addresses
    # (pointer_table), and where all are 16-byte multiples it says so (16-byte loads).
    if INT8:
        w_ptr = tl.load(w_table + e).to(tl.pointer_type(tl.int8))
    else:
        w_ptr = tl.load(w_table + e).to(tl.pointer_type(tl.float8e4nv))
    if W_ALIGNED:
        w_ptr = tl.multiple_of(w_ptr, 16)
    a_ptrs = a_ptr + a_row64[:, None] * stride_am + offs_k[None, :]
    # The weight [N, K] K-major, its tile read as [BLOCK_K, BLOCK_N] for tl.dot.
    b_ptrs = w_ptr + offs_n64[None, :] * K + offs_k[:, None]
    if INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # (a trip count rather than range(0, K, BLOCK_K): Triton 3.6's interpreter cannot take
    # a runtime K as range()'s bound)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        k_ok = offs_k < K - kt * BLOCK_K
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
    if WS_ALIGNED:
        ws_ptr = tl.multiple_of(ws_ptr, 16)
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
    c_ptrs = c_ptr + pair.to(tl.int64)[:, None] * stride_cm + offs_n64[None, :]
    c_mask = m_ok[:, None] & n_ok[None, :]
    if ROUTE:
        # The pair's product as its layer returns it (rounded once to the layer's dtype),
        # times the pair's routing weight in fp32: the term the module's sum over the
        # slots adds, stored in fp32.
        if ROUND_BF16:
            out = round_to_bf16(out)
        elif ROUND_F16:
            out = out.to(tl.float16).to(tl.float32)
        rw = load_f32(rw_ptr + (pair % T).to(tl.int64) * stride_rt +
                      (pair // T).to(tl.int64) * stride_rs, m_ok, RW_BF16)
        tl.store(c_ptrs, out * rw[:, None], mask=c_mask)
    elif BF16_BITS:  # the interpreter's own fp32 -> bf16 cast truncates
        tl.store(c_ptrs, f32_to_bf16_bits(out), mask=c_mask)
    else:
        tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=c_mask)


_BOUND: dict = {}  # signature -> bound launcher (see experts_w8a8)
_TABLES: dict = {}  # (device, data pointers...) -> the device table


_data_ptr = torch.Tensor.data_ptr


def pointer_table(tensors: Sequence[torch.Tensor], device: torch.device
                  ) -> Tuple[torch.Tensor, bool]:
    """(int64 [len(tensors)] on ``device``: the tensors' data pointers, whether every one is
    a multiple of 16). The table is built once per set of addresses and kept (a CUDA graph
    that captured a launch reading it needs it for good; a new set comes only with new
    weights: a reload, a ``.to()``). Built outside a CUDA-graph capture only: the copy a
    capture records runs at the graph's first replay, so a table made there would hold
    nothing until then. A table only says where tensors are: one kept for addresses that a
    later set of tensors reuses is right for those too."""
    key = (device, *map(_data_ptr, tensors))
    hit = _TABLES.get(key)
    if hit is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "experts_w8a8: these experts' weights were never run outside a CUDA-graph "
                "capture; run one forward of the layer before capturing it (its table of "
                "weight addresses is built then)")
        host = torch.tensor(key[1:], dtype=torch.int64)
        if device.type == "cuda":
            host = host.pin_memory()
        hit = _TABLES[key] = (host.to(device, non_blocking=True),
                              all(ptr % 16 == 0 for ptr in key[1:]))
    return hit


def _config(blocks: int, n: int, device: torch.device) -> dict:
    """Tiles for about ``blocks`` busy blocks of pairs over N channels, the best of
    bench/sweep_experts.py (bench/NOTES.md, "The grouped kernel's weights read in 16-byte
    pieces"): 64 channels and 128 K a step where that gives at least two programs an SM (a
    Mixtral layer's both projections at M = 16, its first at M = 1); else 32 channels and
    256 K a step (its down projection at M = 1: two experts at N = 4096)."""
    sms = sm_count(device_index(device)) if device.type == "cuda" else 1
    if blocks * triton.cdiv(n, 64) >= 2 * sms:
        return dict(BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=4)
    return dict(BLOCK_N=32, BLOCK_K=256, num_warps=4, num_stages=4)


def experts_w8a8(a: torch.Tensor, a_scale: torch.Tensor, top_k_index: torch.Tensor,
                 a_by_token: bool, weights: Sequence[torch.Tensor],
                 scales: Sequence[torch.Tensor], biases: Optional[Sequence[torch.Tensor]],
                 out_dtype: torch.dtype, *, route_weights: Optional[torch.Tensor] = None,
                 tiles: Optional[dict] = None) -> torch.Tensor:
    """out [T * top_k, N] of ``out_dtype``: row p = slot * T + token is that pair's product
    with its expert's weight; rows of pairs routed to no expert (ids outside [0, E)) are
    zero. a [R, K] contiguous rows: the tokens' (``a_by_token``: R = T) or the pairs' (R =
    T * top_k); a_scale [R, 1] fp32; top_k_index [T, top_k] integer; weights / scales /
    biases: one per expert, all alike (see the module). ``route_weights`` [T, top_k] (bf16,
    fp16 or fp32): each row is instead the product rounded to ``out_dtype`` times its pair's
    routing weight, in fp32 (an fp32 output). ``tiles``: BLOCK_N, BLOCK_K, num_warps,
    num_stages instead of ``_config``'s (bench/sweep_experts.py)."""
    n, k = weights[0].shape
    t, top_k = top_k_index.shape
    p, e_all, dev = t * top_k, len(weights), a.device
    route = route_weights is not None
    bf16_bits = out_dtype == torch.bfloat16 and _interpreting()
    out = torch.zeros(p, n, dtype=torch.float32 if route else out_dtype, device=dev)
    if p == 0 or n == 0:
        return out
    rw_bf16 = route and route_weights.dtype == torch.bfloat16
    # (bf16 routing weights travel as their int16 bits: the interpreter reads no bf16)
    rw = route_weights.view(torch.int16) if rw_bf16 else route_weights if route else a_scale
    rw_strides = (rw.stride(0), rw.stride(1)) if route else (0, 0)
    has_bias = biases is not None
    bias_bf16 = has_bias and biases[0].dtype == torch.bfloat16
    bias_f16 = has_bias and biases[0].dtype == torch.float16
    w_tab, w_aligned = pointer_table(weights, dev)
    ws_tab, ws_aligned = pointer_table(scales, dev)
    b_tab = pointer_table(biases, dev)[0] if has_bias else w_tab
    # Blocks an expert may need: all P pairs (a router that sends a token to one expert
    # twice included); programs past an expert's pairs return at once.
    per_expert = -(-p // BLOCK_M)  # (not triton.cdiv: a Triton function, slower to call)
    sizes = (t, p, e_all, n, k, top_k_index.stride(0), top_k_index.stride(1), a.stride(0),
             out.stride(0), *rw_strides, per_expert)
    # Everything the compiled kernel is specialized on (dtypes, the integers, each pointer's
    # 16-byte alignment) keys its bound launcher: a decode step's launch skips Triton's
    # generic path (_common.bind).
    key = (dev, a.dtype, top_k_index.dtype, out_dtype, a_by_token, has_bias, bias_bf16,
           bias_f16, bf16_bits, w_aligned, ws_aligned, sizes,
           tuple(sorted(tiles.items())) if tiles else None,
           a.data_ptr() % 16, a_scale.data_ptr() % 16, top_k_index.data_ptr() % 16,
           rw.dtype if route else None, rw.data_ptr() % 16)
    launch = _BOUND.get(key)
    c = out.view(torch.int16) if bf16_bits and not route else out
    args = (a, a_scale, top_k_index, w_tab, ws_tab, b_tab, rw, c, *sizes)
    if launch is None:
        cfg = tiles or _config(min(e_all, p) * triton.cdiv(min(t, p), BLOCK_M), n, dev)
        grid = (e_all * per_expert, triton.cdiv(n, cfg["BLOCK_N"]))
        consts = dict(A_BY_TOKEN=a_by_token, INT8=a.dtype == torch.int8, HAS_BIAS=has_bias,
                      BIAS_BF16=bias_bf16, BIAS_F16=bias_f16, BF16_BITS=bf16_bits,
                      W_ALIGNED=w_aligned, WS_ALIGNED=ws_aligned, ROUTE=route,
                      ROUND_BF16=route and out_dtype == torch.bfloat16,
                      ROUND_F16=route and out_dtype == torch.float16, RW_BF16=rw_bf16,
                      BLOCK_P=max(16, triton.next_power_of_2(p)), enable_fp_fusion=False,
                      BLOCK_M=BLOCK_M, **cfg)
        launch = _BOUND[key] = bind(_experts_w8a8_kernel, grid, args, consts)
    if not launch.direct(a.data_ptr(), a_scale.data_ptr(), top_k_index.data_ptr(),
                         w_tab.data_ptr(), ws_tab.data_ptr(), b_tab.data_ptr(), rw.data_ptr(),
                         c.data_ptr(), *sizes):
        launch(*args)
    return out
