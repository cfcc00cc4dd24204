"""lowbit.awq: the function is unchanged, and int4 gets better where activations are uneven."""
import pytest
import torch
from torch import nn

import lowbit
from lowbit.awq import awq_factors


class Block(nn.Module):
    """Pre-norm MLP whose norm makes some input channels much larger than others."""

    def __init__(self, d=128, f=256):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, f), nn.Linear(f, d)
        with torch.no_grad():
            self.norm.weight.copy_(torch.logspace(-1, 1, d)[torch.randperm(d)])

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.norm(x))))


def _data(n=4):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(32, 128, generator=g) for _ in range(n)]


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_function_unchanged_before_rounding():
    torch.manual_seed(0)
    m = Block().double()
    data = [x.double() for x in _data()]
    want = [m(x) for x in data]
    report = lowbit.awq(m, data, group_size=32, grid=10)
    up, down = report.groups
    assert up.linears == ["up"] and up.how == "folded into norm"
    assert up.error_after < up.error_before
    assert down.producer is None and down.error_after <= down.error_before
    assert (down.how == "pre-scaled") == isinstance(m.down, lowbit.nn.PreScale)
    for x, y in zip(data, want):
        torch.testing.assert_close(m(x), y, rtol=1e-10, atol=1e-10)


def test_awq_int4_beats_round_to_nearest():
    torch.manual_seed(0)
    ref = Block()
    rtn, aw = Block(), Block()
    rtn.load_state_dict(ref.state_dict())
    aw.load_state_dict(ref.state_dict())
    data = _data()
    lowbit.awq(aw, data, group_size=32)
    lowbit.quantize_(rtn, "int4", group_size=32)
    lowbit.quantize_(aw, "int4", group_size=32)
    with torch.no_grad():
        e_rtn = sum(_rel(rtn(x), ref(x)) for x in data)
        e_awq = sum(_rel(aw(x), ref(x)) for x in data)
    assert e_awq < e_rtn, (e_awq, e_rtn)


def test_factors_and_errors():
    s = awq_factors(torch.tensor([1.0, 4.0, 0.0]), 0.5)  # raw 1, 2: normalized by sqrt(2)
    torch.testing.assert_close(s, torch.tensor([2 ** -0.5, 2 ** 0.5, 1.0], dtype=torch.float64))
    assert torch.equal(awq_factors(torch.tensor([3.0, 5.0]), 0.0), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="group_size"):
        lowbit.awq(Block(), _data(), group_size=48)
    with pytest.raises(ValueError, match="grid"):
        lowbit.awq(Block(), _data(), grid=0)
    with pytest.raises(ValueError, match="empty"):
        lowbit.awq(Block(), [])
