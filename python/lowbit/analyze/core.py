"""What every case of ``lowbit analyze`` shares: the ``Case`` a case module builds, and
``analyze_case``, which builds each row's model, runs the case's data through it, and scores
it against the fp32 reference.

Throughput: a case's data is split into a few passes of equal make-up (the MiniLM sentences
are dealt round-robin from a length-sorted list, so each pass holds as many short and long
ones); each pass is timed, and the row's rate is the median of the passes' samples/s. The
scored outputs are those of the same passes, so timing costs no extra forward. The first pass
also carries the first call's set-up cost, which the median leaves out.
"""
from __future__ import annotations

import importlib
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..convert import module_bytes
from ..validate import MAX_ACCURACY_DROP
from .variants import Variant, linear_bytes

# A pass: a list of (row indices into the case's outputs, inputs of one forward).
Pass = List[Tuple[torch.Tensor, Any]]

# bf16 has no threshold of its own in lowbit.validate: it is held to the strictest (fp8's).
BF16_MAX_DROP = min(MAX_ACCURACY_DROP.values())


@dataclass
class Case:
    name: str  # "minilm", "digits"
    title: str  # a line for the table's heading
    model: nn.Module  # the fp32 reference, on the run's device, in eval mode
    passes: List[Pass]
    n: int  # rows of output (samples scored)
    unit: str  # what a sample is: "sentences", "images"
    forward: Callable[[nn.Module, Any, torch.dtype], torch.Tensor]  # -> [batch, d] fp32
    score: Callable[[torch.Tensor, torch.Tensor], Dict[str, Optional[float]]]  # ref, out ->
    # {"accuracy": percent, "cosine": mean cosine or None}
    accuracy: str  # what the accuracy column measures
    source: str  # where the data comes from
    group_size: int  # int4
    calibration: List[Any] = field(default_factory=list)  # inputs, for calibrated rows
    info: Dict[str, Any] = field(default_factory=dict)  # for the JSON and the heading


def cache_dir() -> Path:
    """$LOWBIT_CACHE, else ~/.cache/lowbit."""
    return Path(os.environ.get("LOWBIT_CACHE") or Path.home() / ".cache" / "lowbit")


def need(module: str, what: str):
    """Import ``module``, or an ImportError saying which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"lowbit analyze: {what} needs {module!r}, which is not installed: "
                          f"pip install 'lowbit[analyze]'") from e


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_passes(case: Case, model: nn.Module, dtype: torch.dtype,
               step: Callable[[], None] = lambda: None) -> Tuple[torch.Tensor, List[float]]:
    """(outputs [n, d] fp32 on the CPU, samples/s of each pass)."""
    device = next(model.parameters()).device
    out: Optional[torch.Tensor] = None
    rates = []
    with torch.no_grad():
        for p in case.passes:
            _sync(device)
            t0 = time.perf_counter()
            ys = [case.forward(model, inputs, dtype) for _, inputs in p]
            _sync(device)
            dt = time.perf_counter() - t0
            rates.append(sum(len(i) for i, _ in p) / dt)
            for (idx, _), y in zip(p, ys):
                y = y.float().cpu()
                if out is None:
                    out = torch.zeros(case.n, *y.shape[1:])
                out[idx] = y
            step()
    return out, rates


def max_drop(precision: str) -> Optional[float]:
    if precision == "fp32":
        return None
    return BF16_MAX_DROP if precision == "bf16" else MAX_ACCURACY_DROP[precision]


def analyze_case(case: Case, variants: Sequence[Variant], step=lambda: None) -> List[dict]:
    """One row per variant, the fp32 reference first (``variants`` must start with it)."""
    if not variants or variants[0].precision != "fp32":
        raise ValueError("analyze_case: the first variant must be the fp32 reference")
    rows: List[dict] = []
    ref_out, ref = None, None
    for v in variants:
        t0 = time.perf_counter()
        # The calibrated rows see the case's calibration batches through the case's own
        # forward (which casts inputs to the compute dtype, bf16 for them).
        calibration = (case.calibration, lambda m, b: case.forward(m, b, torch.bfloat16))
        built = v.build(case.model, case.group_size, calibration)
        t_build = time.perf_counter() - t0
        out, rates = run_passes(case, built.model, built.dtype, step)
        if ref_out is None:
            ref_out = out
        s = case.score(ref_out, out)
        row = dict(case=case.name, variant=v.name, precision=v.precision, compute=built.scheme,
                   linear_bytes=linear_bytes(built.model), model_bytes=module_bytes(built.model),
                   accuracy=s["accuracy"], cosine=s.get("cosine"),
                   per_s=statistics.median(rates), per_s_passes=rates, unit=case.unit,
                   kept=[dict(layer=n, why=w) for n, w in built.kept],
                   build_s=t_build, run_s=time.perf_counter() - t0 - t_build)
        if ref is None:
            ref = row
        row["drop"] = ref["accuracy"] - row["accuracy"]
        row["linear_vs_fp32"] = ref["linear_bytes"] / row["linear_bytes"]
        row["speedup"] = row["per_s"] / ref["per_s"]
        row["max_drop"] = max_drop(v.precision)
        row["verdict"] = ("reference" if row["max_drop"] is None else
                          "PASS" if row["drop"] <= row["max_drop"] else "FAIL")
        rows.append(row)
        del built
    return rows
