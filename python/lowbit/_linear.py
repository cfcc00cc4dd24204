"""Quantized linear layers as one op each: a forward is a quantizer on the activations
followed by a GEMM with the quantized weight, written once here for every family.

- ``fp8_linear`` (``Fp8Linear``, W8A8 FP8): ``quantize_fp8`` of the activations (to the
  weight's format, e4m3fn or e4m3fnuz; per token, or per tensor with a static scale), then
  ``fp8_scaled_mm`` with the weight's per-channel scales.
- ``int8_linear`` (``Int8Linear``, W8A8 INT8): ``quantize_int8`` of the activations
  (symmetric or asymmetric, per token, or per tensor with a static scale and zero point),
  then ``int8_gemm`` with the weight's per-channel scales (and the zero-point correction).

Both end with the bias and the activations' dtype as output dtype. A module's forward calls
the two ops in eager mode (and keeps a prepared step of its own, ``nn/_layer.py``); a
compiled graph calls ``torch.ops.lowbit.<family>_linear`` once per layer instead of two
ops, so the dispatcher is crossed once. Its implementation runs the two checked ops the first
time it sees an argument signature and keeps, per signature, the step they chose: on CUDA
kernels one fused launch where the family has one (``lowbit.backends.cuda.linear``), else
the two prepared op functions back to back. Same kernels, same bits as the two ops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

from . import _backend
from ._checks import FP8_FORMAT_OF

_STEPS_MAX = 1024
_steps: Dict[tuple, Callable] = {}


@dataclass(frozen=True)
class Family:
    """One quantized-linear op: how its module state (the op's arguments after x) feeds the
    quantizer and the GEMM. ``state[0]`` is the weight [N, K]."""

    op: str
    quantize: str
    gemm: str
    # quant_args(x2, *state) -> the quantizer op's arguments (without backend)
    quant_args: Callable
    # gemm_args(quantized, dtype, *state) -> the GEMM op's arguments (without backend)
    gemm_args: Callable
    # fused(quant_kernel, gemm_kernel, x, quant_args, dtype, shared_workspace, *state)
    #   -> a step or None
    fused: Optional[Callable] = None


def fp8_quantizer_args(act_scale: Optional[torch.Tensor], weight: torch.Tensor) -> tuple:
    """``quantize_fp8``'s arguments after x and scale for a layer's activations (fmt,
    granularity, group_size, block, saturate): the weight's format (e4m3fn, or e4m3fnuz),
    per tensor with a static scale, else per token."""
    return (FP8_FORMAT_OF[weight.dtype], "tensor" if act_scale is not None else "token", 128,
            [128, 128], True)


def _fp8_fused(quant_kernel, gemm_kernel, x, q_args, dtype, shared_workspace, weight,
               weight_scale, bias, act_scale):
    from .backends.cuda.linear import fp8_linear_step

    return fp8_linear_step(quant_kernel, gemm_kernel, x, act_scale, q_args[2:], weight,
                           weight_scale, bias, dtype, shared_workspace)


FP8 = Family(
    "fp8_linear", "quantize_fp8", "fp8_scaled_mm",
    quant_args=lambda x2, weight, weight_scale, bias, act_scale: (
        x2, act_scale, *fp8_quantizer_args(act_scale, weight)),
    gemm_args=lambda qs, dtype, weight, weight_scale, bias, act_scale: (
        qs[0], weight, qs[1], weight_scale, bias, dtype, False),
    fused=_fp8_fused)

def _int8_fused(quant_kernel, gemm_kernel, x, q_args, dtype, shared_workspace, *state):
    from .backends.cuda.linear import int8_linear_step

    return int8_linear_step(quant_kernel, gemm_kernel, x, q_args, dtype, shared_workspace,
                            *state)


INT8 = Family(
    "int8_linear", "quantize_int8", "int8_gemm",
    quant_args=lambda x2, weight, weight_scale, bias, act_scale, act_zero, act_symmetric: (
        x2, act_scale, act_zero, "tensor" if act_scale is not None else "token", 128,
        [128, 128], act_symmetric),
    gemm_args=lambda qs, dtype, weight, weight_scale, bias, act_scale, act_zero,
    act_symmetric: (qs[0], weight, qs[1], weight_scale, bias, dtype,
                    None if act_symmetric else qs[2]),
    fused=_int8_fused)

FAMILIES = {f.op: f for f in (FP8, INT8)}


def _explain_layer(fam: Family, x, q_args: tuple, state: tuple, backend: str):
    """Under ``lowbit.explain``: raises the choice of the layer's forward. That is the
    quantizer's (the first op it runs), unless the two ops' kernels run as one
    (lowbit/backends/cuda/linear.py): then that kernel, named as the layer op's choice. The
    GEMM's choice is asked on stand-ins of the quantizer's outputs (their shapes and dtypes
    are what the choice reads)."""
    from .ops import EAGER
    from .scale_layout import scale_shape

    try:
        EAGER[fam.quantize](*q_args, backend)
    except _backend._Explained as e:
        quant = e.choice
    if quant.backend != "cuda":
        raise _backend._Explained(quant)
    x2, weight = q_args[0], state[0]
    gran, group, block = q_args[3], q_args[4], q_args[5]
    s_shape = scale_shape(fam.quantize, tuple(x2.shape), gran, group, block)
    dev = x2.device
    qs = (torch.empty(x2.shape, dtype=weight.dtype, device=dev),
          torch.ones(s_shape, dtype=torch.float32, device=dev))
    if fam is INT8:
        qs += (None if q_args[6] else torch.zeros(s_shape, dtype=torch.int32, device=dev),)
    try:
        EAGER[fam.gemm](*fam.gemm_args(qs, x.dtype, *state), backend)
    except _backend._Explained as e:
        gemm = e.choice
    from .backends.cuda.linear import fused_kernel_name

    fused = (fused_kernel_name(fam.op, quant.kernel, gemm.kernel, x2, state[1])
             if gemm.backend == "cuda" else None)
    if fused is None:
        raise _backend._Explained(quant)
    raise _backend._Explained(_backend.Choice(
        fam.op, "cuda", fused,
        f"{fam.quantize}'s {quant.kernel} and {fam.gemm}'s {gemm.kernel} as one kernel "
        "(LOWBIT_FUSED_QUANT)"))


def run_ops(fam: Family, x, state: tuple, backend: str):
    """The forward as two checked op calls: (y, quantizer args, GEMM args)."""
    from .ops import EAGER

    weight = state[0]
    k, n = weight.shape[1], weight.shape[0]
    q_args = fam.quant_args(x.reshape(-1, k), *state)
    if _backend._explaining.get():
        _explain_layer(fam, x, q_args, state, backend)
    qs = EAGER[fam.quantize](*q_args, backend)
    g_args = fam.gemm_args(qs, x.dtype, *state)
    y = EAGER[fam.gemm](*g_args, backend)
    return y.reshape(*x.shape[:-1], n), q_args, g_args


def prepare_step(fam: Family, x, q_args: tuple, g_args: tuple, state: tuple,
                 backend: Optional[str] = None, shared_workspace: bool = False
                 ) -> Optional[Callable]:
    """step(x, *state) -> y for arguments of this signature, from the kernels the checked ops
    chose for it (``run_ops`` ran them on ``q_args``, ``g_args``): one fused call where the
    family has one for those kernels, else the two prepared op functions back to back. None
    when an op has no remembered choice (CPU tensors, or not run through the checks).
    ``shared_workspace``: a fused call takes its workspace from the per-stream cache of
    backends/cuda/linear.py, for eager module forwards only: the registered op also runs
    inside compiled graphs, whose CUDA-graph warm-up allocates from a graph's private pool,
    where a block kept in the cache could later be handed to the graph's own tensors."""
    quant = _backend.remembered_choice(fam.quantize, q_args, backend)
    gemm = _backend.remembered_choice(fam.gemm, g_args, backend)
    if quant is None or gemm is None:
        return None
    dtype, weight = x.dtype, state[0]
    if fam.fused is not None and quant.backend == gemm.backend == "cuda":
        step = fam.fused(quant.kernel, gemm.kernel, x, q_args, dtype, shared_workspace,
                         *state)
        if step is not None:
            return step
    quant_fn, gemm_fn = quant.fn, gemm.fn
    k, out_shape = weight.shape[1], (*x.shape[:-1], weight.shape[0])
    quant_args, gemm_args = fam.quant_args, fam.gemm_args

    def step(x, *state):
        qs = quant_fn(*quant_args(x.reshape(-1, k), *state))
        return gemm_fn(*gemm_args(qs, dtype, *state)).reshape(out_shape)

    step.__name__ = f"{quant.kernel}, {gemm.kernel}"
    return step


def _tensor_key(t):
    if t is None or not isinstance(t, torch.Tensor):
        return t
    return (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16)


def linear_impl(fam: Family) -> Callable[[Callable], Callable]:
    """The Python implementation of the family's op, given its argument checks and value
    checks: a signature seen before (everything the checks read, see ``_backend.step_key``)
    runs its kept step; any other runs the checks and the two checked ops, and keeps their
    step. Its ``prepare`` (the registered op ``_<op>_prepare``, lowbit/_native.py) returns
    the output with the step's plan for the C++ implementation."""

    def make(check: Callable, values: Optional[Callable] = None) -> Callable:
        def run(x, *rest):
            """-> (y, the kept step of this signature or None)."""
            *state, backend = rest
            if backend == "default":
                backend = _backend.default_backend()
            key = _backend.step_key(x) if type(x) is torch.Tensor else None
            if key is not None:
                try:
                    key = (key, backend, fam.op, *map(_tensor_key, state))
                except (RuntimeError, AttributeError, TypeError):  # no strides...
                    key = None
            if key is not None:
                step = _steps.get(key)
                if step is not None:
                    return step(x, *state), step
            check(x, *state)
            if values is not None:  # (a kept step never runs where values are read)
                values(x, *state)
            y, q_args, g_args = run_ops(fam, x, tuple(state), backend)
            step = None
            if key is not None:
                step = prepare_step(fam, x, q_args, g_args, tuple(state), backend)
                if step is not None:
                    if len(_steps) >= _STEPS_MAX:
                        _steps.clear()
                    _steps[key] = step
            return y, step

        def linear(x, *rest):
            return run(x, *rest)[0]

        def prepare(x, *rest):
            from . import _native

            y, step = run(x, *rest)
            return y, _native.plan(step)

        linear.__name__ = linear.__qualname__ = fam.op
        linear.prepare = prepare
        return linear

    return make
