"""Every lowbit op, each declared once by ``define_op``: its argument checks, which also give
its outputs' shapes and dtypes, build the eager implementation, the fake (meta)
implementation and the ``torch.ops.lowbit.<name>`` registration. The public functions in
``lowbit`` (``lowbit/api.py``) are thin wrappers over these.

Fake implementations only allocate, so the ops trace under ``torch.compile(fullgraph=True)``
and capture in CUDA graphs. Backends plug in through ``lowbit._backend.register_kernel``;
the ``backend`` argument is ``auto``, ``cuda``, ``triton``, ``reference`` or ``default``
(lowbit's current default, resolved when the op runs).

The eager implementation (``EAGER[name]``, ``lowbit._backend.checked``) is the function the
dispatcher runs for ``torch.ops.lowbit.<name>`` on every device, and the public functions
call it directly outside of ``torch.compile`` tracing, where even the dispatcher's few
microseconds are worth saving. The ops are registered with ``torch.library.Library``
rather than ``torch.library.custom_op``, whose Python wrappers cost about four times a
``torch.add_`` per call (bench/NOTES.md, "Host time of a registered op"); they are not
differentiable (the Autograd key falls through), as the eager path never was.

Ops return tensors only: where the public API returns None (the zero point of a symmetric
quantizer), the registered op returns an empty tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from . import _checks as C
from . import _backend, _native, scale_layout
from ._backend import checked
from ._linear import FP8, INT8, linear_impl
from .reference.int4 import prepacked_shape

_EMPTY = (0,)
_LIB = torch.library.Library("lowbit", "DEF")

# Parameter annotations of a check -> schema types.
_SCHEMA_TYPES = {"Tensor": "Tensor", "Optional[Tensor]": "Tensor?", "int": "int",
                 "bool": "bool", "str": "str", "List[int]": "int[]",
                 "torch.dtype": "ScalarType"}


@dataclass(frozen=True)
class OpDef:
    name: str
    schema: str
    # check(*args) -> the outputs' (shape, dtype), one pair or a tuple of pairs; raises on
    # bad arguments. Reads shapes, dtypes and devices only, so it also serves the fake.
    check: Callable
    # values(*args): checks that read tensor values (every eager call), or None.
    values: Optional[Callable]
    eager: Callable


DEFS: Dict[str, OpDef] = {}


def _schema(check: Callable, returns: str) -> str:
    code = check.__code__
    names = code.co_varnames[:code.co_argcount]
    params = ", ".join(f"{_SCHEMA_TYPES[check.__annotations__[n]]} {n}" for n in names)
    return f"({params}, str backend) -> {returns}"


def _register(name: str, schema: str, impl: Callable) -> None:
    """Define ``lowbit::<name><schema>`` with ``impl`` for every device, not differentiable
    (the Autograd key falls through)."""
    _LIB.define(name + schema)
    _LIB.impl(name, impl, "CompositeExplicitAutograd")
    _LIB.impl(name, torch.library.fallthrough_kernel, "Autograd")


def define_op(returns: str, values: Optional[Callable] = None,
              impl: Optional[Callable[[Callable], Callable]] = None):
    """Decorator: declare op ``check.__name__`` from its checks.

    ``check``'s parameters, annotated with the types of ``_SCHEMA_TYPES``, are the op's
    arguments (the registered op adds ``backend: str`` last); ``returns`` is the schema's
    result ("Tensor" or "(Tensor, Tensor, ...)"); ``values`` as ``OpDef.values``. Registers
    ``torch.ops.lowbit.<name>`` (the eager implementation for every device, a fake that
    allocates what ``check`` returns) and returns ``check``. The eager implementation is
    ``_backend.checked`` (one kernel per call, from the registry), or ``impl(check, values)``
    for an op composed of other ops (a quantized module's forward)."""
    many = returns.startswith("(")

    def deco(check):
        name = check.__name__
        schema = _schema(check, returns)
        eager = checked(name, check, values) if impl is None else impl(check, values)
        _register(name, schema, eager)

        def fake(*args):
            like = args[0]
            out = check(*args[:-1])
            if many:
                return tuple(torch.empty(s, dtype=d, device=like.device) for s, d in out)
            return torch.empty(out[0], dtype=out[1], device=like.device)

        torch.library.register_fake(f"lowbit::{name}", fake, lib=_LIB)
        _backend.META_FNS[name] = lambda *args: fake(*args, "default")
        DEFS[name] = OpDef(name, schema, check, values, eager)
        return check

    return deco


@define_op("(Tensor, Tensor)",
           values=lambda x, scale, *_: C.quant_scales("quantize_fp8", scale=scale))
def quantize_fp8(x: Tensor, scale: Optional[Tensor], fmt: str, granularity: str,
                 group_size: int, block: List[int], saturate: bool):
    op = "quantize_fp8"
    C.dtype(op, "x", x, C.FLOAT_DTYPES)
    qdtype = C.fmt(op, fmt)
    C.flag(op, "saturate", saturate)
    sshape = C.granularity(op, x, granularity, group_size, block)
    if scale is not None:
        C.static_scale(op, "scale", scale, sshape, granularity)
    C.same_device(op, x=x, scale=scale)
    return (x.shape, qdtype), (sshape, torch.float32)


@define_op("Tensor")
def dequantize_fp8(q: Tensor, scale: Tensor, out_dtype: torch.dtype):
    op = "dequantize_fp8"
    C.dtype(op, "q", q, tuple(C.FP8_DTYPES.values()))
    C.scale_for(op, "scale", scale, q)
    C.out_dtype(op, out_dtype)
    C.same_device(op, q=q, scale=scale)
    return q.shape, out_dtype


def _quantize_int8_values(x, scale, zero, *_) -> None:
    C.quant_scales("quantize_int8", scale=scale)
    C.int8_zeros("quantize_int8", "zero", zero)


@define_op("(Tensor, Tensor, Tensor)", values=_quantize_int8_values)
def quantize_int8(x: Tensor, scale: Optional[Tensor], zero: Optional[Tensor],
                  granularity: str, group_size: int, block: List[int], symmetric: bool):
    op = "quantize_int8"
    C.dtype(op, "x", x, C.FLOAT_DTYPES)
    C.flag(op, "symmetric", symmetric)
    sshape = C.granularity(op, x, granularity, group_size, block)
    if scale is not None:
        C.static_scale(op, "scale", scale, sshape, granularity)
        if not symmetric and zero is None:
            raise ValueError(f"{op}: zero is required with a static scale when symmetric=False")
    if zero is not None:
        if symmetric:
            raise ValueError(f"{op}: zero must be None when symmetric=True")
        if scale is None:
            raise ValueError(f"{op}: zero needs a static scale; got scale=None")
        C.dtype(op, "zero", zero, (torch.int32,))
        C.shape(op, "zero", zero, [sshape], f"{sshape} (the scale's)")
    C.same_device(op, x=x, scale=scale, zero=zero)
    return ((x.shape, torch.int8), (sshape, torch.float32),
            (_EMPTY if symmetric else sshape, torch.int32))


@define_op("Tensor")
def dequantize_int8(q: Tensor, scale: Tensor, zero: Optional[Tensor], out_dtype: torch.dtype):
    op = "dequantize_int8"
    C.dtype(op, "q", q, (torch.int8,))
    C.scale_for(op, "scale", scale, q)
    if zero is not None:
        C.dtype(op, "zero", zero, (torch.int32,))
        C.shape(op, "zero", zero, [tuple(scale.shape)], f"{tuple(scale.shape)} (the scale's)")
    C.out_dtype(op, out_dtype)
    C.same_device(op, q=q, scale=scale, zero=zero)
    return q.shape, out_dtype


@define_op("Tensor")
def int8_mm(a: Tensor, b: Tensor):
    op = "int8_mm"
    m, n, k = C.gemm_operands(op, a, b, (torch.int8,))
    C.int32_k(op, k)
    C.same_device(op, a=a, b=b)
    return (m, n), torch.int32


def _int8_gemm_values(a, b, a_scale, b_scale, bias, out_dtype, a_zero) -> None:
    C.finite_scales("int8_gemm", a_scale=a_scale, b_scale=b_scale)
    # (the kernels' zero-point term zero * sum_k b[n, k] is exact in int32 for these)
    C.int8_zeros("int8_gemm", "a_zero", a_zero)


@define_op("Tensor", values=_int8_gemm_values)
def int8_gemm(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, bias: Optional[Tensor],
              out_dtype: torch.dtype, a_zero: Optional[Tensor]):
    op = "int8_gemm"
    m, n, k = C.gemm_operands(op, a, b, (torch.int8,))
    C.int32_k(op, k)
    C.row_scale(op, "a_scale", a_scale, m, "M")
    C.row_scale(op, "b_scale", b_scale, n, "N")
    C.bias(op, bias, n)
    C.out_dtype(op, out_dtype)
    if a_zero is not None:
        C.dtype(op, "a_zero", a_zero, (torch.int32,))
        C.shape(op, "a_zero", a_zero, [(), (m, 1)], f"() or [M, 1] = ({m}, 1)")
    C.same_device(op, a=a, b=b, a_scale=a_scale, b_scale=b_scale, bias=bias, a_zero=a_zero)
    return (m, n), out_dtype


@define_op("Tensor", values=lambda a, b, a_scale, b_scale, *_: C.finite_scales(
    "fp8_scaled_mm", a_scale=a_scale, b_scale=b_scale))
def fp8_scaled_mm(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor,
                  bias: Optional[Tensor], out_dtype: torch.dtype, fast_accum: bool):
    op = "fp8_scaled_mm"
    m, n, k = C.gemm_operands(op, a, b, C.FP8_GEMM_DTYPES)
    C.fp8_pair(op, a, b)
    kb = -(-k // 128)
    C.dtype(op, "a_scale", a_scale, (torch.float32,))
    C.dtype(op, "b_scale", b_scale, (torch.float32,))
    C.shape(op, "a_scale", a_scale, [(), (m, 1), (m, kb)],
            lambda: f"() per tensor, [M, 1] = ({m}, 1) per row, or [M, ceil(K/128)] = "
                    f"({m}, {kb}) per 1x128 block")
    C.shape(op, "b_scale", b_scale, [(), (n, 1), (-(-n // 128), kb)],
            lambda: f"() per tensor, [N, 1] = ({n}, 1) per row, or [ceil(N/128), "
                    f"ceil(K/128)] = ({-(-n // 128)}, {kb}) per 128x128 block")
    C.bias(op, bias, n)
    C.out_dtype(op, out_dtype)
    C.flag(op, "fast_accum", fast_accum)
    C.same_device(op, a=a, b=b, a_scale=a_scale, b_scale=b_scale, bias=bias)
    return (m, n), out_dtype


def _linear_operands(op, x, weight, weight_dtypes, weight_scale, bias):
    """The checks every quantized-linear op makes of x, its weight [N, K] with per-channel
    scales [N, 1] and the bias: -> (N, K)."""
    C.dtype(op, "x", x, C.FLOAT_DTYPES)
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least one dimension (its last is K); got a scalar")
    C.dtype(op, "weight", weight, weight_dtypes)
    C.rank(op, "weight", weight, 2, "[N, K]")
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"{op}: x's last dimension must be K = weight.shape[1] = {k}; got x of "
                         f"shape {tuple(x.shape)}")
    C.dtype(op, "weight_scale", weight_scale, (torch.float32,))
    C.shape(op, "weight_scale", weight_scale, [(n, 1)], f"[N, 1] = ({n}, 1)")
    C.bias(op, bias, n)
    return n, k


def _fp8_linear_values(x, w, w_scale, bias, act_scale) -> None:
    C.finite_scales("fp8_linear", weight_scale=w_scale)
    C.quant_scales("fp8_linear", act_scale=act_scale)


@define_op("Tensor", impl=linear_impl(FP8), values=_fp8_linear_values)
def fp8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
               act_scale: Optional[Tensor]):
    """A W8A8 FP8 linear layer (``Fp8Linear``'s forward, lowbit/_linear.py): ``x`` [..., K]
    quantized per token (or per tensor with the static ``act_scale``) to the format of the
    ``weight`` [N, K] (e4m3fn, or e4m3fnuz on AMD MI300), times the weight with its
    per-channel ``weight_scale`` [N, 1], plus ``bias``; output [..., N] in x's dtype."""
    op = "fp8_linear"
    n, k = _linear_operands(op, x, weight, C.FP8_WEIGHT_DTYPES, weight_scale, bias)
    if act_scale is not None:
        C.dtype(op, "act_scale", act_scale, (torch.float32,))
        C.shape(op, "act_scale", act_scale, [()], "() (one static scale)")
    C.same_device(op, x=x, weight=weight, weight_scale=weight_scale, bias=bias,
                  act_scale=act_scale)
    return (*x.shape[:-1], n), x.dtype


def _int8_linear_values(x, w, w_scale, bias, act_scale, act_zero, act_symmetric) -> None:
    C.finite_scales("int8_linear", weight_scale=w_scale)
    C.quant_scales("int8_linear", act_scale=act_scale)
    C.int8_zeros("int8_linear", "act_zero", act_zero)


@define_op("Tensor", impl=linear_impl(INT8), values=_int8_linear_values)
def int8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
                act_scale: Optional[Tensor], act_zero: Optional[Tensor], act_symmetric: bool):
    """A W8A8 INT8 linear layer (``Int8Linear``'s forward, lowbit/_linear.py): ``x`` [..., K]
    quantized to int8 per token (or per tensor with the static ``act_scale`` and, when
    asymmetric, ``act_zero``), symmetric or not, times the int8 ``weight`` [N, K] with
    per-channel ``weight_scale`` [N, 1], plus ``bias``; output [..., N] in x's dtype."""
    op = "int8_linear"
    n, k = _linear_operands(op, x, weight, (torch.int8,), weight_scale, bias)
    C.int32_k(op, k)
    C.flag(op, "act_symmetric", act_symmetric)
    if act_scale is not None:
        C.dtype(op, "act_scale", act_scale, (torch.float32,))
        C.shape(op, "act_scale", act_scale, [()], "() (one static scale)")
        if not act_symmetric and act_zero is None:
            raise ValueError(f"{op}: act_zero is required with a static act_scale when "
                             "act_symmetric=False")
    if act_zero is not None:
        if act_symmetric or act_scale is None:
            raise ValueError(f"{op}: act_zero goes with a static act_scale and "
                             "act_symmetric=False")
        C.dtype(op, "act_zero", act_zero, (torch.int32,))
        C.shape(op, "act_zero", act_zero, [()], "() (one static zero point)")
    C.same_device(op, x=x, weight=weight, weight_scale=weight_scale, bias=bias,
                  act_scale=act_scale, act_zero=act_zero)
    return (*x.shape[:-1], n), x.dtype


def int4_scale_dtype(w_dtype: torch.dtype) -> torch.dtype:
    """Scales are stored in the weight's dtype when it is half precision, else fp32."""
    return w_dtype if w_dtype in (torch.bfloat16, torch.float16) else torch.float32


@define_op("(Tensor, Tensor, Tensor)")
def int4_quantize(w: Tensor, group_size: int, symmetric: bool):
    op = "int4_quantize"
    C.dtype(op, "w", w, C.FLOAT_DTYPES)
    C.rank(op, "w", w, 2, "[N, K]")
    n, k = w.shape
    scale_layout.check_group_size(op, group_size, k=k, k_what="K = w.shape[1]", whole_k=True)
    C.flag(op, "symmetric", symmetric)
    g = (n, k // group_size)
    return (((n, k // 2), torch.uint8), (g, int4_scale_dtype(w.dtype)),
            (_EMPTY if symmetric else g, torch.uint8))


def _w4a16_values(x, qweight, scales, zeros, group_size, perm, bias) -> None:
    C.finite_scales("w4a16_gemm", scales=scales)
    C.int4_zeros("w4a16_gemm", zeros)
    C.permutation("w4a16_gemm", "perm", perm, x.shape[-1])


@define_op("Tensor", values=_w4a16_values)
def w4a16_gemm(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor],
               group_size: int, perm: Optional[Tensor], bias: Optional[Tensor]):
    op = "w4a16_gemm"
    C.dtype(op, "x", x, C.FLOAT_DTYPES)
    C.rank(op, "x", x, 2, "[M, K]")
    if not (isinstance(qweight, torch.Tensor) and qweight.dtype == torch.int32):
        # uint8: canonical; int32: the prepacked layout (Int4Weight.prepack()), checked below
        C.dtype(op, "qweight", qweight, (torch.uint8,))
    if qweight.dtype == torch.uint8:
        C.rank(op, "qweight", qweight, 2, "[N, K // 2] (canonical packed int4)")
        n, k = qweight.shape[0], qweight.shape[1] * 2
        if x.shape[1] != k:
            raise ValueError(
                f"{op}: x and the weight must share K; got x [M, K] = {tuple(x.shape)} and a "
                f"weight of K = 2 * qweight.shape[1] = {k}")
    else:  # prepacked (Int4Weight.prepack()): N and K come from the scales and x
        C.rank(op, "qweight", qweight, 4,
               "[ceil(N/16), ceil(K/64), 32, 4] (prepacked int4, Int4Weight.prepack())")
        C.rank(op, "scales", scales, 2, "[N, K // G]")
        n, k = scales.shape[0], x.shape[1]
        want = prepacked_shape(n, k)
        if tuple(qweight.shape) != want:
            raise ValueError(
                f"{op}: a prepacked qweight for N = scales.shape[0] = {n} and K = x.shape[1] "
                f"= {k} must have shape {want}; got {tuple(qweight.shape)}")
    scale_layout.check_group_size(op, group_size, k=k, whole_k=True)
    g = (n, k // group_size)
    C.dtype(op, "scales", scales, C.FLOAT_DTYPES)
    C.shape(op, "scales", scales, [g], f"[N, K // G] = {g}")
    if zeros is not None:
        C.dtype(op, "zeros", zeros, (torch.uint8,))
        C.shape(op, "zeros", zeros, [g], f"[N, K // G] = {g}")
    if perm is not None:
        C.dtype(op, "perm", perm, (torch.int64, torch.int32))
        C.shape(op, "perm", perm, [(k,)], f"[K] = ({k},)")
    C.bias(op, bias, n)
    C.same_device(op, x=x, qweight=qweight, scales=scales, zeros=zeros, perm=perm, bias=bias)
    return (x.shape[0], n), x.dtype


def _w8a16_scale_shapes(n: int, k: int):
    """w8a16_gemm's w_scale shapes: [N, 1] per channel, [N, K // G] per group of G in
    scale_layout.GROUP_SIZES dividing K."""
    return [(n, 1)] + [(n, k // g) for g in scale_layout.GROUP_SIZES if k % g == 0]


@define_op("Tensor", values=lambda x, w, w_scale, *_: C.finite_scales(
    "w8a16_gemm", w_scale=w_scale))
def w8a16_gemm(x: Tensor, w: Tensor, w_scale: Tensor, bias: Optional[Tensor]):
    op = "w8a16_gemm"
    C.dtype(op, "x", x, C.FLOAT_DTYPES)
    C.rank(op, "x", x, 2, "[M, K]")
    C.dtype(op, "w", w, (torch.int8,))
    C.rank(op, "w", w, 2, "[N, K] (the nn.Linear.weight layout)")
    n, k = w.shape
    if x.shape[1] != k:
        raise ValueError(f"{op}: x and w must share K; got x [M, K] = {tuple(x.shape)} and "
                         f"w [N, K] = {tuple(w.shape)}")
    C.dtype(op, "w_scale", w_scale, (torch.float32,))
    C.shape(op, "w_scale", w_scale, _w8a16_scale_shapes(n, k),
            lambda: f"[N, 1] = ({n}, 1) per channel or [N, K // G] per group of G in "
                    f"{scale_layout.GROUP_SIZES} dividing K = {k}")
    C.bias(op, bias, n)
    C.same_device(op, x=x, w=w, w_scale=w_scale, bias=bias)
    return (x.shape[0], n), x.dtype


def _define_prepare(name: str) -> None:
    """``lowbit::_<name>_prepare``: the Python implementation of op ``name`` that also
    returns its plan after its outputs, what the op's C++ implementation calls for a signature
    it has not seen (lowbit/_native.py). Not part of the API; never traced."""
    params, returns = DEFS[name].schema.rsplit(" -> ", 1)
    outputs = returns.strip("()")
    _register(f"_{name}_prepare", f"{params} -> ({outputs}, int[])", DEFS[name].eager.prepare)


for _name in _native.OPS:
    _define_prepare(_name)

# The registered ops (what compiled graphs call) and their eager implementations, by name.
OPS = {name: getattr(torch.ops.lowbit, name).default for name in DEFS}
EAGER = {name: d.eager for name, d in DEFS.items()}

_native.load()  # (after the ops it implements are defined)
