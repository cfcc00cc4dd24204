"""SmoothQuant for W8A8 INT8: move activation outliers into the weights.

A Linear group (the layers that read one tensor, ``lowbit.fold.input_groups``) whose input
is a norm's or a Linear's output gets per-channel factors
``s_j = max|x_j| ** alpha / max|W_j| ** (1 - alpha)`` (``max|W_j|`` over the group's weight
columns j), folded into that producer (``x / s``) and into the group's weights (``W * s``):
the full-precision function is unchanged, and the activations the W8A8 quantizer sees have
their outlier channels tamed. A group with no such producer (after an activation function,
or a post-norm whose output is also the residual, as in BERT) is wrapped in
``lowbit.nn.PreScale`` instead (its input multiplied by ``1 / s`` in the layer) unless
``prescale=False``. ``alpha`` (the migration strength) is 0.5 by default; a list
of values is searched per group, choosing the one whose W8A8 output (per-token dynamic
int8 activations, per-channel int8 weights, through ``lowbit.quantize_int8`` and
``lowbit.int8_gemm``) is closest to the full-precision output on the calibration inputs.
The search always includes no smoothing, so on its calibration data the result is never
worse than plain W8A8; the report says what was done to each group and why.

Run it on the full-precision model, then ``lowbit.quantize_(model, "int8")``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from ._scaling import ScaleReport, best_factors, scale_groups

SmoothReport = ScaleReport  # what smooth_quant returns


def _w8a8_error(x: torch.Tensor, weights: Sequence[torch.Tensor], s: Optional[torch.Tensor]):
    """Relative error of W8A8 int8 (lowbit's ops) against full precision, summed over the
    group's layers, on rows x, with x / s and W * s when s is given."""
    from . import api

    x64 = x.double()
    num = den = 0.0
    xs = x if s is None else (x64 / s).to(x.dtype)
    q, sx, _ = api.quantize_int8(xs.float(), granularity="token")
    for w in weights:
        ref = x64 @ w.double().T
        ws = w.float() if s is None else (w.double() * s).float()
        qw, sw, _ = api.quantize_int8(ws, granularity="channel")
        y = api.int8_gemm(q, qw, sx, sw, None, out_dtype=torch.float32).double()
        num += (y - ref).pow(2).sum().item()
        den += ref.pow(2).sum().item()
    return (num / den) ** 0.5 if den > 0 else 0.0


def smoothing_factors(act_max: torch.Tensor, weights: Sequence[torch.Tensor],
                      alpha: float) -> torch.Tensor:
    """s_j = act_max_j ** alpha / max|W_j| ** (1 - alpha), 1 where a side is all zeros."""
    w_max = torch.stack([w.detach().abs().amax(dim=0).double() for w in weights]).amax(dim=0)
    a = act_max.double().to(w_max.device)
    s = a.clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1 - alpha)
    return torch.where((a > 0) & (w_max > 0), s, torch.ones_like(s))


def smooth_quant(model: nn.Module, batches, *, alpha: Union[float, Sequence[float]] = 0.5,
                 forward: Optional[Callable[[nn.Module, Any], Any]] = None,
                 prescale: bool = True) -> ScaleReport:
    """Fold SmoothQuant factors into ``model`` (in place) from its activations over
    ``batches`` (each passed as ``calibrate`` passes it, or through ``forward(model,
    batch)``); see the module docstring. Returns what was done per group."""
    alphas = [float(alpha)] if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(f"smooth_quant: alpha must be in [0, 1] (or a list of such); got {alpha!r}")

    def search(g, st, weights):
        return best_factors(
            g, ((a, smoothing_factors(st.absmax, weights, a)) for a in alphas),
            lambda s: _w8a8_error(st.rows, weights, s),
            "no alpha lowered the W8A8 error on the calibration rows")

    report = ScaleReport("lowbit.smooth_quant", "W8A8 error", "not smoothed")
    return scale_groups(model, batches, report, "smooth_quant", search, forward, prescale)
