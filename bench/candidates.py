"""lowbit's kernels as candidate rows, timed beside the torch anchor they compete with.

`CANDIDATES` maps an anchor name (a key of anchors.GEMM_ANCHORS or anchors.CAST_ANCHORS) to
builders. A builder is `build(case, backend) -> zero-arg callable`: it reads the anchor's
operands from `case.inputs` (same values, so run_bench can compare the outputs), does any
one-time preparation (prepacking, requantizing) outside the returned callable, and raises
NotImplementedError when lowbit lacks the op, which skips the row with a note. run_bench
calls each builder once per backend of its --backends list.

To add one: decorate a builder with `@register("anchor_name")`; `compare=False` when its
output is not the anchor's function (e.g. extra scaling), so no error is reported.
"""
from __future__ import annotations

from typing import Callable

try:
    from . import anchors
except ImportError:  # run as a script from bench/
    import anchors

CANDIDATES: dict[str, list[Callable]] = {}


def register(*anchor_names: str, name: str | None = None, compare: bool = True):
    def deco(build: Callable) -> Callable:
        build.bench_name = name or build.__name__
        build.compare = compare
        for a in anchor_names:
            CANDIDATES.setdefault(a, []).append(build)
        return build
    return deco


def lowbit_status() -> str:
    """One line for the report: which lowbit was imported, or why none was."""
    try:
        import lowbit
    except Exception as e:  # noqa: BLE001 - a broken build must not stop the anchors
        return f"not importable ({anchors.error_text(e)}): candidate rows skipped"
    return f"{getattr(lowbit, '__version__', '?')} from {getattr(lowbit, '__file__', '?')}"


def _op(name: str) -> Callable:
    try:
        import lowbit
    except Exception as e:  # noqa: BLE001
        raise NotImplementedError(f"import lowbit failed: {anchors.error_text(e)}") from e
    f = getattr(lowbit, name, None)
    if f is None:
        raise NotImplementedError(f"lowbit.{name} does not exist")
    return f


# ---------------------------------------------------------------------------------- GEMMs
@register("int_mm")
def int8_mm(case, backend):
    f, i = _op("int8_mm"), case.inputs
    return lambda: f(i["a"], i["b"], backend=backend)


@register("int_mm", compare=False)
def int8_gemm(case, backend):
    """W8A8 as a layer runs it: int8 product, then per-token x per-channel scales, bf16 out."""
    f, i = _op("int8_gemm"), case.inputs
    M, N, _ = case.shape
    sa, sb = anchors.rand_scales(M, 1), anchors.rand_scales(N, 1)
    return lambda: f(i["a"], i["b"], sa, sb, backend=backend)


@register("scaled_mm_tensor", "scaled_mm_row")
def fp8_scaled_mm(case, backend):
    f, i = _op("fp8_scaled_mm"), case.inputs
    sb = i["b_scale"]
    if sb.dim() == 2:
        sb = sb.reshape(-1, 1)  # torch's [1, N] -> SPEC's per-channel [N, 1]
    return lambda: f(i["a"], i["b"], i["a_scale"], sb, backend=backend)


@register("int4pack_mm")
def w4a16_gemm(case, backend):
    """The anchor's weight is drawn in the canonical layout: wrap it, no requantization."""
    f, Int4Weight, i = _op("w4a16_gemm"), _op("Int4Weight"), case.inputs
    w, x = Int4Weight(i["qweight"], i["scales"], None, i["group_size"]), i["x"]
    return lambda: f(x, w, backend=backend)


# -------------------------------------------------------------------- casts, quantization
@register("scaled_cast_compile")
def quantize_fp8_static(case, backend):
    f, i = _op("quantize_fp8"), case.inputs
    return lambda: f(i["x"], i["scale"], backend=backend)


@register("fp8_tensor_dyn_compile")
def quantize_fp8_tensor(case, backend):
    f, x = _op("quantize_fp8"), case.inputs["x"]
    return lambda: f(x, granularity="tensor", backend=backend)


@register("int8_token_dyn_compile")
def quantize_int8_token(case, backend):
    f, x = _op("quantize_int8"), case.inputs["x"]
    return lambda: f(x, granularity="token", symmetric=True, backend=backend)
