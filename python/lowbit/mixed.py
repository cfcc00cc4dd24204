"""Mixed precision by sensitivity: a precision per layer that meets an accuracy budget with
the least memory.

``sensitivity(model, batches, schemes)`` measures, for every ``nn.Linear`` and scheme, the
relative error of that layer's output when it alone is quantized, on its calibration inputs.
``mixed_precision(model, batches, budget)`` starts every layer at the smallest scheme (by the
layer's bytes) and, while the *model's* output error on the batches (relative Frobenius,
measured, not estimated) exceeds ``budget``, moves the layers that gain the most error per
extra byte to their next larger scheme, ending at full precision ("none") where needed. It
returns the plan; ``apply_plan`` quantizes a model by it (``lowbit.quantize_`` per scheme).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ._batches import run_batch
from ._scaling import collect_inputs

from .convert import SCHEMES, QuantizeSummary, _kept_by_model, module_bytes, quantize_

DEFAULT_SCHEMES = ("int4", "int8", "fp8")
FULL = "none"  # a layer kept in full precision


def _flat(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.detach().double().flatten()
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state.detach().double().flatten()
    if isinstance(out, (tuple, list)):
        return torch.cat([_flat(o) for o in out if isinstance(o, torch.Tensor) or
                          isinstance(o, (tuple, list))])
    raise TypeError(f"mixed_precision: cannot read the model's output of type {type(out).__name__}")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    d = b.norm().item()
    return (a - b).norm().item() / d if d > 0 else (a - b).norm().item()


def _linears(model: nn.Module) -> Dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if type(m) is nn.Linear}


def sensitivity(model: nn.Module, batches, schemes: Sequence[str] = DEFAULT_SCHEMES, *,
                group_size: int = 128, forward: Optional[Callable] = None,
                rows: int = 256) -> Dict[str, Dict[str, float]]:
    """{layer: {scheme: relative error of the layer's output with that layer quantized}} on
    the first ``rows`` input rows each layer sees over ``batches``; a scheme that cannot take
    a layer (int4 and a K the group does not divide) is absent from its entry."""
    _check_schemes(schemes)
    lin = _linears(model)
    if not lin:
        raise ValueError("sensitivity: the model has no nn.Linear layer")
    seen = collect_inputs(model, batches, list(lin), forward, rows)
    out: Dict[str, Dict[str, float]] = {}
    with torch.no_grad():
        for name, m in lin.items():
            if name not in seen:
                raise ValueError(f"sensitivity: the batches did not reach {name}")
            x = seen[name].rows
            ref = m(x).double()
            out[name] = {}
            for s in schemes:
                q = _quantized(m, s, group_size)
                if q is not None:
                    out[name][s] = _rel(q(x).double(), ref)
    return out


def _check_schemes(schemes):
    bad = [s for s in schemes if s not in SCHEMES]
    if bad or not schemes:
        raise ValueError(f"schemes must be a non-empty list of {tuple(SCHEMES)}; got {schemes!r}")


def _quantized(m: nn.Linear, scheme: str, group_size: int) -> Optional[nn.Module]:
    holder = nn.Sequential(copy.deepcopy(m))
    s = quantize_(holder, scheme, group_size=group_size, check_device=False)
    return holder[0] if s.swapped else None


@dataclass
class Plan:
    """A precision per layer ("none": full precision), and what it measured."""

    schemes: Dict[str, str]
    error: float  # the model's relative output error under the plan
    budget: float
    bytes: int  # of the Linear layers under the plan
    bytes_full: int  # of the Linear layers in full precision
    steps: List[str] = field(default_factory=list)
    # MoE experts modules (quantize_'s QuantizedExperts targets), not planned: they stay in
    # full precision under the plan unless named in it by hand. name -> bytes.
    experts: Dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        counts: Dict[str, int] = {}
        for s in self.schemes.values():
            counts[s] = counts.get(s, 0) + 1
        mix = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        ok = "meets" if self.error <= self.budget else "misses"
        text = (f"mixed precision: {mix}; output error {self.error:.4g} {ok} the budget "
                f"{self.budget}; Linear bytes {self.bytes_full / 2**20:.2f} -> "
                f"{self.bytes / 2**20:.2f} MiB")
        # (one named in schemes by hand is planned; a Plan pickled before the field had none)
        unplanned = {n: b for n, b in getattr(self, "experts", {}).items()
                     if n not in self.schemes}
        if unplanned:
            text += (f"; {len(unplanned)} experts modules not planned, in full precision "
                     f"({sum(unplanned.values()) / 2**20:.2f} MiB)")
        return text


def apply_plan(model: nn.Module, plan, *, group_size: int = 128,
               calibration=None) -> List[QuantizeSummary]:
    """Quantize ``model`` in place by ``plan`` (a ``Plan`` or {layer: scheme}), one
    ``quantize_`` per scheme over its layers; returns the summaries."""
    schemes = plan.schemes if isinstance(plan, Plan) else dict(plan)
    bad = {s for s in schemes.values() if s != FULL and s not in SCHEMES}
    if bad:
        raise ValueError(f"apply_plan: plan's schemes must be {FULL!r} or one of "
                         f"{tuple(SCHEMES)}; got {sorted(bad)}")
    unknown = sorted(set(schemes) - dict(model.named_modules()).keys())
    if unknown:
        raise ValueError(f"apply_plan: plan names layers the model does not have: "
                         f"{unknown[:8]}")
    out = []
    for scheme in sorted(set(schemes.values()) - {FULL}):
        mine = {n for n, s in schemes.items() if s == scheme}
        cal = calibration if calibration is not None and SCHEMES[scheme][2] else None
        out.append(quantize_(model, scheme, filter=lambda name, m, mine=mine: name not in mine,
                             group_size=group_size, calibration=cal, check_device=False))
    return out


def mixed_precision(model: nn.Module, batches, budget: float, *,
                    schemes: Sequence[str] = DEFAULT_SCHEMES, group_size: int = 128,
                    forward: Optional[Callable] = None, step: float = 0.1) -> Plan:
    """The plan with the least Linear bytes this greedy search finds whose model output error
    on ``batches`` is at most ``budget``; ``step``: the fraction of layers moved up per
    round (at least one). See the module docstring."""
    _check_schemes(schemes)
    if not budget >= 0:
        raise ValueError(f"mixed_precision: budget must be >= 0; got {budget!r}")
    batches = list(batches)
    if not batches:
        raise ValueError("mixed_precision: batches is empty")
    from .nn.experts import experts_layout

    sens = sensitivity(model, batches, schemes, group_size=group_size, forward=forward)
    lin = _linears(model)
    kept = _kept_by_model(model)
    for n in lin:
        if kept(n) is not None:
            sens[n] = {}  # (quantize_ would keep it: full precision is its only rung)
    nbytes = {n: {s: module_bytes(_quantized(m, s, group_size)) for s in sens[n]}
              for n, m in lin.items()}
    for n, m in lin.items():
        nbytes[n][FULL] = module_bytes(m)
        sens[n][FULL] = 0.0
    # Each layer's ladder: its schemes by bytes, each kept only if its error is below every
    # smaller one's (a scheme of as many bytes and more error is never worth moving to),
    # ending at full precision (error 0).
    ladder = {}
    for n in lin:
        rungs = []
        for s in sorted(sens[n], key=lambda s: (nbytes[n][s], sens[n][s])):
            if not rungs or sens[n][s] < sens[n][rungs[-1]]:
                rungs.append(s)
        ladder[n] = rungs
    level = {n: 0 for n in lin}
    with torch.no_grad():
        refs = [_flat(run_batch(model, b, forward)) for b in batches]

    def plan_now() -> Dict[str, str]:
        return {n: ladder[n][level[n]] for n in lin}

    def error(assign) -> float:
        q = copy.deepcopy(model)
        apply_plan(q, assign, group_size=group_size)
        with torch.no_grad():
            outs = [_flat(run_batch(q, b, forward)) for b in batches]
        return _rel(torch.cat(outs), torch.cat(refs))

    steps = []
    err = error(plan_now())
    while err > budget:
        movable = [n for n in lin if level[n] + 1 < len(ladder[n])]
        if not movable:
            break

        def gain(n):
            cur, nxt = ladder[n][level[n]], ladder[n][level[n] + 1]
            extra = max(nbytes[n][nxt] - nbytes[n][cur], 1)
            return (sens[n][cur] - sens[n][nxt]) / extra

        movable.sort(key=gain, reverse=True)
        for n in movable[: max(1, int(step * len(lin)))]:
            level[n] += 1
        err = error(plan_now())
        steps.append(f"{len(steps) + 1}: error {err:.4g}")
    assign = plan_now()
    experts = {n: module_bytes(m) for n, m in model.named_modules()
               if experts_layout(m) is not None}
    return Plan(assign, err, budget, sum(nbytes[n][s] for n, s in assign.items()),
                sum(nbytes[n][FULL] for n in lin), steps, experts)
