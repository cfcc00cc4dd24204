"""lowbit.nn.Int8Linear: construction, accuracy against nn.Linear, the ops step by step,
state_dict through config(), errors, compile.

Error bounds (relative Frobenius against the float64 product of the unquantized layer), from
the rounding error of a uniform quantizer, step / sqrt(12) per element. nn.Linear's weights
are uniform in [-a, a] (rms a / sqrt(3)) and a row's absmax is about a, so the per-channel
int8 weight (step a / 127) alone costs 1 / 254 = 0.0039 (measured 0.0040-0.0049 over 10
seeds: w8a16 is held to 0.008). Per-token int8 activations of N(0, 1) rows of 256 (absmax
about 2.9) add 2.9 / 127 / sqrt(12) = 0.0066: 0.0077 together (measured at most 0.0084:
held to 0.015). One static scale over the whole batch (absmax about 3.9) makes it 0.0097
(measured at most 0.0117: held to 0.02).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.backends.cuda import FUSED_LINEAR
from lowbit.backends.cuda import linear as cuda_linear
from lowbit.nn import Int8Linear
from lowbit_testing import rel_frobenius

# Shared with test_int4_linear.py: the layer, input and error helpers below.
K, N = 256, 96
DTYPES = [torch.bfloat16, torch.float16]


def _linear(bias=True, dtype=torch.bfloat16, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(K, N, bias=bias).to(dtype=dtype)


def _x(*lead, dtype=torch.bfloat16, seed=1):
    return torch.randn(*lead, K, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _err(y, lin, x):
    """Relative Frobenius error of y against the unquantized layer in float64."""
    b = None if lin.bias is None else lin.bias.detach().double()
    return rel_frobenius(y.double(), F.linear(x.double(), lin.weight.detach().double(), b))


def _ops(mod: Int8Linear, x):
    """The forward as the public ops compute it, step by step."""
    x2 = x.reshape(-1, mod.in_features)
    if mod.mode == "w8a16":
        y = lowbit.w8a16_gemm(x2, mod.weight, mod.weight_scale, mod.bias)
    else:
        gran = "tensor" if mod.act_scale is not None else "token"
        q, s, z = lowbit.quantize_int8(x2, mod.act_scale, zero=mod.act_zero, granularity=gran,
                                       symmetric=mod.act_symmetric)
        assert (z is None) == mod.act_symmetric
        y = lowbit.int8_gemm(q, mod.weight, s, mod.weight_scale, mod.bias, out_dtype=x.dtype,
                             a_zero=z)
    return y.reshape(*x.shape[:-1], mod.out_features)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("bias", [True, False])
def test_w8a8_close_to_linear_and_equal_to_ops(bias, dtype):
    lin = _linear(bias, dtype)
    mod = Int8Linear.from_linear(lin)
    x = _x(3, 5, dtype=dtype)
    y = mod(x)
    assert y.shape == (3, 5, N) and y.dtype == dtype
    assert _err(y, lin, x) < 0.015
    assert torch.equal(y, _ops(mod, x))
    # The weight was quantized once, symmetric, one scale per output channel.
    q, s, _ = lowbit.quantize_int8(lin.weight.detach(), granularity="channel")
    assert mod.weight.dtype == torch.int8 and torch.equal(mod.weight, q)
    assert mod.weight_scale.shape == (N, 1) and torch.equal(mod.weight_scale, s)
    assert mod.act_scale is None
    assert (mod.bias is None) == (not bias)
    if bias:
        assert isinstance(mod.bias, nn.Parameter) and not mod.bias.requires_grad
        assert mod.bias.dtype == dtype and torch.equal(mod.bias, lin.bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_static_act_scale(dtype):
    lin = _linear(dtype=dtype)
    x = _x(3, 5, dtype=dtype)
    amax = x.abs().amax().float()
    mod = Int8Linear.from_linear(lin, act_scale=amax / 127)
    assert mod.act_scale.shape == () and mod.act_scale.dtype == torch.float32
    assert mod.act_scale == amax / 127
    y = mod(x)
    assert _err(y, lin, x) < 0.02
    assert torch.equal(y, _ops(mod, x))
    # The static scale is the one used: another scale gives other numbers.
    mod.act_scale.mul_(2)
    assert not torch.equal(mod(x), y)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_asymmetric_activations(static):
    """Asymmetric activations spend the 8 bits on the range the input uses: on a one-sided
    (post-GELU) input they beat symmetric ones, and the forward is the ops' composition."""
    lin = _linear()
    x = F.gelu(_x(3, 5).float()).to(torch.bfloat16)
    kw = {}
    if static:
        lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
        scale = torch.tensor((hi - lo) / 255, dtype=torch.float32)
        kw = dict(act_scale=scale, act_zero=torch.round(-128 - lo / scale).int())
    mod = Int8Linear.from_linear(lin, act_symmetric=False, **kw)
    assert mod.act_symmetric is False and (mod.act_zero is not None) == static
    y = mod(x)
    assert torch.equal(y, _ops(mod, x))
    sym = Int8Linear.from_linear(lin, act_scale=x.abs().amax().float() / 127 if static else None)
    assert _err(y, lin, x) < _err(sym(x), lin, x)
    assert _err(y, lin, x) < 0.015
    cfg = mod.config()
    assert cfg["act_symmetric"] is False
    fresh = Int8Linear(**cfg)
    fresh.load_state_dict(mod.state_dict())
    assert torch.equal(fresh(x), y)
    assert "asymmetric" in repr(mod)
    # The registered op computes the same.
    assert torch.equal(lowbit.int8_linear(x, mod.weight, mod.weight_scale, mod.bias,
                                          mod.act_scale, mod.act_zero, act_symmetric=False), y)


def test_asymmetric_argument_errors():
    lin = _linear()
    with pytest.raises(ValueError, match="act_zero is required"):
        Int8Linear.from_linear(lin, act_scale=torch.tensor(0.1), act_symmetric=False)
    with pytest.raises(ValueError, match="act_zero goes with"):
        Int8Linear.from_linear(lin, act_zero=torch.tensor(3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"act_zero must be one integer in \[-128, 127\]"):
        Int8Linear.from_linear(lin, act_scale=torch.tensor(0.1), act_symmetric=False,
                               act_zero=torch.tensor(300))
    mod = Int8Linear.from_linear(lin)
    with pytest.raises(ValueError, match="int8_linear: act_zero goes with a static act_scale"):
        lowbit.int8_linear(_x(2), mod.weight, mod.weight_scale, None, None,
                           torch.tensor(1, dtype=torch.int32), act_symmetric=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_w8a16(dtype):
    lin = _linear(dtype=dtype)
    mod = Int8Linear.from_linear(lin, mode="w8a16")
    x = _x(3, 5, dtype=dtype)
    y = mod(x)
    assert y.shape == (3, 5, N) and y.dtype == dtype
    assert _err(y, lin, x) < 0.008
    assert torch.equal(y, _ops(mod, x))


def test_fp32_layer_and_activations():
    lin = _linear(dtype=torch.float32)
    for mode in ("w8a8", "w8a16"):
        mod = Int8Linear.from_linear(lin, mode=mode)
        assert mod.bias.dtype == torch.float32 and mod.dtype == torch.float32
        x = _x(7, dtype=torch.float32)
        y = mod(x)
        assert y.dtype == torch.float32 and torch.equal(y, _ops(mod, x))
    # bf16 activations through an fp32 layer come out bf16.
    xb = _x(7)
    assert mod(xb).dtype == torch.bfloat16 and torch.equal(mod(xb), _ops(mod, xb))


def test_empty_batch():
    mod = Int8Linear.from_linear(_linear())
    assert mod(_x(0)).shape == (0, N)


@pytest.mark.parametrize("mode,static,bias", [
    ("w8a8", False, True), ("w8a8", True, False), ("w8a16", False, True)])
def test_state_dict_round_trip_through_config(tmp_path, mode, static, bias):
    lin = _linear(bias, torch.float16)
    mod = Int8Linear.from_linear(lin, mode=mode, act_scale=torch.tensor(0.02) if static else None)
    cfg = mod.config()
    assert cfg == {"in_features": K, "out_features": N, "bias": bias, "mode": mode,
                   "static_act_scale": static, "act_symmetric": True, "dtype": "float16"}
    path = tmp_path / "m.pt"
    torch.save(mod.state_dict(), path)
    fresh = Int8Linear(**cfg)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert fresh.dtype == torch.float16 and fresh.config() == cfg
    x = _x(4, dtype=torch.float16)
    assert torch.equal(fresh(x), mod(x))
    # The empty module is not already the quantized one.
    assert not torch.equal(Int8Linear(**cfg)(x), mod(x))


def test_bad_inputs():
    with pytest.raises(TypeError, match="linear must be an nn.Linear; got Conv1d"):
        Int8Linear.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match=r"mode must be one of \('w8a8', 'w8a16'\); got 'w4a4'"):
        Int8Linear(4, 4, mode="w4a4")
    with pytest.raises(ValueError, match="mode must be one of"):
        Int8Linear.from_linear(_linear(), mode="int8")
    with pytest.raises(ValueError, match=r"act_scale must be a scalar; got shape \(2,\)"):
        Int8Linear.from_linear(_linear(), act_scale=torch.ones(2))
    with pytest.raises(TypeError, match="Int8Linear: dtype must be one of"):
        Int8Linear(4, 4, dtype=torch.int8)
    mod = Int8Linear.from_linear(_linear())
    for bad in (_x(2)[:, :255], torch.tensor(1.0, dtype=torch.bfloat16)):
        with pytest.raises(ValueError, match="Int8Linear: x must have last dimension "
                                             "in_features = 256; got shape"):
            mod(bad)
    # A 1-element act_scale of any shape is a scalar.
    one = Int8Linear.from_linear(_linear(), act_scale=torch.full((1, 1), 0.02))
    assert one.act_scale.shape == ()


@pytest.mark.parametrize("mode,static,sym", [("w8a8", False, True), ("w8a8", True, True),
                                             ("w8a8", False, False), ("w8a16", False, True)],
                         ids=["dynamic", "static", "asymmetric", "w8a16"])
def test_compile_fullgraph(mode, static, sym):
    x = _x(2, 3)
    mod = Int8Linear.from_linear(_linear(), mode=mode, act_symmetric=sym,
                                 act_scale=x.abs().amax().float() / 127 if static else None)
    compiled = torch.compile(mod, fullgraph=True)
    assert torch.equal(compiled(x), mod(x))


def test_extra_repr():
    r = repr(Int8Linear.from_linear(_linear(), act_scale=torch.tensor(0.02)))
    assert "in_features=256, out_features=96, bias=True, mode=w8a8" in r
    assert "activations=static per-tensor" in r


@pytest.mark.gpu
@pytest.mark.parametrize("arch", [None, "80"], ids=["native", "sm80"])
@pytest.mark.parametrize("shape,k,n,bias,dtype,act", [
    ((1, 4096), 4096, 1024, False, torch.bfloat16, "dynamic"),       # decode: swap-AB / split-K
    ((2, 3, 512), 512, 384, True, torch.bfloat16, "asymmetric"),     # 3-D input, zero points
    ((300, 256), 256, 200, True, torch.float16, "static"),           # tiled GEMM, ragged N
    ((65, 128), 128, 136, False, torch.float32, "static-asymmetric"),
], ids=["m1", "3d-asym", "m300-static", "fp32-static-asym"])
def test_fused_cuda_step_matches_the_ops(monkeypatch, python_step, arch, shape, k, n, bias,
                                         dtype, act):
    """On CUDA kernels a prepared forward is one fused launch (quantize + GEMM through a
    workspace): the same kernels as the two op calls, so the same bits; the weight's row
    sums (asymmetric activations) follow in-place writes to the weight."""
    if arch is not None:
        monkeypatch.setenv("LOWBIT_ARCH", arch)
    torch.manual_seed(3)
    lin = nn.Linear(k, n, bias=bias).to("cuda", dtype)
    x = F.gelu(torch.randn(*shape, device="cuda")).to(dtype)
    sym = "asym" not in act
    kw = {}
    if act.startswith("static"):
        if sym:
            kw = dict(act_scale=x.abs().amax().float() / 127)
        else:
            lo, hi = x.float().min().clamp(max=0), x.float().max().clamp(min=0)
            s = (hi - lo) / 255
            kw = dict(act_scale=s, act_zero=torch.round(-128 - lo / s).int())
    mod = Int8Linear.from_linear(lin, act_symmetric=sym, **kw)
    first = mod(x)
    step = mod._step.run
    fused = FUSED_LINEAR["int8_linear"][0]
    if (arch is None and sym and shape[0] <= 64 and dtype != torch.float32
            and torch.cuda.get_device_capability() == (9, 0) and cuda_linear.fused_enabled()):
        # sm_90a: one kernel, the quantizer in the swap-AB GEMM's prologue
        assert step.__name__ == fused
    else:
        assert "+" in step.__name__, "a CUDA forward runs the two chosen kernels in one call"
    assert torch.equal(first, _ops(mod, x))
    assert torch.equal(mod(x), first)
    # An in-place write to the weight: the same module tensors, new values.
    with torch.no_grad():
        mod.weight.neg_()
    again = mod(x)
    assert mod._step.run is step
    assert torch.equal(again, _ops(mod, x)) and not torch.equal(again, first)


@pytest.mark.gpu
def test_int8_linear_compiled_matches_eager_on_gpu():
    lin = nn.Linear(512, 384).to("cuda", torch.bfloat16)
    x = torch.randn(7, 512, dtype=torch.bfloat16, device="cuda")
    for sym in (True, False):
        mod = Int8Linear.from_linear(lin, act_symmetric=sym)
        eager = mod(x)
        compiled = torch.compile(mod, fullgraph=True)
        assert torch.equal(compiled(x), eager) and torch.equal(mod(x), eager)
