"""lowbit.nn.Int4Linear: construction, accuracy against nn.Linear, the op step by step,
state_dict through config() (act-order perm included), errors, compile.

Error bound (relative Frobenius against the float64 product of the unquantized layer), from
the rounding error of a uniform quantizer, step / sqrt(12) per element. nn.Linear's weights
are uniform in [-a, a] (rms a / sqrt(3)) and a group's absmax is close to a at any G, so
symmetric int4 (step a / 7) costs 1 / 14 = 0.071 and asymmetric (step 2a / 15) 1 / 15 =
0.067, the same for G = 32 and 128 (measured 0.070-0.074 over 10 seeds, bf16, fp16 and
fp32): held to 0.09. The activations are not quantized.
"""
import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn import Int4Linear
from lowbit_testing import rel_frobenius
# The layer, input and error helpers of the quantized-Linear tests (K = 256, N = 96).
from test_int8_linear import DTYPES, K, N, _err, _linear, _x


def _op(mod: Int4Linear, x):
    """The forward as the public op computes it."""
    w = lowbit.Int4Weight(mod.qweight, mod.scales, mod.zeros, mod.group_size, mod.perm)
    return lowbit.w4a16_gemm(x.reshape(-1, K), w, mod.bias).reshape(*x.shape[:-1], N)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("group_size,symmetric,bias", [
    (128, True, True), (32, True, False), (64, False, True), (-1, False, True)],
    ids=["g128", "g32-nobias", "g64-asym", "channel-asym"])
def test_close_to_linear_and_equal_to_op(group_size, symmetric, bias, dtype):
    lin = _linear(bias, dtype)
    mod = Int4Linear.from_linear(lin, group_size=group_size, symmetric=symmetric)
    x = _x(3, 5, dtype=dtype)
    y = mod(x)
    assert y.shape == (3, 5, N) and y.dtype == dtype
    assert _err(y, lin, x) < 0.09
    assert torch.equal(y, _op(mod, x))
    # The buffers are int4_quantize's canonical weight, quantized once.
    want = lowbit.int4_quantize(lin.weight.detach(), group_size=group_size, symmetric=symmetric)
    assert mod.qweight.dtype == torch.uint8 and mod.qweight.shape == (N, K // 2)
    assert torch.equal(mod.qweight, want.qweight)
    assert mod.scales.dtype == want.scales.dtype == dtype
    g = K if group_size == -1 else group_size  # -1: per channel, held as one group of K
    assert mod.group_size == want.group_size == g
    assert mod.scales.shape == (N, K // g) and torch.equal(mod.scales, want.scales)
    if symmetric:
        assert mod.zeros is None
    else:
        assert mod.zeros.dtype == torch.uint8 and torch.equal(mod.zeros, want.zeros)
    assert mod.perm is None
    w = mod.weight_int4()
    assert isinstance(w, lowbit.Int4Weight) and w.qweight is mod.qweight and w.shape == (N, K)
    assert (mod.bias is None) == (not bias)
    if bias:
        assert isinstance(mod.bias, nn.Parameter) and not mod.bias.requires_grad
        assert mod.bias.dtype == dtype and torch.equal(mod.bias, lin.bias)


def test_fp32_computes_in_fp32():
    """w4a16_gemm takes fp32 activations too: an fp32 model stays fp32 (scales fp32)."""
    lin = _linear(dtype=torch.float32)
    mod = Int4Linear.from_linear(lin)
    assert mod.scales.dtype == torch.float32 and mod.dtype == torch.float32
    x = _x(2, 7, dtype=torch.float32)
    y = mod(x)
    assert y.dtype == torch.float32 and torch.equal(y, _op(mod, x))
    assert _err(y, lin, x) < 0.09
    # fp32 activations through a bf16 layer come out fp32, not rounded to bf16.
    bf = Int4Linear.from_linear(_linear())
    y = bf(x)
    assert y.dtype == torch.float32 and torch.equal(y, _op(bf, x))
    assert not torch.equal(y, y.to(torch.bfloat16).float())


def test_empty_batch():
    mod = Int4Linear.from_linear(_linear())
    assert mod(_x(0)).shape == (0, N)


@pytest.mark.parametrize("symmetric,bias", [(True, True), (False, False)], ids=["sym", "asym"])
def test_state_dict_round_trip_through_config(tmp_path, symmetric, bias):
    lin = _linear(bias, torch.float16)
    mod = Int4Linear.from_linear(lin, group_size=64, symmetric=symmetric)
    cfg = mod.config()
    assert cfg == {"in_features": K, "out_features": N, "bias": bias, "group_size": 64,
                   "symmetric": symmetric, "dtype": "float16"}
    path = tmp_path / "m.pt"
    torch.save(mod.state_dict(), path)
    fresh = Int4Linear(**cfg)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert fresh.config() == cfg
    x = _x(4, dtype=torch.float16)
    assert torch.equal(fresh(x), mod(x))
    assert not torch.equal(Int4Linear(**cfg)(x), mod(x))


def test_act_order_perm():
    """A GPTQ act-order weight (perm set) computes x[:, perm] @ W.T and survives a
    state_dict round trip into the module its config() builds."""
    lin = _linear()
    mod = Int4Linear.from_linear(lin, symmetric=False)
    x = _x(5)
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(2))
    mod.perm = perm
    assert "act-order" in repr(mod)
    y = mod(x)
    assert torch.equal(y, _op(mod, x))
    w = lowbit.Int4Weight(mod.qweight, mod.scales, mod.zeros, 128).dequantize(torch.float64)
    want = x[:, perm].double() @ w.T + lin.bias.detach().double()
    assert rel_frobenius(y.double(), want) < 1e-2
    fresh = Int4Linear(**mod.config())
    fresh.load_state_dict(mod.state_dict())
    assert torch.equal(fresh.perm, perm) and torch.equal(fresh(x), y)


def test_bad_inputs():
    with pytest.raises(TypeError, match="linear must be an nn.Linear; got Conv1d"):
        Int4Linear.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match=r"Int4Linear: group_size must be one of \(32, 64, 128\) "
                                         r"or in_features \(per channel, a multiple of 32\); "
                                         r"got 100"):
        Int4Linear(256, 8, group_size=100)
    with pytest.raises(ValueError, match="Int4Linear: in_features = 192 must be divisible by "
                                         "group_size = 128"):
        Int4Linear.from_linear(nn.Linear(192, 8))
    with pytest.raises(TypeError, match="Int4Linear: dtype must be one of"):
        Int4Linear(256, 8, dtype="float64")
    mod = Int4Linear.from_linear(_linear())
    for bad in (_x(2)[:, :255], torch.tensor(1.0, dtype=torch.bfloat16)):
        with pytest.raises(ValueError, match="Int4Linear: x must have last dimension "
                                             "in_features = 256; got shape"):
            mod(bad)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_compile_fullgraph(symmetric):
    mod = Int4Linear.from_linear(_linear(), symmetric=symmetric)
    x = _x(2, 3)
    compiled = torch.compile(mod, fullgraph=True)
    assert torch.equal(compiled(x), mod(x))


def test_extra_repr():
    r = repr(Int4Linear.from_linear(_linear(bias=False), group_size=32))
    assert "in_features=256, out_features=96, bias=False, group_size=32, symmetric" in r


def test_prepacked_module_runs_and_saves_canonical():
    """Int4Linear in the CUDA kernels' layout computes what the canonical one does, saves the
    canonical layout, and loads a canonical checkpoint into a prepacked module."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 48, dtype=torch.bfloat16)
    a = Int4Linear.from_linear(lin, group_size=64, symmetric=False, prepack=False)
    b = Int4Linear.from_linear(lin, group_size=64, symmetric=False, prepack=True)
    assert a.layout == "canonical" and b.layout != "canonical" and b.qweight.dim() == 4
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    assert torch.equal(a(x), b(x))
    sd = b.state_dict()
    assert torch.equal(sd["qweight"], a.qweight)
    c = Int4Linear(**b.config()).prepack()
    c.load_state_dict(sd)
    assert torch.equal(c.qweight, b.qweight) and torch.equal(c(x), a(x))
    assert torch.equal(b.unpack().qweight, a.qweight) and b.layout == "canonical"
