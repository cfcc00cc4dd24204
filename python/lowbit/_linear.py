"""Quantized linear layers as one op: ``fp8_linear`` (W8A8 FP8) is ``quantize_fp8`` of the
activations (per token, or per tensor with a static scale) followed by ``fp8_scaled_mm``
with the weight's per-channel scales, the bias and the activations' dtype as output dtype.

A module's forward calls the two ops in eager mode (and keeps a prepared step of its own,
see ``Fp8Linear``); a compiled graph calls ``torch.ops.lowbit.fp8_linear`` once per layer
instead of two ops, so the dispatcher is crossed once. Its implementation runs the two
checked ops the first time it sees an argument signature and keeps, per signature, the step
they chose: on CUDA kernels one fused launch (``lowbit.backends.cuda.linear``), else the two
prepared op functions back to back. Same kernels, same bits as the two ops.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from . import _backend

FP8_FMT = "e4m3fn"
_STEPS_MAX = 1024
_steps: Dict[tuple, Callable] = {}


def fp8_quantizer_args(act_scale: Optional[torch.Tensor]) -> tuple:
    """``quantize_fp8``'s arguments after x and scale for a layer's activations (fmt,
    granularity, group_size, block, saturate): per tensor with a static scale, else per
    token."""
    return (FP8_FMT, "tensor" if act_scale is not None else "token", 128, [128, 128], True)


def run_fp8_ops(x, weight, weight_scale, bias, act_scale, backend: str):
    """The forward as two checked op calls: (y, x2, q, sx), x2 = x as [M, K]."""
    from .ops import EAGER

    k, n = weight.shape[1], weight.shape[0]
    x2 = x.reshape(-1, k)
    q, sx = EAGER["quantize_fp8"](x2, act_scale, *fp8_quantizer_args(act_scale), backend)
    y = EAGER["fp8_scaled_mm"](q, weight, sx, weight_scale, bias, x.dtype, False, backend)
    return y.reshape(*x.shape[:-1], n), x2, q, sx


def prepare_fp8_step(x, x2, q, sx, weight, weight_scale, bias, act_scale,
                     backend: Optional[str] = None) -> Optional[Callable]:
    """step(x, weight, weight_scale, bias, act_scale) -> y for arguments of this signature,
    from the kernels the checked ops chose for it (``run_fp8_ops`` ran them on ``x2``, ``q``,
    ``sx``): one fused call on CUDA kernels, else the two prepared op functions back to back.
    None when an op has no remembered choice (CPU tensors, or not run through the checks)."""
    q_rest = fp8_quantizer_args(act_scale)
    dtype, k, n = x.dtype, weight.shape[1], weight.shape[0]
    quant = _backend.remembered_choice("quantize_fp8", (x2, act_scale, *q_rest), backend)
    gemm = _backend.remembered_choice(
        "fp8_scaled_mm", (q, weight, sx, weight_scale, bias, dtype, False), backend)
    if quant is None or gemm is None:
        return None
    if quant.backend == gemm.backend == "cuda":
        from .backends.cuda.linear import fp8_linear_step

        step = fp8_linear_step(quant.kernel, gemm.kernel, x, act_scale, q_rest, weight,
                               weight_scale, bias, dtype)
        if step is not None:
            return step
    quant_fn, gemm_fn, out_shape = quant.fn, gemm.fn, (*x.shape[:-1], n)

    def step(x, weight, weight_scale, bias, act_scale):
        q, sx = quant_fn(x.reshape(-1, k), act_scale, *q_rest)
        return gemm_fn(q, weight, sx, weight_scale, bias, dtype, False).reshape(out_shape)

    step.__name__ = f"{quant.kernel}, {gemm.kernel}"
    return step


def _tensor_key(t: Optional[torch.Tensor]):
    if t is None:
        return None
    return (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16)


def fp8_linear_impl(check: Callable) -> Callable:
    """The implementation of the ``fp8_linear`` op (``check``: its argument checks): a
    signature seen before (everything the checks read, see ``_backend.step_key``) runs its
    kept step; any other runs the checks and the two checked ops, and keeps their step."""

    def fp8_linear(x, weight, weight_scale, bias, act_scale, backend):
        if backend == "default":
            backend = _backend.default_backend()
        key = _backend.step_key(x) if type(x) is torch.Tensor else None
        if key is not None:
            try:
                key = (key, backend, _tensor_key(weight), _tensor_key(weight_scale),
                       _tensor_key(bias), _tensor_key(act_scale))
            except (RuntimeError, AttributeError, TypeError):  # no strides, not a tensor...
                key = None
        if key is not None:
            step = _steps.get(key)
            if step is not None:
                return step(x, weight, weight_scale, bias, act_scale)
        check(x, weight, weight_scale, bias, act_scale)
        y, x2, q, sx = run_fp8_ops(x, weight, weight_scale, bias, act_scale, backend)
        if key is not None:
            step = prepare_fp8_step(x, x2, q, sx, weight, weight_scale, bias, act_scale,
                                    backend)
            if step is not None:
                if len(_steps) >= _STEPS_MAX:
                    _steps.clear()
                _steps[key] = step
        return y

    return fp8_linear
