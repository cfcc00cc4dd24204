"""``lowbit analyze``'s GPU timing: the article's models timed per precision, with the board's
average power.

Two workloads, random weights in bf16 (``lowbit.bench.models`` builds them and swaps their
Linear layers, the same builders as ``lowbit bench --model``):

- ``bert-large``: a BERT-large-shaped encoder (hidden 1024, FFN 4096, 24 layers, 16 heads),
  batch 32 x 128 tokens, eager and under torch.compile: the article's table (samples/s are
  sequences/s), whose A100 numbers stand beside the rows;
- ``llama-mlp``: a Llama-3-8B MLP block (hidden 4096, MLP 14336, gate and up fused) at
  decode M = 1, 16, 64 and prefill M = 2048 tokens, replayed as CUDA graphs (decode steps are
  launch-bound in eager mode: a graph times the kernels, as a serving engine runs them).

Each precision (bf16, the baseline; fp8, int8: W8A8; int4: W4A16; w8a16: weight-only int8)
is a copy of the bf16 model with its Linear layers swapped (``models.to_quantized``). Per
shape and mode, every precision is timed in the same interleaved rounds (bf16, fp8, ...,
bf16, fp8, ...; ``models.time_interleaved``), medians reported, speed-up = bf16's median time
/ the row's, its range the per-round ratios. Power: ``power.PowerMeter`` around each timed
measurement, summed over the rounds: joules / seconds of that precision's runs. NVML's
counters move in steps (up to about 100 ms apart on recent boards), so where power is read
each measurement follows an untimed run-in of the same model (``RUN_IN_S``): the counter's
window then holds this precision's work, not the one timed before it.
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..bench import models
from ..bench.cases import error_text
from ..convert import module_bytes
from . import power
from .variants import linear_bytes

PRECISIONS = tuple(models.LAYERS)  # timed beside bf16: fp8, int8, int4, w8a16
BASELINE = "bf16"
ROUNDS = 5
MEASURE_S = 0.3  # wall time of one measurement: enough energy-counter updates per round
RUN_IN_S = 0.1  # untimed calls before each measurement, where power is read
IDLE_S = 0.5  # the idle power's reading, before anything is timed
LLAMA_MS = (1, 16, 64, 2048)
DECODE_MAX_M = 64  # rows up to this M are decode steps, above it prefill

# The article's "Results Summary" (BERT-large, batch size 32, NVIDIA A100), as printed:
# precision -> (samples/s, memory GB, power W). It has no bf16 row: its FP16 row, the same
# width, stands beside bf16, and its speed-ups are against that row.
ARTICLE_CARD = "NVIDIA A100"
ARTICLE = {"fp32": (1200, 16.0, 350), "fp16": (2100, 8.0, 280), "fp8": (3800, 4.0, 220),
           "int8": (4500, 2.0, 180), "int4": (6200, 1.0, 150)}
ARTICLE_ROW = {"bf16": "fp16", "fp8": "fp8", "int8": "int8", "int4": "int4"}


@dataclass
class Shape:
    label: str  # "32x128", "M=16 (decode)"
    samples: int  # per forward: sequences (BERT), token rows (Llama)
    inputs: Callable[[], tuple]  # the forward's inputs, on the GPU


@dataclass
class Workload:
    name: str
    unit: str  # what a sample is
    modes: Tuple[str, ...]  # of models.MODES
    build: Callable[[], Tuple[nn.Module, str]]  # (bf16 model in eval mode, what it is)
    shapes: List[Shape] = field(default_factory=list)
    article: bool = False  # the article's table has this workload


def llama_shape(m: int, hidden: int = 4096, device="cuda") -> Shape:
    phase = "decode" if m <= DECODE_MAX_M else "prefill"
    return Shape(f"M={m} ({phase})", m,
                 lambda: (torch.randn(m, hidden, device=device, dtype=torch.bfloat16),))


def default_workloads(ms: Sequence[int] = LLAMA_MS, batch: int = 32,
                      seq: int = 128) -> List[Workload]:
    """The Llama MLP first: its graph captures run before any compiled BERT, as in
    ``lowbit bench``, so that one workload's failure cannot spoil the other's set-up."""
    llama = Workload(
        "llama-mlp", "tokens", ("graph",),
        lambda: (models.LlamaMLP().to("cuda", torch.bfloat16).eval(),
                 "Llama-3-8B MLP block: gate+up fused 4096->28672, SiLU, down 14336->4096"),
        [llama_shape(m) for m in ms])
    bert = Workload(
        "bert-large", "sequences", ("eager", "compile"), models.bert_large_model,
        [Shape(f"{batch}x{seq}", batch,
               lambda: (torch.randint(0, 30522, (batch, seq), device="cuda"),))],
        article=True)
    return [llama, bert]


@dataclass
class _Built:
    precision: str
    model: Optional[nn.Module]
    facts: dict  # layers, bytes, quantize_s, error


def _build(base: nn.Module, precision: str) -> _Built:
    t0 = time.perf_counter()
    if precision == BASELINE:
        model, layers = base, "nn.Linear bf16"
    else:
        try:
            model = copy.deepcopy(base)
            models.to_quantized(model, precision)
            layers = models.LAYERS[precision]
        except Exception as e:  # noqa: BLE001 - a precision that cannot be built is a row
            return _Built(precision, None, dict(layers=models.LAYERS[precision],
                                                error=error_text(e)))
    return _Built(precision, model, dict(
        layers=layers, linear_bytes=linear_bytes(model), model_bytes=module_bytes(model),
        quantize_s=time.perf_counter() - t0 if precision != BASELINE else None))


def article_columns(precision: str) -> dict:
    """The article's A100 numbers beside a row of ``precision`` (empty where it has none)."""
    row = ARTICLE_ROW.get(precision)
    if row is None:
        return {}
    per_s, gb, w = ARTICLE[row]
    return dict(article_row=row, article_per_s=per_s, article_gb=gb, article_w=w,
                article_speedup=per_s / ARTICLE["fp16"][0])


def measure(workload: Workload, shape: Shape, inputs: tuple, agree: Dict[str, object],
            mode: str, built: List[_Built], rounds: int, measure_s: float,
            meter: power.PowerMeter, source: str) -> List[dict]:
    """One row per precision of ``built`` (bf16 first) at one shape and mode; ``agree``:
    precision -> (cosine, error) against bf16, or an exception."""
    rows = []
    for b in built:
        row = dict(workload=workload.name, shape=shape.label, mode=mode, precision=b.precision,
                   unit=workload.unit, samples=shape.samples, note=source, **b.facts)
        if workload.article:
            row.update(article_columns(b.precision))
        rows.append(row)
    fns, timed = [], []
    for b, row in zip(built, rows):
        if b.model is None:
            continue
        try:
            if isinstance(agree.get(b.precision), Exception):
                raise agree[b.precision]
            if b.precision != BASELINE:
                row["cosine"], row["err"] = agree[b.precision]
            with torch.no_grad():
                fns.append(models.prepare_call(b.model, inputs, mode))
            timed.append(row)
        except Exception as e:  # noqa: BLE001 - a mode that fails is a row, not an abort
            row["error"] = error_text(e)
    if not fns:
        return rows
    energy = [power.Reading() for _ in fns]

    @contextlib.contextmanager
    def around(i):
        with meter.span() as r:
            yield
        energy[i] += r

    try:
        with torch.no_grad():
            times = models.time_interleaved(fns, rounds, measure_s, around,
                                            RUN_IN_S if meter.available else 0.0)
    except Exception as e:  # noqa: BLE001
        for row in timed:
            row["error"] = error_text(e)
        return rows
    base = times[0] if timed[0]["precision"] == BASELINE else None
    for row, t, e in zip(timed, times, energy):
        ms = statistics.median(t)
        row.update(ms=ms, per_s=shape.samples / ms * 1e3, rounds=rounds, watts=e.watts)
        if e.watts is not None:
            row["mj_per_sample"] = e.watts * ms / shape.samples
        if base is not None:
            per_round = [b / x for b, x in zip(base, t)]
            row.update(speedup=statistics.median(base) / ms, speedup_min=min(per_round),
                       speedup_max=max(per_round))
    return rows


def run_workload(workload: Workload, precisions: Sequence[str], rounds: int, measure_s: float,
                 meter: power.PowerMeter, progress: Callable[[str], None]) -> List[dict]:
    progress(f"{workload.name}: building bf16, {', '.join(precisions)}")
    try:
        base, source = workload.build()
    except Exception as e:  # noqa: BLE001 - e.g. out of memory: the other workload still runs
        return [dict(workload=workload.name, shape="", mode="", precision=BASELINE,
                     unit=workload.unit, error=error_text(e))]
    built = [_build(base, p) for p in (BASELINE, *precisions)]
    rows = []
    for shape in workload.shapes:
        inputs = shape.inputs()
        agree: Dict[str, object] = {}
        for b in built[1:]:
            if b.model is not None:
                try:
                    agree[b.precision] = models.agreement(base, b.model, inputs)
                except Exception as e:  # noqa: BLE001 - its rows carry the error
                    agree[b.precision] = e
        for mode in workload.modes:
            progress(f"{workload.name} {shape.label} {mode}")
            rows += measure(workload, shape, inputs, agree, mode, built, rounds, measure_s,
                            meter, source)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def card_name() -> str:
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    return f"{p.name} ({p.total_memory / 2**30:.0f} GiB)"


def run(workloads: Optional[List[Workload]] = None, precisions: Sequence[str] = PRECISIONS,
        rounds: int = ROUNDS, measure_s: float = MEASURE_S,
        meter: Optional[power.PowerMeter] = None, progress: Callable[[str], None] = lambda s: None,
        card: Optional[str] = None, out: Optional[Dict] = None) -> Dict:
    """The timing section's part of analyze.json. ``out``: a dict filled in place as rows
    come (so an interrupted run keeps the rows done); ``card`` default: torch's name of the
    current device."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"precisions: unknown {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(PRECISIONS)}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1; got {rounds}")
    workloads = default_workloads() if workloads is None else workloads
    meter = power.open_meter(torch.cuda.current_device()) if meter is None else meter
    out = {} if out is None else out
    out.update(card=card or card_name(), power_source=meter.source, power_why=meter.why,
               power_card=meter.card, power_limit_w=meter.limit_w, rounds=rounds,
               measure_s=measure_s, precisions=[BASELINE, *precisions],
               article=dict(card=ARTICLE_CARD, rows=ARTICLE), rows=[])
    out["idle_w"] = meter.idle_watts(IDLE_S)
    t0 = time.perf_counter()
    for w in workloads:
        out["rows"] += run_workload(w, precisions, rounds, measure_s, meter, progress)
        out["elapsed_s"] = time.perf_counter() - t0
    return out
