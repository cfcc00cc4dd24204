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

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ._batches import run_batch

from .fold import InputGroup, apply_input_scale, input_groups

SAMPLE_ROWS = 512  # calibration rows per group kept for the alpha search


@dataclass
class GroupResult:
    linears: List[str]
    producer: Optional[str]
    alpha: Optional[float]  # None: not smoothed
    error_before: float = float("nan")  # relative W8A8 output error on the calibration rows
    error_after: float = float("nan")
    why: str = ""
    how: str = ""  # "folded into <producer>" or "pre-scaled" (lowbit.nn.PreScale)


@dataclass
class SmoothReport:
    groups: List[GroupResult] = field(default_factory=list)

    def __str__(self) -> str:
        lines = ["lowbit.smooth_quant:"]
        for g in self.groups:
            if g.alpha is not None:
                lines.append(f"  {', '.join(g.linears)}: alpha {g.alpha}, {g.how}, "
                             f"W8A8 error {g.error_before:.4g} -> {g.error_after:.4g}")
            else:
                lines.append(f"  {', '.join(g.linears)}: not smoothed ({g.why})")
        return "\n".join(lines)


@dataclass
class InputStats:
    """What a group's input looked like over the calibration batches."""

    absmax: torch.Tensor  # [K] per-channel max |x|
    absmean: torch.Tensor  # [K] per-channel mean |x|
    rows: torch.Tensor  # [<= SAMPLE_ROWS, K]: the first rows seen


def collect_group_inputs(model: nn.Module, batches, groups: Sequence[InputGroup],
                         forward=None) -> Dict[str, InputStats]:
    """Per group (keyed by its first Linear): per-channel max and mean of |x| over
    ``batches`` and the first ``SAMPLE_ROWS`` rows, gathered by pre-hooks (always removed)."""
    mods = dict(model.named_modules())
    acc: Dict[str, list] = {}  # name -> [absmax, abssum, count, rows]

    def hook(name):
        def pre(m, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            a = x.abs().float()
            cur = acc.get(name)
            if cur is None:
                acc[name] = [a.amax(dim=0), a.sum(dim=0, dtype=torch.float64), x.shape[0],
                             [x[:SAMPLE_ROWS].clone()]]
                return
            cur[0] = torch.maximum(cur[0], a.amax(dim=0))
            cur[1] += a.sum(dim=0, dtype=torch.float64)
            have = sum(r.shape[0] for r in cur[3])
            cur[2] += x.shape[0]
            if have < SAMPLE_ROWS:
                cur[3].append(x[: SAMPLE_ROWS - have].clone())
        return pre

    handles = [mods[g.linears[0]].register_forward_pre_hook(hook(g.linears[0])) for g in groups]
    try:
        with torch.no_grad():
            for b in batches:
                run_batch(model, b, forward)
    finally:
        for h in handles:
            h.remove()
    return {name: InputStats(m, (s / max(n, 1)).float(), torch.cat(r))
            for name, (m, s, n, r) in acc.items()}


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
                 prescale: bool = True) -> SmoothReport:
    """Fold SmoothQuant factors into ``model`` (in place) from its activations over
    ``batches`` (each passed as ``calibrate`` passes it, or through ``forward(model,
    batch)``); see the module docstring. Returns what was done per group."""
    alphas = [float(alpha)] if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(f"smooth_quant: alpha must be in [0, 1] (or a list of such); got {alpha!r}")
    batches = list(batches)
    if not batches:
        raise ValueError("smooth_quant: batches is empty; give at least one calibration batch")
    example = batches[0]
    was = model.training
    model.eval()
    try:
        groups = input_groups(model, example, forward)
        mods = dict(model.named_modules())
        stats = collect_group_inputs(model, batches, groups, forward)
        report = SmoothReport()
        for g in groups:
            st = stats.get(g.linears[0])
            report.groups.append(_smooth_group(model, mods, g, st, alphas, prescale))
    finally:
        model.train(was)
    return report


def _smooth_group(model, mods, g: InputGroup, st: Optional["InputStats"],
                  alphas, prescale: bool) -> GroupResult:
    res = GroupResult(g.linears, g.producer, None, why=g.why)
    if g.producer is None and not prescale:
        return res
    if st is None:
        res.why = "the calibration batches did not reach it"
        return res
    weights = [mods[n].weight.detach() for n in g.linears]
    act_max, x = st.absmax, st.rows
    res.error_before = best = _w8a8_error(x, weights, None)
    best_s = None
    for a in alphas:
        s = smoothing_factors(act_max, weights, a)
        err = _w8a8_error(x, weights, s)
        if err < best:
            best, best_s, res.alpha = err, s, a
    res.error_after = best
    if best_s is None:
        res.why = "no alpha lowered the W8A8 error on the calibration rows"
        return res
    res.how = apply_input_scale(model, g, best_s)
    return res
