"""w4a16_gemm and w8a16_gemm on the mixed-input CUDA kernels of ``csrc/wxa16/`` (names, M
ranges and priorities: ``KERNELS`` in this package's ``__init__``; what the kernels do:
``csrc/wxa16/wxa16_gemm.cuh``).

One mma.sync template (bf16/fp16, fp32 accumulation, every arch from sm_80) for both bit
widths: ``cuda_w4a16_gemm_*`` read the prepacked int4 layout (``Int4Weight.prepack()``; a
canonical weight is refused with that advice, since repacking per call would cost more than
the GEMM), ``cuda_w8a16_gemm_*`` the plain int8 [N, K] weight as it is. ``*_decode`` takes
M <= 64 with K split over CTAs (deterministic: partials added in a fixed order),
``*_wide`` M <= 128 the same way with 64-token tiles (groups of 64, 128 or per channel),
``*_tiled`` any M. ``cuda_w4a16_gemm_dequant`` and ``cuda_w8a16_gemm_dequant`` (M > 64)
dequantize the weight to x's dtype with a CUDA kernel and multiply with ``F.linear`` (cuBLAS): a
temporary [N, K] weight per call, rounded to x's dtype (the fused kernels never round the
weight), for a product that keeps near bf16's speed at large M. GPTQ act order: ``x[:, perm]``
is gathered once per call here.

A split launch needs arrival counters that are zero when it starts and that it leaves zero,
and scratch for its partials: both are kept per device and stream
(``lowbit.triton_kernels.scratch``, which the Triton backend's split keeps its own in too;
counters zeroed once), so an eager decode call is one kernel launch with no memset and no
allocation of its own. Under graph capture each launch gets its own pair instead.
"""
from __future__ import annotations

from typing import Optional

import torch

from ... import ops as _ops
from ..._build import _C
from ...triton_kernels.scratch import split_scratch
from .._dense import product, without_k
from .._device import OnDevice, raw_stream
from . import DTYPE_CODE, WXA16_DECODE_MAX_M, device_reason, kernel_id, register
from .gemm import arch_reason, row_stride

__all__ = ["X_DTYPES", "wxa16_gemm_launch"]

X_DTYPES = (torch.bfloat16, torch.float16)
_GROUPS = (32, 64, 128)
_N_MAX = (1 << 31) - 1024  # N and K: the kernels count rows and K steps in int32


def wxa16_gemm_launch(kid: int, bits: int, m: int, n: int, k: int, group: int, ldx: int,
                      x_dtype, ldw: int, scale_dtype, scale_ld: int, has_zeros: bool,
                      zero_ld: int, bias_dtype, ldo: Optional[int] = None):
    """The ``_C.WXA16GemmLaunch`` of kernel ``kid`` for one signature (output [m, n]
    contiguous, or ``ldo``; ``group`` 0: one scale per row of w). Plans on the current
    device."""
    return _C.WXA16GemmLaunch(kid, bits, m, n, k, group, ldx, DTYPE_CODE[x_dtype], ldw,
                              DTYPE_CODE[scale_dtype], scale_ld, has_zeros, zero_ld,
                              DTYPE_CODE[bias_dtype] if bias_dtype is not None else 0,
                              n if ldo is None else ldo)


def _aligned_rows(t: torch.Tensor) -> bool:
    """K-contiguous rows whose starts are 16-byte aligned (an empty weight, K = 0, reads
    nothing: its strides are whatever torch gave it)."""
    if t.numel() == 0:
        return True
    if t.stride(1) != 1 or t.data_ptr() % 16:
        return False
    return t.shape[0] <= 1 or (t.stride(0) * t.element_size()) % 16 == 0


def _dense_rows(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """t with unit column stride (scales, zeros: the kernels take a row stride)."""
    if t is None or t.dim() < 2 or t.stride(1) == 1:
        return t
    return t.contiguous()


def _row_stride(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else (t.stride(0) if t.shape[0] > 1 else t.shape[1])


class _Operands:
    """One call's arguments as the kernels take them (bits, weight, scales, zeros, group)."""

    __slots__ = ("x", "w", "scales", "zeros", "group", "bias", "n", "k")

    def __init__(self, x, w, scales, zeros, group, bias, n, k):
        self.x, self.w, self.scales, self.zeros = x, w, scales, zeros
        self.group, self.bias, self.n, self.k = group, bias, n, k


def _w4(x, qweight, scales, zeros, group_size, perm, bias) -> _Operands:
    if perm is not None:
        x = x.index_select(1, perm.to(torch.int64))
    # One group of the whole row (per channel, G = K) is the kernels' group 0: one scale per row.
    group = 0 if scales.shape[1] == 1 else group_size
    return _Operands(x, qweight, scales, zeros, group, bias, scales.shape[0], x.shape[1])


def _w8(x, w, w_scale, bias) -> _Operands:
    n, k = w.shape
    group = 0 if w_scale.shape[1] <= 1 else k // w_scale.shape[1]  # (K = 0: scales [N, 0])
    return _Operands(x, w, w_scale, None, group, bias, n, k)


def _reason(bits: int, o: _Operands, m_range, variant=None) -> Optional[str]:
    m = o.x.shape[0]
    if not m_range[0] <= m <= m_range[1]:
        return f"M = {m} outside [{m_range[0]}, {m_range[1]}]"
    why = device_reason(o.x)
    if why:
        return why
    if o.x.dtype not in X_DTYPES:
        return f"takes bfloat16 or float16 activations; got {o.x.dtype}"
    if o.n > _N_MAX:
        return f"N = {o.n} is beyond the kernels' int32 row counts"
    if o.k % 16:
        return f"K = {o.k} is not a multiple of 16"
    if o.k > _N_MAX:
        return f"K = {o.k} is beyond the kernels' int32 K-step counts"
    if ((m_range[1] <= WXA16_DECODE_MAX_M or variant == "wide")
            and o.n * max(_row_stride(o.scales), _row_stride(o.zeros)) >= 1 << 31):
        return "2^31 scales or more: the decode and wide kernels' offsets are int32"
    if bits == 4:
        if o.w.dim() != 4:
            return "prepack the weight: Int4Weight.prepack()"
        if not o.w.is_contiguous() or o.w.data_ptr() % 16:
            return "the prepacked qweight must be contiguous and 16-byte aligned"
    else:
        if o.group not in (0,) + _GROUPS or (o.group and o.k % o.group):
            return (f"w_scale [N, {o.scales.shape[1]}] gives a group of K / "
                    f"{o.scales.shape[1]}; the kernels take per-channel or groups of {_GROUPS}")
        if o.scales.dtype != torch.float32:
            return f"takes fp32 w_scale; got {o.scales.dtype}"
        if not _aligned_rows(o.w):
            return "w needs K-contiguous rows with 16-byte-aligned starts and strides"
    return None


def _groups_reason(o: _Operands) -> Optional[str]:
    """The wgmma and wide kernels' groups: 64, 128 or one scale per row."""
    if o.group not in (0, 64, 128):
        return f"takes groups of 64 or 128 or one scale per row; got {o.group}"
    return None


# int8 groups run the wgmma kernel to this M, as far as it was measured to lead: their fp32
# scales are applied chunk by chunk (promoted) in 64-token tiles, a quarter of the tokens a
# dequantized chunk serves per channel, and are not timed above it. Per channel the sums
# stay in the tensor core, in 256-token tiles, at any M (H100, 2026-12-06: 182.9 us at
# 1024 x 14336 x 4096, where the dequantize path timed 232.4; lowbit/heuristics.py).
W8A16_WGMMA_GROUPS_MAX_M = 256


def _wgmma_reason(o: _Operands, bits: int) -> Optional[str]:
    """What the sm_90a wgmma kernel adds to ``_reason``: an sm_90 device (not stepped down by
    LOWBIT_ARCH), groups of 64, 128 or one scale per row (int8 groups to M = 256), and an
    int8 weight whose rows lie apart (its TMA map takes no row stride below K; x is copied
    where its rows overlap)."""
    if o.w.dim() == 2 and _overlapping_rows(o.w, o.k):
        return "the int8 weight's rows overlap (row stride below K): TMA cannot read them"
    why = arch_reason(90, o.x.device) or _groups_reason(o)
    if why is None and bits == 8 and o.group and o.x.shape[0] > W8A16_WGMMA_GROUPS_MAX_M:
        why = (f"takes int8 weights with group scales up to M = {W8A16_WGMMA_GROUPS_MAX_M} "
               f"(per channel at any M); got M = {o.x.shape[0]}")
    return why


def _overlapping_rows(t: torch.Tensor, k: int) -> bool:
    return t.shape[0] > 1 and t.stride(0) < k


def _dequant_then_linear(launch, dev, idx, o: _Operands):
    """The large-M product: the weight dequantized to x's dtype by the CUDA kernel, then
    ``F.linear`` (cuBLAS; the bias as ``backends._dense.product`` adds it)."""
    go, empty = launch.launch, torch.empty
    shape, dtype = (o.n, o.k), o.x.dtype
    dense = product(dtype, None if o.bias is None else o.bias.dtype)

    def prepared(o: _Operands):
        w = empty(shape, dtype=dtype, device=dev)
        with OnDevice(dev):
            go(0, o.w.data_ptr(), o.scales.data_ptr(),
               0 if o.zeros is None else o.zeros.data_ptr(), 0, 0, 0, w.data_ptr(),
               raw_stream(idx))
        return dense(o.x, w, o.bias)

    return prepared


def _make(op: str, bits: int, operands):
    def make(name: str, m_range, variant):
        kid = kernel_id(name)

        def supports(*args) -> Optional[str]:
            if kid is None:
                return "not in this build"
            if op == "w4a16_gemm" and args[5] is not None:  # perm: reason on x as it is
                args = (args[0], args[1], args[2], args[3], args[4], None, args[6])
            o = operands(*args)
            why = _reason(bits, o, m_range, variant)
            if why is None and variant == "wgmma":
                why = _wgmma_reason(o, bits)
            if why is None and variant == "wide":
                why = _groups_reason(o)
            return why

        def launcher(o: _Operands):
            # Everything but the pointers and the workspace is a function of the signature.
            x = o.x
            m = x.shape[0]
            dev, idx = x.device, x.device.index
            with OnDevice(dev):
                launch = wxa16_gemm_launch(
                    kid, bits, m, o.n, o.k, o.group, row_stride(x), x.dtype,
                    _row_stride(o.w) if bits == 8 else 0, o.scales.dtype,
                    _row_stride(o.scales), o.zeros is not None, _row_stride(o.zeros),
                    None if o.bias is None else o.bias.dtype,
                    o.k if variant == "dequant" else None)
            if variant == "dequant":
                return _dequant_then_linear(launch, dev, idx, o)
            c_bytes, p_bytes = launch.counter_bytes, launch.partial_bytes
            go, empty = launch.launch, torch.empty
            capturing = torch.cuda.is_current_stream_capturing
            shape, dtype = (m, o.n), x.dtype

            def prepared(o: _Operands):
                out = empty(shape, dtype=dtype, device=dev)
                with OnDevice(dev):
                    stream = raw_stream(idx)
                    cp = pp = 0
                    if c_bytes:
                        counters, partials = split_scratch(dev, stream, c_bytes, p_bytes,
                                                           capturing())
                        cp, pp = counters.data_ptr(), partials.data_ptr()
                    go(o.x.data_ptr(), o.w.data_ptr(), o.scales.data_ptr(),
                       0 if o.zeros is None else o.zeros.data_ptr(),
                       0 if o.bias is None else o.bias.data_ptr(), cp, pp, out.data_ptr(),
                       stream)
                return out

            # The C++ plan (lowbit/_native.py): the launch object, whose counters are its
            # own, and the partials as the plan's workspace.
            prepared.native = lambda: (launch, p_bytes)
            return prepared

        def dense(o: _Operands) -> _Operands:
            x = o.x
            # (the wgmma kernel reads x through a TMA map, which takes no row stride below K:
            # one row expanded is copied too)
            if not _aligned_rows(x) or (variant == "wgmma" and _overlapping_rows(x, o.k)):
                x = x.clone(memory_format=torch.contiguous_format)
            bias = None if o.bias is None else o.bias.contiguous()
            return _Operands(x, o.w, _dense_rows(o.scales), _dense_rows(o.zeros), o.group,
                             bias, o.n, o.k)

        def run(*args):
            o = operands(*args)
            if o.x.shape[0] == 0 or o.n == 0:
                return torch.empty((o.x.shape[0], o.n), dtype=o.x.dtype, device=o.x.device)
            if o.k == 0:
                return without_k(o.x.shape[0], o.n, o.x.dtype, o.x.device, o.bias)
            o = dense(o)
            return launcher(o)(o)

        def prepare(*args):
            o = operands(*args)
            d = dense(o)
            if o.x.shape[0] == 0 or o.n == 0 or o.k == 0 or any(
                    a is not b for a, b in zip((o.x, o.scales, o.zeros, o.bias),
                                               (d.x, d.scales, d.zeros, d.bias))):
                return run
            launch = launcher(d)

            def prepared(*a):  # (a perm's gather runs per call, in operands)
                return launch(operands(*a))

            if op != "w4a16_gemm" or args[5] is None:  # a perm: no C++ plan
                native = getattr(launch, "native", None)
                if native is not None:
                    prepared.native = native
            prepared.__name__ = name
            return prepared

        run.__name__ = name
        return run, supports, prepare
    return make


register("w4a16_gemm", "wxa16_gemm", _make("w4a16_gemm", 4, _w4))
# w8a16_gemm is an op of its own (ops.py); register its kernels where this build defines it.
if "w8a16_gemm" in _ops.DEFS:
    register("w8a16_gemm", "wxa16_gemm", _make("w8a16_gemm", 8, _w8))
