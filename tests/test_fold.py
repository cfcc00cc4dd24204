"""lowbit.fold: which Linears read one tensor, whose output it is, and folding a factor."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.fold import fold_input_scale, input_groups


class RMSNorm(nn.Module):  # a Llama-style RMSNorm (class name ending in RMSNorm)
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class PreNorm(nn.Module):
    """x + attn(norm1(x)); x + mlp(norm2(x)): each norm's output is read by its Linears only."""

    def __init__(self, d=32, f=64):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.gate, self.up = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
        self.down = nn.Linear(f, d)
        self.proj_in, self.proj_a, self.proj_b = nn.Linear(d, d), nn.Linear(d, 8), nn.Linear(d, 8)
        with torch.no_grad():
            self.norm1.weight.uniform_(0.5, 1.5)
            self.norm1.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        h = self.norm1(x)
        a = F.scaled_dot_product_attention(self.q(h)[None], self.k(h)[None], self.v(h)[None])[0]
        x = x + self.o(a)
        h = self.norm2(x)
        x = x + self.down(F.silu(self.gate(h)) * self.up(h))
        p = self.proj_in(x)  # a Linear whose output only two Linears read
        return x, self.proj_a(p) + self.proj_b(p)


class PostNorm(nn.Module):
    """BERT-style: the norm's output is both the next Linear's input and the residual."""

    def __init__(self, d=32):
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(d, d), nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x):
        h = self.ln(x + self.fc1(x))
        return self.ln(h + self.fc2(h))


def _groups(model, x):
    return {tuple(g.linears): g for g in input_groups(model, x)}


def test_groups_and_producers_of_a_pre_norm_block():
    torch.manual_seed(0)
    m = PreNorm().double()
    g = _groups(m, torch.randn(5, 32, dtype=torch.float64))
    assert (g[("q", "k", "v")].producer, g[("q", "k", "v")].kind) == ("norm1", "norm")
    assert (g[("gate", "up")].producer, g[("gate", "up")].kind) == ("norm2", "norm")
    assert (g[("proj_a", "proj_b")].producer, g[("proj_a", "proj_b")].kind) == ("proj_in", "linear")
    for names in (("o",), ("down",), ("proj_in",)):
        assert g[names].producer is None and g[names].why


def test_folding_keeps_the_function():
    torch.manual_seed(0)
    m = PreNorm().double()
    x = torch.randn(5, 32, dtype=torch.float64)
    want = m(x)
    q_before = m.q.weight.clone()
    for g in input_groups(m, x):
        if g.producer is not None:
            fold_input_scale(m, g, torch.rand(32, dtype=torch.float64) * 4 + 0.1)
    got = m(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.equal(m.q.weight, q_before)  # the weights did change


def test_a_residual_reader_blocks_the_fold():
    m = PostNorm()
    g = _groups(m, torch.randn(3, 32))
    assert g[("fc2",)].producer is None and "also read" in g[("fc2",)].why
    with pytest.raises(ValueError, match="no foldable producer"):
        fold_input_scale(m, g[("fc2",)], torch.ones(32))


def test_errors():
    m = PreNorm()
    g = _groups(m, torch.randn(2, 32))[("q", "k", "v")]
    for bad in (torch.zeros(32), -torch.ones(32), torch.ones(31), torch.ones(2, 16)):
        with pytest.raises(ValueError):
            fold_input_scale(m, g, bad)
    with pytest.raises(ValueError, match="no nn.Linear"):
        input_groups(nn.Sequential(nn.ReLU()), torch.randn(2))

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(ValueError, match="did not reach b"):
        input_groups(Skips(), torch.randn(2, 4))
