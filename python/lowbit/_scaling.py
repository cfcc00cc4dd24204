"""What SmoothQuant and AWQ share: the inputs each Linear saw over the calibration batches,
and the per-group search of a per-channel factor ``s`` (weights ``* s``, input ``/ s``)
whose quantized output error is lowest, applied with ``lowbit.fold.apply_input_scale``.
``mixed_precision`` reads the same inputs for its per-layer errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ._batches import run_batch
from .fold import InputGroup, apply_input_scale, input_groups

SAMPLE_ROWS = 512  # calibration rows per layer kept for the searches


@dataclass
class InputStats:
    """What a Linear's input looked like over the calibration batches."""

    absmax: torch.Tensor  # [K] per-channel max |x|
    absmean: torch.Tensor  # [K] per-channel mean |x|
    rows: torch.Tensor  # [<= the rows asked for, K]: the first rows seen


def collect_inputs(model: nn.Module, batches, names: Sequence[str], forward=None,
                   rows: int = SAMPLE_ROWS) -> Dict[str, InputStats]:
    """Per Linear of ``names`` that the batches reach: per-channel max and mean of |x| over
    ``batches`` and the first ``rows`` rows, gathered by pre-hooks (always removed)."""
    acc: Dict[str, list] = {}  # name -> [absmax, abssum, count, rows]

    def hook(name):
        def pre(m, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            a = x.abs().float()
            cur = acc.get(name)
            if cur is None:
                acc[name] = [a.amax(dim=0), a.sum(dim=0, dtype=torch.float64), x.shape[0],
                             [x[:rows].clone()]]
                return
            cur[0] = torch.maximum(cur[0], a.amax(dim=0))
            cur[1] += a.sum(dim=0, dtype=torch.float64)
            have = sum(r.shape[0] for r in cur[3])
            cur[2] += x.shape[0]
            if have < rows:
                cur[3].append(x[: rows - have].clone())
        return pre

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for b in batches:
                run_batch(model, b, forward)
    finally:
        for h in handles:
            h.remove()
    return {name: InputStats(m, (s / max(n, 1)).float(), torch.cat(r))
            for name, (m, s, n, r) in acc.items()}


@dataclass
class ScaledGroup:
    linears: List[str]
    producer: Optional[str]
    alpha: Optional[float]  # None: not scaled
    error_before: float = float("nan")  # relative quantized output error, calibration rows
    error_after: float = float("nan")
    why: str = ""
    how: str = ""  # "folded into <producer>" or "pre-scaled" (lowbit.nn.PreScale)


@dataclass
class ScaleReport:
    """What ``smooth_quant`` or ``awq`` did to each group."""

    title: str  # "lowbit.smooth_quant"
    error: str  # the error's name: "W8A8 error"
    not_done: str  # "not smoothed"
    alpha_format: str = ""  # format spec of alpha in the text
    groups: List[ScaledGroup] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.title}:"]
        for g in self.groups:
            if g.alpha is not None:
                lines.append(f"  {', '.join(g.linears)}: alpha {g.alpha:{self.alpha_format}}, "
                             f"{g.how}, {self.error} {g.error_before:.4g} -> "
                             f"{g.error_after:.4g}")
            else:
                lines.append(f"  {', '.join(g.linears)}: {self.not_done} ({g.why})")
        return "\n".join(lines)


# search(group, inputs, weights) -> (result, best factors or None): one group's search.
Search = Callable[[InputGroup, InputStats, List[torch.Tensor]],
                  Tuple[ScaledGroup, Optional[torch.Tensor]]]


def scale_groups(model: nn.Module, batches, report: ScaleReport, op: str,
                 search: Search, forward=None, prescale: bool = True) -> ScaleReport:
    """The common frame: group the model's Linears by their input (``lowbit.fold``), gather
    each group's inputs, run ``search`` per group and apply the factors it found (folded, or
    pre-scaled when ``prescale``); the model is in eval mode meanwhile."""
    batches = list(batches)
    if not batches:
        raise ValueError(f"{op}: batches is empty; give at least one calibration batch")
    was = model.training
    model.eval()
    try:
        groups = input_groups(model, batches[0], forward)
        stats = collect_inputs(model, batches, [g.linears[0] for g in groups], forward)
        for g in groups:
            st = stats.get(g.linears[0])
            if g.producer is None and not prescale:
                res, s = ScaledGroup(g.linears, g.producer, None, why=g.why), None
            elif st is None:
                res, s = ScaledGroup(g.linears, g.producer, None,
                                     why="the calibration batches did not reach it"), None
            else:
                weights = [model.get_submodule(n).weight.detach() for n in g.linears]
                res, s = search(g, st, weights)
            if s is not None:
                res.how = apply_input_scale(model, g, s)
            report.groups.append(res)
    finally:
        model.train(was)
    return report


def best_factors(g: InputGroup, candidates: Iterable[Tuple[float, torch.Tensor]],
                 error: Callable[[Optional[torch.Tensor]], float],
                 no_gain: str) -> Tuple[ScaledGroup, Optional[torch.Tensor]]:
    """The candidate (alpha, s) with the lowest ``error(s)``, if it is below ``error(None)``
    (no scaling, always a candidate); ``no_gain``: the reason when none is."""
    res = ScaledGroup(g.linears, g.producer, None, why=g.why)
    res.error_before = best = error(None)
    best_s = None
    for a, s in candidates:
        err = error(s)
        if err < best:
            best, best_s, res.alpha = err, s, a
    res.error_after = best
    if best_s is None:
        res.why = no_gain
    return res, best_s
