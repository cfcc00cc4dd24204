"""lowbit.smooth_quant: the function is unchanged, and W8A8 gets better on outliers (CPU)."""
import pytest
import torch
from torch import nn

import lowbit
from lowbit.smoothquant import smoothing_factors


class Block(nn.Module):
    """Pre-norm MLP whose norm makes a few activation channels 30x larger (outliers)."""

    def __init__(self, d=64, f=128):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, f), nn.Linear(f, d)
        with torch.no_grad():
            self.norm.weight.fill_(1.0)
            self.norm.weight[[3, 17, 40]] = 30.0

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.norm(x))))


def _data(n=4):
    g = torch.Generator().manual_seed(2)
    return [torch.randn(16, 64, generator=g) for _ in range(n)]


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_function_unchanged_before_rounding():
    torch.manual_seed(0)
    m = Block().double()
    data = [x.double() for x in _data()]
    want = [m(x) for x in data]
    report = lowbit.smooth_quant(m, data, alpha=[0.3, 0.5, 0.8])
    smoothed = [g for g in report.groups if g.alpha is not None]
    assert [g.linears for g in smoothed] == [["up"]] and smoothed[0].producer == "norm"
    assert smoothed[0].error_after < smoothed[0].error_before
    for x, y in zip(data, want):
        torch.testing.assert_close(m(x), y, rtol=1e-10, atol=1e-10)
    assert "not smoothed" in str(report)  # down reads relu's output: no producer


def test_smoothed_int8_beats_plain_int8_on_outliers():
    torch.manual_seed(0)
    ref = Block()
    plain, smooth = Block(), Block()
    plain.load_state_dict(ref.state_dict())
    smooth.load_state_dict(ref.state_dict())
    data = _data()
    lowbit.smooth_quant(smooth, data)
    lowbit.quantize_(plain, "int8")
    lowbit.quantize_(smooth, "int8")
    with torch.no_grad():
        e_plain = sum(_rel(plain(x), ref(x)) for x in data)
        e_smooth = sum(_rel(smooth(x), ref(x)) for x in data)
    assert e_smooth < 0.7 * e_plain, (e_smooth, e_plain)


def test_never_worse_than_plain_on_its_calibration_rows():
    """Without outliers no alpha may help; then nothing is folded."""
    m = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64))
    report = lowbit.smooth_quant(m, _data(), alpha=[0.0, 0.5, 1.0])
    (g,) = report.groups
    assert g.error_after <= g.error_before
    if g.alpha is None:
        assert "no alpha" in g.why


def test_factors_and_errors():
    w = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.0, 4.0]])
    s = smoothing_factors(torch.tensor([4.0, 3.0, 0.0]), [w], 0.5)
    torch.testing.assert_close(s, torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="alpha"):
        lowbit.smooth_quant(Block(), _data(), alpha=1.5)
    with pytest.raises(ValueError, match="empty"):
        lowbit.smooth_quant(Block(), [])
