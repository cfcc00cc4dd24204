"""`lowbit.bench.models`' pieces that `lowbit analyze`'s GPU timing shares with `lowbit bench
--model`: the layer swap of every precision (on the CPU's reference backend) and the
interleaved timing loop (its order and the hook around each measurement, with the timer
replaced: no speed is asserted)."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from lowbit.bench import models, timing
from lowbit.nn import Fp8Linear, Int4Linear, Int8Linear

KINDS = {"fp8": (Fp8Linear, "w8a8"), "int8": (Int8Linear, "w8a8"), "int4": (Int4Linear, None),
         "w8a16": (Int8Linear, "w8a16")}


def _mlp():
    torch.manual_seed(0)
    return models.LlamaMLP(hidden=128, ffn=256).to(torch.bfloat16).eval()


@pytest.mark.parametrize("precision", list(models.LAYERS))
def test_to_quantized_swaps_every_linear(precision):
    ref, m = _mlp(), _mlp()
    assert models.to_quantized(m, precision) == 2
    cls, mode = KINDS[precision]
    for child in (m.gate_up, m.down):
        assert type(child) is cls
        if mode is not None:
            assert child.mode == mode
    if precision == "int4":
        assert m.down.group_size == models.INT4_GROUP
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    cosine, err = models.agreement(ref, m, (x,))
    assert cosine > 0.99 and err is not None and err < 0.15


@pytest.mark.parametrize("precision", list(models.LAYERS))
def test_to_quantized_swaps_experts_modules(precision):
    # the mixtral-moe rows: the block's experts module becomes a QuantizedExperts of the
    # precision's layers, next to the plain Linears
    from lowbit.nn import QuantizedExperts
    from lowbit_testing import EXPERT_LAYOUTS, Experts, routing

    def block():
        return nn.ModuleDict({"router": nn.Linear(128, 4, bias=False),
                              "experts": Experts(4, 128, 128, **EXPERT_LAYOUTS["mixtral"])}
                             ).to(torch.bfloat16)

    ref, m = block(), block()
    assert models.to_quantized(m, precision) == 1 + 2 * 4
    assert isinstance(m["experts"], QuantizedExperts)
    assert type(m["experts"].down_proj[3]) is KINDS[precision][0]
    x = torch.randn(6, 128, dtype=torch.bfloat16)
    index, weights = routing(6)
    with torch.no_grad():
        want, got = ref["experts"](x, index, weights), m["experts"](x, index, weights)
    assert nn.functional.cosine_similarity(want.float().flatten(), got.float().flatten(),
                                           dim=0) > (0.97 if precision == "int4" else 0.99)


def test_the_moe_block_runs_last():
    # its quantized forward reads to the host (a failed graph capture), so no row after it
    assert list(models.MODELS)[-1] == "mixtral-moe"


def test_to_quantized_rejects_an_unknown_precision():
    with pytest.raises(ValueError, match="precision: unknown 'int3'"):
        models.to_quantized(_mlp(), "int3")
    with pytest.raises(ValueError, match="precision: unknown 'bf16'"):
        models.quantized_layer(nn.Linear(128, 128), "bf16")
    # a model without Linear layers is still told, not silently left as it is
    with pytest.raises(ValueError, match="precision: unknown"):
        models.to_quantized(nn.ReLU(), "nf4")


def test_bench_precisions_are_built_by_the_same_swap():
    assert {p.removesuffix(models.FUSED) for p in models.PRECISIONS} <= set(models.LAYERS)


@pytest.mark.parametrize("precision", ["int8", "int8+fused", "int4+fused"])
def test_fused_precision_fuses_the_bert_layers_siblings(precision):
    from lowbit.nn import SiblingLinear

    torch.manual_seed(0)
    layer = models.BertLayer(128, 4, 256).to(torch.bfloat16).eval()  # (K: whole int4 groups)
    q_layer = copy.deepcopy(layer)
    note = models.quantize_model(q_layer, precision)
    fused = precision.endswith(models.FUSED)
    assert note == "6 Linears swapped" + (", 1 sibling groups fused" if fused else "")
    assert isinstance(q_layer.key, SiblingLinear) == fused
    x = torch.randn(2, 8, 128, dtype=torch.bfloat16)
    plain = copy.deepcopy(layer)
    models.to_quantized(plain, precision.split("+")[0])
    with torch.no_grad():
        assert torch.equal(q_layer(x), plain(x))  # (the reference accumulates alike)


def test_time_interleaved_order_and_hook(monkeypatch):
    calls, hooks = [], []
    per_call_us = {"a": 2000.0, "b": 500.0}

    def fake_wall_us(fn, n):
        name = fn()
        calls.append((name, n))
        return per_call_us[name]

    monkeypatch.setattr(timing, "wall_us", fake_wall_us)

    @contextlib.contextmanager
    def around(i):
        hooks.append(("enter", i))
        yield
        hooks.append(("exit", i))

    times = models.time_interleaved([lambda: "a", lambda: "b"], rounds=3, measure_s=0.01,
                                    around=around)
    assert times == [[2.0] * 3, [0.5] * 3]
    # a first call each, one probe of 3 calls each, then a: 0.01 s / 2 ms = 5 calls (at
    # least 3), b: 20 calls
    assert calls[:4] == [("a", 1), ("b", 1), ("a", 3), ("b", 3)]
    assert calls[4:] == [("a", 5), ("b", 20)] * 3
    assert hooks == [("enter", 0), ("exit", 0), ("enter", 1), ("exit", 1)] * 3


def test_time_interleaved_without_hook(monkeypatch):
    monkeypatch.setattr(timing, "wall_us", lambda fn, n: (fn(), 1000.0)[1])
    assert models.time_interleaved([lambda: None], rounds=2) == [[1.0, 1.0]]


def test_time_interleaved_run_in_comes_before_the_hook(monkeypatch):
    events = []

    def fake_wall_us(fn, n):
        events.append((fn(), n))
        return 1000.0

    monkeypatch.setattr(timing, "wall_us", fake_wall_us)

    @contextlib.contextmanager
    def around(i):
        events.append(("span", i))
        yield

    models.time_interleaved([lambda: "a"], rounds=2, measure_s=0.01, around=around,
                            run_in_s=0.004)
    # first call, probe; then per round: 4 untimed calls (0.004 s / 1 ms), the span, 10
    # timed calls
    assert events == [("a", 1), ("a", 3)] + [("a", 4), ("span", 0), ("a", 10)] * 2


def test_time_interleaved_calibrates_past_a_slow_first_call(monkeypatch):
    # A first call 100x slower than the rest (lazy initialization) must not shrink the
    # measurements: calibrated on it, each would be 3 calls, 6 ms instead of about 10.
    calls = []

    def fake_wall_us(fn, n):
        calls.append(n)
        return 200_000.0 if len(calls) == 1 else 2000.0

    monkeypatch.setattr(timing, "wall_us", fake_wall_us)
    models.time_interleaved([lambda: None], rounds=1, measure_s=0.01)
    assert calls == [1, 3, 5]
