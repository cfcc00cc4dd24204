"""lowbit.validate: thresholds per precision, the report, and its errors (CPU)."""
import math

import pytest
import torch
from torch import nn

import lowbit
from lowbit.validate import MAX_ACCURACY_DROP


def _pair():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).to(torch.bfloat16)
    q = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).to(torch.bfloat16)
    q.load_state_dict(ref.state_dict())
    lowbit.quantize_(q, "fp8")
    return ref, q


def _fixed(scores):
    """A metric returning a given score per model (original first)."""
    it = iter(scores)
    return lambda model, data: next(it)


@pytest.mark.parametrize("precision,limit", [("fp8", 0.5), ("int8", 1.0), ("int4", 3.0),
                                             ("w8a16", 1.0), ("fp8-w8a16", 0.5)])
def test_default_threshold_per_precision(precision, limit):
    ref, q = _pair()
    ok = lowbit.validate(ref, q, _fixed([90.0, 90.0 - limit]), None, precision=precision)
    assert ok.passed and ok.accuracy_drop == pytest.approx(limit)
    bad = lowbit.validate(ref, q, _fixed([90.0, 90.0 - limit - 0.01]), None,
                          precision=precision)
    assert not bad.passed and "accuracy drop" in bad.reasons[0]
    assert "FAIL" in str(bad) and "PASS" in str(ok)


def test_real_metric_latency_memory_and_speedup_threshold():
    ref, q = _pair()
    x = torch.randn(16, 32, dtype=torch.bfloat16)
    labels = ref(x).argmax(-1)

    def agreement(model, data):
        return 100.0 * (model(data).argmax(-1) == labels).float().mean().item()

    r = lowbit.validate(ref, q, agreement, x, precision="fp8", example=x, batch_size=16,
                        rounds=2)
    assert r.original.metric == 100.0 and 0 <= r.quantized.metric <= 100
    assert r.original.latency_ms > 0 and r.quantized.latency_ms > 0
    assert r.original.throughput == pytest.approx(16 / r.original.latency_ms * 1e3)
    assert r.memory_reduction > 1
    # An impossible speed-up requirement fails with its reason.
    r = lowbit.validate(ref, q, agreement, x, precision="fp8", example=x, min_speedup=1e6,
                        rounds=1)
    assert not r.passed and any("speed-up" in why for why in r.reasons)


def test_custom_threshold_and_nan_metric():
    ref, q = _pair()
    assert lowbit.validate(ref, q, _fixed([90.0, 85.0]), None, precision="int8",
                           max_accuracy_drop=5.0).passed
    r = lowbit.validate(ref, q, _fixed([90.0, math.nan]), None, precision="int8")
    assert not r.passed
    assert math.isnan(r.speedup)  # not timed without an example


def test_models_left_in_their_mode():
    ref, q = _pair()
    ref.train()
    q.eval()
    lowbit.validate(ref, q, _fixed([1.0, 1.0]), None, precision="fp8")
    assert ref.training and not q.training


def test_every_scheme_has_a_precision():
    """validate takes quantize_'s scheme names; each maps to a precision with thresholds."""
    import importlib
    V = importlib.import_module("lowbit.validate")  # (lowbit.validate is the function)
    assert set(lowbit.SCHEMES) <= set(V._PRECISION_OF)
    assert set(V._PRECISION_OF.values()) <= set(V.MAX_ACCURACY_DROP)


def test_errors():
    ref, q = _pair()
    with pytest.raises(ValueError, match="precision"):
        lowbit.validate(ref, q, _fixed([1, 1]), None, precision="int2")
    with pytest.raises(TypeError, match="quantized"):
        lowbit.validate(ref, "q", _fixed([1, 1]), None, precision="fp8")
    with pytest.raises(TypeError, match="metric"):
        lowbit.validate(ref, q, 3, None, precision="fp8")
    with pytest.raises(ValueError, match="example"):
        lowbit.validate(ref, q, _fixed([1, 1]), None, precision="fp8", min_speedup=1.5)
    assert set(MAX_ACCURACY_DROP) == {"fp8", "int8", "int4"}


def test_a_drop_equal_to_the_limit_passes_despite_binary_rounding():
    ref, q = _pair()
    ok = lowbit.validate(ref, q, _fixed([64.01, 63.01]), None, precision="int8")
    assert 64.01 - 63.01 > 1.0 and ok.passed  # 1.000000000000007 in binary
