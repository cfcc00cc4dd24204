"""``lowbit.validate``: is a quantized model good enough to ship?

It measures, for the original and the quantized model: the user's accuracy metric, the
latency of a forward on an example input (interleaved rounds, medians: host and clock drift
hit both models alike; CUDA is synchronized around each timed call), the throughput that
gives, and the bytes of parameters and buffers. It then checks them against per-precision
thresholds and returns a report with a pass/fail verdict and its reasons.

Thresholds (``MAX_ACCURACY_DROP``): at most 0.5 / 1.0 / 3.0 points of accuracy lost for fp8 /
int8 / int4, the usual production criteria for these precisions;
a drop equal to the threshold passes. Weight-only schemes are checked against their weight
precision ("fp8-w8a16" as fp8, "w8a16" as int8). The minimum speed-ups often quoted with them (2x, 3x,
5x on an A100) are kept as ``ARTICLE_MIN_SPEEDUP`` for reference but are not applied by default:
speed-ups depend on the card, batch and model (a CPU run on the reference backend is slower
than full precision by design), so ``min_speedup`` is the caller's to set.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

import torch
from torch import nn

from ._batches import run_batch
from .convert import module_bytes

MAX_ACCURACY_DROP = {"fp8": 0.5, "int8": 1.0, "int4": 3.0}
ARTICLE_MIN_SPEEDUP = {"fp8": 2.0, "int8": 3.0, "int4": 5.0}
_PRECISION_OF = {"fp8": "fp8", "fp8-fnuz": "fp8", "fp8-w8a16": "fp8", "int8": "int8",
                 "w8a16": "int8", "int4": "int4"}


@dataclass
class ModelStats:
    metric: float
    latency_ms: float  # median over the timed rounds; nan when not timed
    throughput: float  # samples per second (batch_size / latency)
    bytes: int  # parameters and buffers


@dataclass
class ValidationReport:
    precision: str
    original: ModelStats
    quantized: ModelStats
    max_accuracy_drop: float
    min_speedup: Optional[float]
    reasons: List[str] = field(default_factory=list)  # why it failed; empty when it passed

    @property
    def accuracy_drop(self) -> float:
        return self.original.metric - self.quantized.metric

    @property
    def speedup(self) -> float:
        return self.original.latency_ms / self.quantized.latency_ms

    @property
    def memory_reduction(self) -> float:
        return self.original.bytes / self.quantized.bytes

    @property
    def passed(self) -> bool:
        return not self.reasons

    def __str__(self) -> str:
        o, q = self.original, self.quantized
        lines = [
            f"lowbit.validate ({self.precision}): {'PASS' if self.passed else 'FAIL'}",
            f"  metric       {o.metric:10.4f} -> {q.metric:10.4f}  drop {self.accuracy_drop:.4f} "
            f"(max {self.max_accuracy_drop})",
            f"  latency      {o.latency_ms:10.3f} -> {q.latency_ms:10.3f} ms  speed-up "
            f"{self.speedup:.2f}x" + (f" (min {self.min_speedup}x)" if self.min_speedup else ""),
            f"  throughput   {o.throughput:10.1f} -> {q.throughput:10.1f} /s",
            f"  memory       {o.bytes / 2**20:10.2f} -> {q.bytes / 2**20:10.2f} MiB  "
            f"({self.memory_reduction:.2f}x smaller)",
        ]
        lines += [f"  fails: {r}" for r in self.reasons]
        return "\n".join(lines)


def _sync(model: nn.Module) -> None:
    for t in model.parameters():
        if t.device.type == "cuda":
            torch.cuda.synchronize(t.device)
        return


def time_models(models: Sequence[nn.Module], example, *, rounds: int = 5,
                calls: int = 3, warmup: int = 2) -> List[float]:
    """Median ms per forward of each model on ``example``, over ``rounds`` interleaved
    rounds of ``calls`` forwards each."""
    times: List[List[float]] = [[] for _ in models]
    with torch.no_grad():
        for m in models:
            for _ in range(warmup):
                run_batch(m, example)
            _sync(m)
        for _ in range(rounds):
            for i, m in enumerate(models):
                t0 = time.perf_counter()
                for _ in range(calls):
                    run_batch(m, example)
                _sync(m)
                times[i].append((time.perf_counter() - t0) * 1e3 / calls)
    return [statistics.median(t) for t in times]


def validate(original: nn.Module, quantized: nn.Module,
             metric: Callable[[nn.Module, Any], float], data, *, precision: str,
             example=None, batch_size: int = 1, max_accuracy_drop: Optional[float] = None,
             min_speedup: Optional[float] = None, rounds: int = 5) -> ValidationReport:
    """Compare ``quantized`` with ``original``: ``metric(model, data)`` (higher is better, in
    points, e.g. accuracy in percent), the latency of ``model(example)`` (a tensor, a tuple of
    positional inputs or a dict of keyword inputs; ``batch_size`` samples, for the
    throughput), and the bytes of each; pass when the metric drops by at most
    ``max_accuracy_drop`` (default: ``MAX_ACCURACY_DROP`` of ``precision``) and, when
    ``min_speedup`` is given, the quantized model is at least that much faster."""
    if precision not in _PRECISION_OF:
        raise ValueError(f"validate: precision must be one of {tuple(_PRECISION_OF)}; got "
                         f"{precision!r}")
    for name, m in (("original", original), ("quantized", quantized)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"validate: {name} must be a torch.nn.Module; got {type(m).__name__}")
    if not callable(metric):
        raise TypeError("validate: metric must be a callable metric(model, data) -> float")
    if min_speedup is not None and example is None:
        raise ValueError("validate: min_speedup needs an example input to time the models")
    if max_accuracy_drop is None:
        max_accuracy_drop = MAX_ACCURACY_DROP[_PRECISION_OF[precision]]
    modes = [original.training, quantized.training]
    original.eval()
    quantized.eval()
    try:
        with torch.no_grad():
            scores = [float(metric(m, data)) for m in (original, quantized)]
        latency = (time_models([original, quantized], example, rounds=rounds)
                   if example is not None else [float("nan")] * 2)
    finally:
        original.train(modes[0])
        quantized.train(modes[1])
    stats = [ModelStats(s, t, batch_size / t * 1e3, module_bytes(m))
             for s, t, m in zip(scores, latency, (original, quantized))]
    report = ValidationReport(precision, stats[0], stats[1], max_accuracy_drop, min_speedup)
    # A drop equal to the limit passes; 1e-9 absorbs the metric's own rounding (64.01 - 63.01
    # is 1.000000000000007 in binary). Also fails a NaN metric.
    if not report.accuracy_drop <= max_accuracy_drop + 1e-9:
        report.reasons.append(f"accuracy drop {report.accuracy_drop:.4f} exceeds "
                              f"{max_accuracy_drop}")
    if min_speedup is not None and not report.speedup >= min_speedup:
        report.reasons.append(f"speed-up {report.speedup:.2f}x is below {min_speedup}x")
    return report
