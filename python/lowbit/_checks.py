"""Argument checks for every op: the one place where bad input becomes a ValueError or
TypeError naming the argument, what it got and what it needs. Used by the real and the fake
implementations alike, so ``torch.compile`` traces raise the same errors as eager calls.
Checks read shapes, dtypes and devices only: never tensor values (that would synchronize),
with one kind of exception, the value checks (`finite_scales`, `quant_scales`, `int8_zeros`,
`int4_zeros`, `permutation`), which read values where that costs no synchronization (CPU
tensors) or where ``LOWBIT_CHECK_SCALES=1`` asks for it on a GPU.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ._env import getenv
from .reference.quant import MIN_SCALE
from .scale_layout import GRANULARITIES, GROUP_SIZES, scale_shape, scale_tile  # noqa: F401

FP8_DTYPES = {
    "e4m3fn": torch.float8_e4m3fn,
    "e5m2": torch.float8_e5m2,
    "e4m3fnuz": torch.float8_e4m3fnuz,
}
FP8_FORMAT_OF = {v: k for k, v in FP8_DTYPES.items()}
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def dtype(op: str, name: str, t: torch.Tensor, allowed) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dtype not in allowed:
        raise TypeError(f"{op}: {name} must have dtype {_names(allowed)}; got {t.dtype}")


def rank(op: str, name: str, t: torch.Tensor, ndim: int, what: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D {what}; got shape {tuple(t.shape)}")


def same_device(op: str, **tensors) -> torch.device:
    """All given tensors on one device; returns it."""
    device = None
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if device is None:
            device, first = t.device, name
        elif t.device != device:
            raise ValueError(
                f"{op}: all tensors must be on one device; {first} is on {device} "
                f"but {name} is on {t.device}")
    return device


def shape(op: str, name: str, t: torch.Tensor, allowed: Sequence[Tuple[int, ...]], what):
    """``what`` words the allowed shapes: a string, or a callable returning one (formatted
    only when the check fails: the hot path of an eager op pays for no message)."""
    got = tuple(t.shape)
    if got not in allowed:
        raise ValueError(f"{op}: {name} must have shape {what() if callable(what) else what}; "
                         f"got {got}")


def out_dtype(op: str, d) -> None:
    if d not in OUT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be one of {_names(OUT_DTYPES)}; got {d}")


def fmt(op: str, f: str) -> torch.dtype:
    if f not in FP8_DTYPES:
        raise ValueError(f"{op}: fmt must be one of {sorted(FP8_DTYPES)}; got {f!r}")
    return FP8_DTYPES[f]


def granularity(op: str, x: torch.Tensor, g: str, group_size: int, block: Sequence[int]):
    """Validate a granularity for input ``x``; returns the scale's shape."""
    return scale_shape(op, tuple(x.shape), g, group_size, block)


def static_scale(op: str, name: str, s: torch.Tensor, expected: Tuple[int, ...], g: str):
    dtype(op, name, s, (torch.float32,))
    if tuple(s.shape) != tuple(expected):
        raise ValueError(
            f"{op}: {name} must have shape {tuple(expected)} for granularity={g!r}; "
            f"got {tuple(s.shape)}")


def scale_for(op: str, name: str, s: torch.Tensor, x: torch.Tensor, x_name: str = "q") -> None:
    """A dequantization scale: per tensor, per row, per group, or per 1x128 or 128x128 block
    of x, as ``scale_layout.scale_tile`` reads its shape."""
    dtype(op, name, s, (torch.float32,))
    try:
        scale_tile(s.shape, x.shape)
    except ValueError:
        raise ValueError(
            f"{op}: {name} must be 0-D (per tensor), [..., 1] (per row), [..., K // G] "
            f"(per group) or [ceil(M/128), ceil(K/128)] (per block) for {x_name} "
            f"of shape {tuple(x.shape)}; got {tuple(s.shape)}") from None


# fp8_scaled_mm's operands: the OCP formats in any pair, or e4m3fnuz (AMD MI300's) with
# itself; a layer's weight is e4m3fn or e4m3fnuz, and its activations take the same format.
FP8_GEMM_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz)
FP8_WEIGHT_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


def fp8_pair(op: str, a: torch.Tensor, b: torch.Tensor) -> None:
    """e4m3fnuz multiplies only e4m3fnuz: its codes mean other numbers than the OCP
    formats' (bias 8, NaN at 0x80), and no GPU multiplies the two kinds together."""
    fnuz = torch.float8_e4m3fnuz
    if (a.dtype == fnuz) != (b.dtype == fnuz):
        raise TypeError(
            f"{op}: a and b must both be float8_e4m3fnuz or both OCP formats (float8_e4m3fn, "
            f"float8_e5m2); got a {a.dtype} and b {b.dtype}")


def gemm_operands(op: str, a: torch.Tensor, b: torch.Tensor, allowed, a_what="[M, K]"):
    dtype(op, "a", a, allowed)
    dtype(op, "b", b, allowed)
    rank(op, "a", a, 2, a_what)
    rank(op, "b", b, 2, "[N, K] (the nn.Linear.weight layout)")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{op}: a and b must share K; got a [M, K] = {tuple(a.shape)} and "
            f"b [N, K] = {tuple(b.shape)}")
    return a.shape[0], b.shape[0], a.shape[1]


def bias(op: str, b: Optional[torch.Tensor], n: int) -> None:
    if b is None:
        return
    dtype(op, "bias", b, FLOAT_DTYPES)
    shape(op, "bias", b, [(n,)], lambda: f"[N] = ({n},)")


def int32_k(op: str, k: int) -> None:
    """K below 131072: the int8 GEMMs accumulate in int32, and 128 * 128 * K reaches 2^31
    there."""
    if k >= 131072:
        raise ValueError(f"{op}: K must be below 131072 for an exact int32 accumulation; got "
                         f"K = {k}")


def row_scale(op: str, name: str, s: torch.Tensor, rows: int, rows_name: str) -> None:
    """Per-tensor (0-D) or per-row ([rows, 1]) fp32 scale."""
    dtype(op, name, s, (torch.float32,))
    shape(op, name, s, [(), (rows, 1)], f"() or [{rows_name}, 1] = ({rows}, 1)")


CHECK_SCALES_ENV = "LOWBIT_CHECK_SCALES"


def _values_checked(t: torch.Tensor) -> bool:
    """Whether a value check reads ``t``: on the CPU unless ``LOWBIT_CHECK_SCALES=0``; on a
    GPU only under ``LOWBIT_CHECK_SCALES=1`` (finite_scales says why); never a meta or empty
    tensor. (Attribute tests first: this runs on every eager GPU call.)"""
    if not t.is_cpu:
        if getenv(CHECK_SCALES_ENV) != "1" or t.is_meta:
            return False
    elif getenv(CHECK_SCALES_ENV) == "0":
        return False
    return t.numel() != 0


def flag(op: str, name: str, v) -> None:
    """A bool argument: a string or None would otherwise be read by its truthiness."""
    if not isinstance(v, bool):
        raise TypeError(f"{op}: {name} must be a bool; got {type(v).__name__} {v!r}")


def int8_zeros(op: str, name: str, zero: Optional[torch.Tensor]) -> None:
    """Raise a ValueError when an int8 zero point leaves -128..127 (the range the SPEC's
    asymmetric quantizer gives; a larger one would clamp every code). When read: as
    finite_scales."""
    _zeros_within(op, name, zero, -128, 127, "int8")


def permutation(op: str, name: str, perm: Optional[torch.Tensor], k: int) -> None:
    """Raise a ValueError unless ``perm`` holds each of 0..k-1 once (a reordering of K: a
    repeated or out-of-range index would read the wrong columns of x). When read: as
    finite_scales."""
    if perm is None or not _values_checked(perm):
        return
    if not torch.equal(torch.sort(perm.flatten().long()).values.cpu(), torch.arange(k)):
        raise ValueError(f"{op}: {name} must hold each of 0..{k - 1} once (a permutation of "
                         "K)")


def int4_zeros(op: str, zeros: Optional[torch.Tensor]) -> None:
    """Raise a ValueError when an int4 weight's zero points leave 0..15 (the SPEC's range;
    the kernels place a zero point in the mantissa of a small float, so a larger one would
    give wrong products rather than an error). When read: as finite_scales."""
    _zeros_within(op, "zeros", zeros, 0, 15, "int4")


def _zeros_within(op: str, name: str, zero: Optional[torch.Tensor], lo: int, hi: int,
                  kind: str) -> None:
    if zero is None or not _values_checked(zero):
        return
    low, high = (int(v) for v in torch.aminmax(zero))
    if low < lo or high > hi:
        raise ValueError(f"{op}: {name} must lie in {lo}..{hi} ({kind} zero points); it holds "
                         f"{low if low < lo else high}")


def finite_scales(op: str, **scales) -> None:
    """Raise a ValueError naming the first given scale that holds a NaN or an Inf.

    For the scales a caller supplies to quantize (static, calibrated) and to the GEMMs. Not
    for dequantize's: quantizing data that holds a NaN gives a NaN dynamic scale (NaN
    propagates through the absmax, per the SPEC), and its round trip must propagate it too.

    On the CPU always; on a GPU only when ``LOWBIT_CHECK_SCALES=1``: reading the values there
    waits for the GPU (and cannot happen inside CUDA-graph capture), so the hot path skips it
    unless asked. Eager implementations call this; fake (tracing) ones never do.
    """
    for name, t in scales.items():
        if t is not None and _values_checked(t):
            _finite(op, name, t)


def _finite(op: str, name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = t[~torch.isfinite(t)].flatten()[0].item()
        raise ValueError(f"{op}: {name} must be finite; it holds {bad} (NaN or Inf scales "
                         f"would turn every value they scale into NaN or Inf)")


def quant_scales(op: str, **scales) -> None:
    """finite_scales, and no scale of magnitude below 2^-126: for the static scales a
    quantizer multiplies by the reciprocal of. 1 / 0 is infinite (zeros become NaN, every
    other value a saturated code), and so is a subnormal's reciprocal in a kernel that
    flushes subnormals; every dynamic scale is at least 2^-126 (the SPEC's floor). A negative
    scale is no error: the round trip ``dequantize(quantize(x, s), s)`` holds as for -s.
    When read: as finite_scales."""
    for name, t in scales.items():
        if t is None or not _values_checked(t):
            continue
        _finite(op, name, t)
        small = t.abs() < MIN_SCALE
        if bool(small.any()):
            bad = t[small].flatten()[0].item()
            raise ValueError(f"{op}: {name} must have magnitude at least 2^-126 (a normal "
                             f"fp32); it holds {bad} (quantizing multiplies by 1 / scale, "
                             f"infinite for 0 and for a subnormal in kernels that flush "
                             f"them)")
