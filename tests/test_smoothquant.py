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
    up, down = report.groups
    assert up.linears == ["up"] and up.how == "folded into norm"
    assert up.error_after < up.error_before
    # down reads relu's output (no producer): pre-scaled if that helped, else untouched.
    assert down.producer is None and down.error_after <= down.error_before
    assert (down.how == "pre-scaled") == isinstance(m.down, lowbit.nn.PreScale)
    for x, y in zip(data, want):
        torch.testing.assert_close(m(x), y, rtol=1e-10, atol=1e-10)
    assert "folded into norm" in str(report)


def test_without_prescale_a_group_with_no_producer_is_left_alone():
    m = Block()
    report = lowbit.smooth_quant(m, _data(), prescale=False)
    assert report.groups[1].alpha is None and "not smoothed" in str(report)
    assert type(m.down) is nn.Linear


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


class PostNorm(nn.Module):
    """BERT-style: the norm's output (with outlier channels) is also the residual."""

    def __init__(self, d=64, f=128):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, f), nn.Linear(f, d)
        with torch.no_grad():
            self.ln.weight.fill_(1.0)
            self.ln.weight[[5, 50]] = 30.0

    def forward(self, x):
        h = self.ln(x)
        return h + self.down(torch.relu(self.up(h)))


def test_post_norm_layers_are_pre_scaled_and_reload_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    ref = PostNorm()
    plain, smooth = PostNorm(), PostNorm()
    plain.load_state_dict(ref.state_dict())
    smooth.load_state_dict(ref.state_dict())
    data = _data()
    report = lowbit.smooth_quant(smooth, data)
    assert report.groups[0].how == "pre-scaled" and isinstance(smooth.up, lowbit.nn.PreScale)
    with torch.no_grad():  # the same function before rounding (up to bf16... here fp32)
        for x in data:
            torch.testing.assert_close(smooth(x), ref(x), rtol=1e-4, atol=1e-4)
    lowbit.quantize_(plain, "int8")
    s = lowbit.quantize_(smooth, "int8")
    assert "up.inner" in s.swapped
    with torch.no_grad():
        e_plain = sum(_rel(plain(x), ref(x)) for x in data)
        e_smooth = sum(_rel(smooth(x), ref(x)) for x in data)
        want = smooth(data[0])
    assert e_smooth < 0.7 * e_plain, (e_smooth, e_plain)
    lowbit.save_quantized(smooth, str(tmp_path))
    fresh = PostNorm()
    lowbit.load_quantized(fresh, str(tmp_path))
    with torch.no_grad():
        assert torch.equal(fresh(data[0]), want)
