"""lowbit.calibrate: observers on activations with known answers, calibrate() on small models
(hooks, modes, errors), Calibration's scales and its dict round trip."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import lowbit
from lowbit.calibrate import (AbsMaxObserver, Calibration, MseObserver, PercentileObserver,
                              _fake_quant, calibrate, make_observer)

QMAX = {"fp8": 448.0, "e4m3fnuz": 240.0, "int8": 127.0}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _batches(shapes_scales, seed=0):
    g = _gen(seed)
    return [torch.randn(*shape, generator=g) * s for shape, s in shapes_scales]


def _abs64(batches) -> np.ndarray:
    return np.concatenate([b.reshape(-1).double().abs().numpy() for b in batches])


def _scale(clip: float, fmt: str) -> torch.Tensor:
    return torch.clamp_min(torch.tensor(clip, dtype=torch.float32) / QMAX[fmt], 2.0 ** -126)


def _library_fake_quant(x: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """Static per-tensor quantize, then dequantize to fp32, with the library's own ops."""
    if fmt in ("fp8", "e4m3fnuz"):
        q, _ = lowbit.quantize_fp8(x, scale, fmt="e4m3fn" if fmt == "fp8" else fmt,
                                   backend="reference")
        return lowbit.dequantize_fp8(q, scale, out_dtype=torch.float32, backend="reference")
    q, _, _ = lowbit.quantize_int8(x, scale, granularity="tensor", backend="reference")
    return lowbit.dequantize_int8(q, scale, out_dtype=torch.float32, backend="reference")


def _library_mse(x: torch.Tensor, clip: float, fmt: str) -> float:
    y = _library_fake_quant(x, _scale(clip, fmt), fmt)
    return float(np.mean((y.double().numpy() - x.double().numpy()) ** 2))


# ---------------------------------------------------------------- observers

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_absmax_accumulates_over_batches(dtype):
    batches = [b.to(dtype) for b in _batches([((4, 7), 1.0), ((3, 7), 5.0), ((9,), 0.5)])]
    obs = AbsMaxObserver()
    for b in batches:
        obs.observe(b)
    assert obs.clip() == _abs64(batches).max()
    assert obs.count == sum(b.numel() for b in batches)
    obs.observe(torch.tensor([-1024.0], dtype=dtype))  # a negative extreme counts by magnitude
    assert obs.clip() == 1024.0


@pytest.mark.parametrize("make", [AbsMaxObserver, PercentileObserver, MseObserver])
def test_clip_before_observe_and_bad_input(make):
    obs = make()
    with pytest.raises(RuntimeError, match="no activations observed"):
        obs.clip()
    obs.observe(torch.empty(0, 4))  # nothing to observe
    with pytest.raises(RuntimeError, match="no activations observed"):
        obs.clip()
    with pytest.raises(TypeError, match="x must be a floating-point"):
        obs.observe(torch.ones(3, dtype=torch.int32))
    obs.observe(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        obs.clip()


@pytest.mark.parametrize("p", [0.001, 50.0, 99.0, 99.9, 99.99, 100.0])
def test_percentile_exact_equals_numpy(p):
    batches = _batches([((5000,), 1.0), ((3001,), 3.0), ((13, 7), 0.1)])
    obs = PercentileObserver(p)
    for b in batches:
        obs.observe(b)
    assert obs.error_bound == 0.0
    assert obs.clip() == np.percentile(_abs64(batches), p)


@pytest.mark.parametrize("p", [50.0, 99.0, 99.99])
def test_percentile_histogram_within_bound(p):
    # Past max_exact the histogram takes over mid-stream; the batches' maxima grow 7x a
    # step (re-binning) after an all-zero first batch (a zero range to start from).
    batches = [torch.zeros(2000)] + _batches([((3000,), 7.0 ** i) for i in range(5)], seed=1)
    bins = 256
    obs = PercentileObserver(p, bins=bins, max_exact=4000)
    for b in batches:
        obs.observe(b)
    data = _abs64(batches)
    bound = obs.error_bound
    assert 0 < bound <= 2 * data.max() / bins
    assert abs(obs.clip() - np.percentile(data, p)) <= bound


def test_percentile_histogram_tiny_values():
    batches = _batches([((10000,), 1e-30), ((10000,), 3e-30)], seed=2)
    obs = PercentileObserver(99.0, bins=1024, max_exact=0)
    for b in batches:
        obs.observe(b)
    data = _abs64(batches)
    assert abs(obs.clip() - np.percentile(data, 99.0)) <= obs.error_bound
    assert obs.error_bound <= 2 * data.max() / 1024


def test_percentile_rejects_bad_arguments():
    for bad in (0, -1, 100.5, "99", True):
        with pytest.raises(ValueError, match="percentile must be"):
            PercentileObserver(bad)
    with pytest.raises(ValueError, match="bins must be"):
        PercentileObserver(bins=1)


@pytest.mark.parametrize("fmt", ["int8", "fp8", "e4m3fnuz"])
def test_fake_quant_is_the_library_ops_bit_for_bit(fmt):
    g = _gen(3)
    mags = 10.0 ** (torch.rand(20000, generator=g) * 14 - 10)
    x = torch.randn(20000, generator=g) * mags
    for clip in (1e-6, 0.37, 3.0, 250.0, 1e5):
        scale = _scale(clip, fmt)
        # Exact ties of the int8 rounding; the wide magnitudes overflow either format.
        ties = (torch.arange(-300, 300) + 0.5) * scale
        xs = torch.cat((x, ties))
        want = _library_fake_quant(xs, scale, fmt)
        got = _fake_quant(xs, scale, fmt)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_mse_with_outliers_clips_and_beats_absmax(fmt):
    # Two outliers among a million normal values: in int8, the step absmax / 127 rounds most
    # values to 0, so clipping the outliers costs less; fp8's relative precision makes that
    # trade rarely worth it, but the search never does worse than absmax.
    x = torch.randn(1 << 20, generator=_gen(4))
    x[:2] = 30.0
    obs = MseObserver(fmt)
    for part in x.chunk(4):
        obs.observe(part)
    c = obs.clip()
    assert 0 < c <= 30.0
    if fmt == "int8":
        assert c < 0.5 * 30.0
        assert _library_mse(x, c, fmt) < 0.5 * _library_mse(x, 30.0, fmt)
    assert _library_mse(x, c, fmt) <= _library_mse(x, 30.0, fmt)
    # The clip is the best of the grid on these values (the sample holds all of them).
    grid = [float(torch.tensor(30.0 * i / 100, dtype=torch.float32)) for i in (1, 50, 99)]
    assert all(_library_mse(x, c, fmt) <= _library_mse(x, other, fmt) for other in grid)


@pytest.mark.parametrize("fmt", ["int8", "fp8", "e4m3fnuz"])
def test_mse_on_uniform_data_is_near_absmax(fmt):
    x = torch.rand(200000, generator=_gen(5)) * 2 - 1
    obs = MseObserver(fmt)
    obs.observe(x)
    amax = float(x.abs().max())
    assert 0.95 * amax <= obs.clip() <= amax


def test_mse_all_zero_and_sampling():
    obs = MseObserver("int8")
    obs.observe(torch.zeros(10))
    assert obs.clip() == 0.0
    # Batch i holds values in [i, i + 1): a uniform sample of 1000 of the 10000 takes about
    # 100 from each batch (binomial sd 9.5), whatever the order they came in.
    g = _gen(6)
    batches = [i + torch.rand(1000, generator=g) for i in range(10)]
    obs = MseObserver("int8", max_samples=1000)
    for b in batches:
        obs.observe(b)
    sample = obs.sample
    assert sample.numel() == 1000
    assert bool(torch.isin(sample, torch.cat(batches)).all())
    shares = torch.bincount(sample.floor().long(), minlength=10)
    assert int(shares.min()) >= 60 and int(shares.max()) <= 140
    again = MseObserver("int8", max_samples=1000)
    for b in batches:
        again.observe(b)
    assert torch.equal(again.sample, sample) and again.clip() == obs.clip()
    assert obs.clip() <= float(torch.cat(batches).max())


def test_mse_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fmt must be one of"):
        MseObserver("int4")
    with pytest.raises(ValueError, match="grid must be"):
        MseObserver("int8", grid=0)
    with pytest.raises(ValueError, match="max_samples must be"):
        MseObserver("int8", max_samples=0)


def test_make_observer():
    assert type(make_observer("absmax")) is AbsMaxObserver
    p = make_observer("percentile")
    assert type(p) is PercentileObserver and p.percentile == 99.99
    m = make_observer("mse")
    assert type(m) is MseObserver and m.fmt == "int8"
    proto = PercentileObserver(99.0)
    copy = make_observer(proto)
    assert copy is not proto and copy.percentile == 99.0
    copy.observe(torch.ones(3))
    assert proto.count == 0
    assert type(make_observer(AbsMaxObserver)) is AbsMaxObserver
    assert make_observer(lambda: MseObserver("fp8")).fmt == "fp8"
    with pytest.raises(ValueError, match="observer must be one of"):
        make_observer("minmax")
    with pytest.raises(TypeError, match="observer"):
        make_observer(3)
    with pytest.raises(TypeError, match="observer"):
        make_observer(lambda: 3)


# ---------------------------------------------------------------- calibrate

def _seq():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.9), nn.Linear(16, 4))


def _no_hooks(model):
    return all(not m._forward_pre_hooks for m in model.modules() if isinstance(m, nn.Linear))


def test_calibrate_sequential():
    model = _seq()
    batches = _batches([((5, 8), 1.0), ((3, 8), 4.0), ((2, 6, 8), 0.5)])
    cal = calibrate(model, batches, progress=False)
    assert set(cal.clips) == {"0", "3"} and cal.batches == 3
    assert cal.observer == "AbsMaxObserver()"
    assert cal.clips["0"] == _abs64(batches).max()
    # Eval mode: the dropout is the identity.
    with torch.no_grad():
        hidden = [torch.relu(model[0](b)) for b in batches]
    assert cal.clips["3"] == _abs64(hidden).max()
    assert _no_hooks(model) and model.training


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.ModuleDict({"q": nn.Linear(6, 6), "o": nn.Linear(6, 6)})
        self.mlp = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6))

    def forward(self, x):
        x = x + self.attn["o"](self.attn["q"](x))
        return x + self.mlp(x)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Linear(3, 6)
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.head = nn.Linear(6, 2)
        self.unused = nn.Linear(6, 6)

    def forward(self, a, b=None):
        x = self.embed(a if b is None else a + b)
        for blk in self.blocks:
            x = blk(x)
        return self.head(input=x)  # by keyword: the hook reads it from kwargs


def _used(net):
    return [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and n != "unused"]


def test_calibrate_nested_names_and_batch_forms():
    net = _Net()
    used = _used(net)
    assert "blocks.1.attn.q" in used and "blocks.0.mlp.2" in used
    a = _batches([((4, 3), 1.0), ((4, 3), 2.0)], seed=7)
    b = _batches([((4, 3), 1.0), ((4, 3), 2.0)], seed=8)
    want = calibrate(net, [x + y for x, y in zip(a, b)], layers=used, progress=False)
    assert list(want.clips) == used
    tup = calibrate(net, list(zip(a, b)), layers=used, progress=False)
    dic = calibrate(net, [{"a": x, "b": y} for x, y in zip(a, b)], layers=used, progress=False)
    fwd = calibrate(net, [{"a": x, "b": y} for x, y in zip(a, b)], layers=used,
                    progress=False, forward=lambda m, batch: m(batch["a"], batch["b"]))
    assert tup.clips == want.clips == dic.clips == fwd.clips
    assert want.clips["embed"] == _abs64([x + y for x, y in zip(a, b)]).max()
    assert _no_hooks(net)


def test_calibrate_layers_subset_and_observer_spec():
    model = _seq()
    batches = _batches([((50, 8), 1.0)] * 3)
    cal = calibrate(model, batches, "percentile", layers=["3"], progress=True)
    assert list(cal.clips) == ["3"] and cal.observer == "PercentileObserver(percentile=99.99)"
    with torch.no_grad():
        hidden = [torch.relu(model[0](b)) for b in batches]
    assert cal.clips["3"] == np.percentile(_abs64(hidden), 99.99)
    mse = calibrate(model, batches, lambda: MseObserver("fp8", grid=20), progress=False)
    assert 0 < mse.clips["0"] <= _abs64(batches).max()


def test_calibrate_restores_flags_and_hooks_when_a_batch_raises():
    model = _seq()
    model.train()
    model[2].eval()
    seen = []
    model[3].register_forward_pre_hook(lambda m, args: seen.append(m.training))
    bad = [torch.randn(2, 8), torch.randn(2, 5)]  # the second has the wrong K
    with pytest.raises(RuntimeError):
        calibrate(model, bad, progress=False)
    assert seen == [False]  # ran in eval mode
    assert model.training and model[0].training and not model[2].training
    assert len(model[3]._forward_pre_hooks) == 1  # the test's own hook only
    assert not model[0]._forward_pre_hooks


def test_calibrate_errors():
    model = _seq()
    x = [torch.randn(2, 8)]
    with pytest.raises(ValueError, match="calibrate: batches is empty"):
        calibrate(model, [], progress=False)
    with pytest.raises(ValueError, match="calibrate: batches is empty"):
        calibrate(model, iter(()), progress=False)
    assert _no_hooks(model)
    with pytest.raises(ValueError, match="no nn.Linear"):
        calibrate(nn.Sequential(nn.ReLU()), x, progress=False)
    with pytest.raises(ValueError, match="names no layer"):
        calibrate(model, x, layers=[], progress=False)
    with pytest.raises(ValueError, match=r"does not have: \['5', 'fc'\]"):
        calibrate(model, x, layers=["0", "5", "fc"], progress=False)
    with pytest.raises(ValueError, match=r"not: \['1 \(ReLU\)'\]"):
        calibrate(model, x, layers=["1"], progress=False)
    with pytest.raises(TypeError, match="layers must be a collection"):
        calibrate(model, x, layers="0", progress=False)
    with pytest.raises(ValueError, match="observer must be one of"):
        calibrate(model, x, "max", progress=False)
    with pytest.raises(TypeError, match="model must be"):
        calibrate(lambda t: t, x, progress=False)
    with pytest.raises(TypeError, match="batches must be"):
        calibrate(model, 3, progress=False)
    net = _Net()
    with pytest.raises(ValueError, match=r"saw no input .*\['unused'\]"):
        calibrate(net, [torch.randn(2, 3)], progress=False)
    assert _no_hooks(net)
    with pytest.raises(ValueError, match="layer '0'.*NaN or Inf"):
        calibrate(model, [torch.full((2, 8), float("inf"))], progress=False)


# ---------------------------------------------------------------- Calibration

def test_scale_values_match_the_dynamic_scales():
    cases = {
        "normal": torch.randn(4, 32, generator=_gen(9)),
        "zero": torch.zeros(4, 32),
        "tiny": torch.full((4, 32), 1e-40),  # absmax / 448 is below the 2**-126 floor
        "bf16": (torch.randn(4, 32, generator=_gen(10)) * 300).to(torch.bfloat16),
    }
    for name, x in cases.items():
        cal = calibrate(nn.Linear(32, 2).to(x.dtype), [x], progress=False)
        clip = cal.clips[""]
        fp8, int8 = cal.scale("", "fp8"), cal.scale("", "int8")
        assert fp8.dtype == torch.float32 and fp8.shape == ()
        _, dyn = lowbit.quantize_fp8(x, granularity="tensor", backend="reference")
        assert torch.equal(fp8, dyn), name
        assert torch.equal(cal.scale("", "e4m3fn"), fp8)  # the format's own name
        _, dyn = lowbit.quantize_fp8(x, fmt="e4m3fnuz", granularity="tensor",
                                     backend="reference")
        assert torch.equal(cal.scale("", "e4m3fnuz"), dyn), name
        _, dyn, _ = lowbit.quantize_int8(x, granularity="tensor", backend="reference")
        assert torch.equal(int8, dyn), name
        if name == "normal":
            assert float(fp8) == np.float32(np.float32(clip) / np.float32(448))
            assert float(int8) == np.float32(np.float32(clip) / np.float32(127))
        if name == "zero":
            assert clip == 0 and float(fp8) == float(int8) == 1.0
    cal = Calibration({"a": 2.0}, "absmax", 1)
    with pytest.raises(ValueError, match="fmt must be one of"):
        cal.scale("a", "int4")
    with pytest.raises(ValueError, match="name 'b' is not a calibrated layer"):
        cal.scale("b", "fp8")


def test_calibration_dict_round_trip():
    cal = calibrate(_seq(), _batches([((7, 8), 1.7)]), "mse", progress=False)
    text = json.dumps(cal.to_dict())
    back = Calibration.from_dict(json.loads(text))
    assert back == cal
    assert torch.equal(back.scale("3", "int8"), cal.scale("3", "int8"))
    with pytest.raises(ValueError, match="lacks \\['batches'\\]"):
        Calibration.from_dict({"clips": {}, "observer": "x"})
    with pytest.raises(ValueError, match=r"clips\['a'\] must be a finite float"):
        Calibration.from_dict({"clips": {"a": -1.0}, "observer": "x", "batches": 1})
    with pytest.raises(ValueError, match=r"clips\['a'\] must be a finite float"):
        Calibration({"a": float("nan")}, "x", 1)
    with pytest.raises(ValueError, match="batches must be"):
        Calibration({}, "x", -1)


def test_calibrate_an_attention_layer():
    # nn.MultiheadAttention reads its out_proj's weight without calling it: calibrate takes
    # the layers quantize_ swaps, nn.Linear itself.
    m = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True).eval()
    cal = lowbit.calibrate(m, [torch.randn(2, 8, 64)])
    assert sorted(cal.clips) == ["linear1", "linear2"]
