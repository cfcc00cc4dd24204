"""The public ops of lowbit (the SPEC's op list). Each resolves its backend, unwraps
lowbit's own types, and calls the registered ``torch.ops.lowbit`` op; see ``lowbit/ops.py``
for the checks and ``lowbit/_backend.py`` for how a kernel is chosen.

``backend=None`` means lowbit's current default: the ``use_backend`` context manager, else
the ``LOWBIT_BACKEND`` environment variable, else ``"auto"``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._native import ENTRY as _ENTRY
from .ops import EAGER as _EAGER, OPS as _OPS
from ._backend import _context as _backend_context, arg
from .int4_weight import Int4Weight
from .scale_layout import int4_group_size

def _call(name: str, first: Tensor, *args):
    # Plain tensors outside of tracing skip the dispatcher (see lowbit/ops.py); so do
    # non-tensors, whose TypeError the op's checks word better than the dispatcher would.
    if (type(first) is Tensor or not isinstance(first, Tensor)) and \
            not torch.compiler.is_compiling():
        entry = _ENTRY.get(name)
        if entry is not None and _backend_context.get() is None:
            # lowbit._torch_ops: the plan of this signature, in one C++ call; an unseen one
            # goes through the registered op, which prepares it (lowbit/_native.py). Not
            # under a use_backend backend: the plans cannot see it (a context copied inside
            # the block may run after it, when the plans no longer hold off).
            out = entry(first, *args)
            if out is NotImplemented:
                return _OPS[name](first, *args)
            if out is not None:
                if type(out) is list:  # [the Python function this signature runs]
                    return out[0](first, *args[:-1])
                return out
        return _EAGER[name](first, *args)
    return _OPS[name](first, *args)


def _block_list(op: str, block) -> list:
    """The quantizers' ``block`` as the list the op's schema takes; what is no sequence at
    all is a TypeError here (scale_layout._block words the rest)."""
    try:
        return list(block)
    except TypeError:
        raise TypeError(f"{op}: block must be (128, 128) or (1, 128); got {block!r}") from None


__all__ = [
    "quantize_fp8", "dequantize_fp8", "quantize_int8", "dequantize_int8", "int8_mm",
    "int8_gemm", "fp8_scaled_mm", "fp8_linear", "int8_linear", "int4_quantize", "w4a16_gemm",
    "w8a16_gemm", "native_fp8_format",
]


def native_fp8_format(device=None) -> str:
    """The FP8 format that ``device``'s matrix cores multiply (default: the current CUDA
    device, else the CPU): "e4m3fnuz" on AMD CDNA3 (MI300, gfx940-942), "e4m3fn" elsewhere
    (NVIDIA sm_89+, AMD CDNA4, the CPU reference). Both run everywhere (lowbit's Triton GEMM
    decodes the other one), at the native one's speed only where it is native: e.g.
    ``Fp8Linear.from_linear(lin, fmt=lowbit.native_fp8_format(lin.weight.device))``."""
    from .triton_kernels.targets import fnuz_native  # (imports no triton)

    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return "e4m3fnuz" if fnuz_native(torch.device(device)) else "e4m3fn"


def quantize_fp8(x: Tensor, scale: Optional[Tensor] = None, *, fmt: str = "e4m3fn",
                 granularity: str = "tensor", saturate: bool = True, group_size: int = 128,
                 block: Sequence[int] = (128, 128), backend: Optional[str] = None
                 ) -> Tuple[Tensor, Tensor]:
    """x (fp32/bf16/fp16) -> (q in torch's fp8 dtype of ``fmt``, fp32 scale).

    ``q = encode(x * (1 / scale))``; with ``scale=None`` the scale is computed per
    ``granularity`` as ``max(absmax / fmt max, 2**-126)``, and an all-zero slice gets 1. The
    floor (the smallest normal fp32) keeps ``1 / scale`` finite: without it, an absmax below
    about ``fmt max * 2**-128`` (1.3e-36 for e4m3fn) would make ``1 / scale`` infinite and the
    slice's zeros NaN; with it, tiny values keep fp8's relative precision. A given ``scale``
    is used as given and returned unchanged; it must be finite and of magnitude at least
    ``2**-126``, as every dynamic scale is (a ValueError otherwise, where values are read: on
    the CPU, and on a GPU under ``LOWBIT_CHECK_SCALES=1``, since reading it there would wait
    for the GPU). ``block`` is
    (128, 128) for weight tiles or (1, 128) for activation tiles when
    ``granularity="block"``.
    """
    return _call("quantize_fp8", x, scale, fmt, granularity, group_size,
                 _block_list("quantize_fp8", block), saturate, arg(backend))


def dequantize_fp8(q: Tensor, scale: Tensor, *, out_dtype: torch.dtype = torch.bfloat16,
                   backend: Optional[str] = None) -> Tensor:
    """decode(q) * scale, computed in fp32 and rounded to ``out_dtype``."""
    return _call("dequantize_fp8", q, scale, out_dtype, arg(backend))


def quantize_int8(x: Tensor, scale: Optional[Tensor] = None, *, granularity: str = "token",
                  symmetric: bool = True, zero: Optional[Tensor] = None, group_size: int = 128,
                  block: Sequence[int] = (128, 128), backend: Optional[str] = None
                  ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """x -> (int8 q, fp32 scale, int32 zero or None when symmetric).

    Static quantization passes ``scale`` (and ``zero`` when asymmetric)."""
    q, s, z = _call("quantize_int8", x, scale, zero, granularity, group_size,
                    _block_list("quantize_int8", block), symmetric, arg(backend))
    return q, s, (None if symmetric else z)


def dequantize_int8(q: Tensor, scale: Tensor, zero: Optional[Tensor] = None, *,
                    out_dtype: torch.dtype = torch.bfloat16,
                    backend: Optional[str] = None) -> Tensor:
    """(q - zero) * scale, computed in fp32 and rounded to ``out_dtype``."""
    return _call("dequantize_int8", q, scale, zero, out_dtype, arg(backend))


def int8_mm(a: Tensor, b: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """a int8 [M, K] x b int8 [N, K] -> exact int32 [M, N] (K < 131072)."""
    return _call("int8_mm", a, b, arg(backend))


def int8_gemm(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor,
              bias: Optional[Tensor] = None, *, out_dtype: torch.dtype = torch.bfloat16,
              a_zero: Optional[Tensor] = None, backend: Optional[str] = None) -> Tensor:
    """W8A8: ``(acc - a_zero[m] * sum_k b[n, k]) * a_scale[m] * b_scale[n] + bias[n]``,
    int32 accumulation, fp32 epilogue, rounded to ``out_dtype``."""
    return _call("int8_gemm", a, b, a_scale, b_scale, bias, out_dtype, a_zero, arg(backend))


def fp8_scaled_mm(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor,
                  bias: Optional[Tensor] = None, *, out_dtype: torch.dtype = torch.bfloat16,
                  fast_accum: bool = False, backend: Optional[str] = None) -> Tensor:
    """a fp8 [M, K] x b fp8 [N, K] with per-tensor, per-row or 128-block fp32 scales, fp32
    accumulation (promoted out of the tensor cores every 128 K unless ``fast_accum``).
    Operands: e4m3fn and e5m2 in any pair, or e4m3fnuz (AMD MI300's format) with itself."""
    return _call("fp8_scaled_mm", a, b, a_scale, b_scale, bias, out_dtype, fast_accum,
                              arg(backend))


def fp8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
               act_scale: Optional[Tensor] = None, *, backend: Optional[str] = None) -> Tensor:
    """A W8A8 FP8 linear layer in one op (what ``lowbit.nn.Fp8Linear`` computes):
    ``quantize_fp8`` of ``x`` [..., K] per token (per tensor with the static ``act_scale``) to
    the format of ``weight`` [N, K] (e4m3fn, or e4m3fnuz), then ``fp8_scaled_mm`` with the
    weight, its per-channel ``weight_scale`` [N, 1] and ``bias``, out in x's dtype: [..., N].
    A signature seen before runs the kernels chosen for it then (one fused launch on CUDA
    kernels)."""
    return _call("fp8_linear", x, weight, weight_scale, bias, act_scale, arg(backend))


def int8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
                act_scale: Optional[Tensor] = None, act_zero: Optional[Tensor] = None, *,
                act_symmetric: bool = True, backend: Optional[str] = None) -> Tensor:
    """A W8A8 INT8 linear layer in one op (what ``lowbit.nn.Int8Linear`` computes):
    ``quantize_int8`` of ``x`` [..., K] per token (per tensor with the static ``act_scale``
    and, when asymmetric, ``act_zero``), then ``int8_gemm`` with the int8 ``weight`` [N, K],
    its per-channel ``weight_scale`` [N, 1] and ``bias``, out in x's dtype: [..., N]. A
    signature seen before runs the kernels chosen for it then."""
    return _call("int8_linear", x, weight, weight_scale, bias, act_scale, act_zero,
                 act_symmetric, arg(backend))


def int4_quantize(w: Tensor, *, group_size: int = 128, symmetric: bool = True,
                  backend: Optional[str] = None) -> Int4Weight:
    """Group-wise int4 quantization of a weight [N, K] into the canonical packed layout.
    ``group_size``: 32, 64 or 128, or -1 (or K) for one group per row, per channel (held as
    ``group_size = K``, scales [N, 1])."""
    if isinstance(w, Tensor) and w.dim() == 2:
        group_size = int4_group_size(group_size, w.shape[1])
    q, s, z = _call("int4_quantize", w, group_size, symmetric, arg(backend))
    return Int4Weight(q, s, None if symmetric else z, group_size)


def w4a16_gemm(x: Tensor, w: Int4Weight, bias: Optional[Tensor] = None, *,
               backend: Optional[str] = None) -> Tensor:
    """x [M, K] (bf16/fp16) x int4 weight -> [M, N] in x's dtype."""
    if not isinstance(w, Int4Weight):
        raise TypeError(f"w4a16_gemm: w must be a lowbit.Int4Weight; got {type(w).__name__}")
    return _call("w4a16_gemm", x, w.qweight, w.scales, w.zeros, w.group_size, w.perm, bias,
                           arg(backend))


def w8a16_gemm(x: Tensor, w: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None, *,
               backend: Optional[str] = None) -> Tensor:
    """Weight-only INT8: x [M, K] (bf16/fp16; fp32 too) times the symmetric int8 weight
    ``w`` [N, K] with fp32 ``w_scale`` [N, 1] per channel or [N, K // G] per group (G in
    32, 64, 128; ``quantize_int8(w, granularity="channel" or "group")``), plus ``bias``:
    ``x @ (w * w_scale).T`` with fp32 accumulation, [M, N] in x's dtype."""
    return _call("w8a16_gemm", x, w, w_scale, bias, arg(backend))
