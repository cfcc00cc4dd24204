"""lowbit.quantize_, save_quantized and load_quantized on small models (CPU, reference)."""
import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn import Fp8Linear
from lowbit_testing import tiny_llama


class Block(nn.Module):
    def __init__(self, d=64, f=128):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, f), nn.Linear(f, d, bias=False)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.norm(x))))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 64)
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.head = nn.Linear(64, 50, bias=False)
        self.head.weight = self.embed.weight  # tied, as language models do

    def forward(self, ids):
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def _model(dtype=torch.bfloat16):
    return Tiny().to(dtype).eval()


IDS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
LINEARS = ["blocks.0.up", "blocks.0.down", "blocks.1.up", "blocks.1.down", "head"]


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(),
                                                 dim=0).item()


def test_fp8_swaps_every_linear_and_stays_close():
    ref = _model()
    model = _model()
    summary = lowbit.quantize_(model, "fp8")
    assert summary.swapped == LINEARS and not summary.skipped
    assert all(isinstance(model.get_submodule(n), Fp8Linear) for n in LINEARS)
    assert summary.bytes_after < summary.bytes_before
    with torch.no_grad():
        assert _cos(model(IDS), ref(IDS)) > 0.99
    text = str(summary)
    assert "5 of 5 Linear layers swapped" in text


def test_filter_by_name_pattern_type_and_callable():
    for flt, kept in [("head", ["head"]), ("blocks.1", ["blocks.1.up", "blocks.1.down"]),
                      ("*.down", ["blocks.0.down", "blocks.1.down"]), (Block, LINEARS[:4]),
                      (["head", "blocks.0.up"], ["blocks.0.up", "head"]),
                      (lambda name, m: m.out_features == 64, ["blocks.0.down", "blocks.1.down"])]:
        model = _model()
        s = lowbit.quantize_(model, "fp8", filter=flt)
        assert sorted(s.skipped) == sorted(kept), flt
        assert all(why == "excluded by filter" for why in s.skipped.values())
        assert sorted(s.swapped) == sorted(set(LINEARS) - set(kept))
        for n in kept:
            assert type(model.get_submodule(n)) is nn.Linear


def test_weight_only_fp8_and_calibrated_scales():
    model = _model()
    s = lowbit.quantize_(model, "fp8-w8a16")
    assert all(model.get_submodule(n).mode == "w8a16" for n in s.swapped)

    class Cal:  # what lowbit.calibrate returns, as far as quantize_ reads it
        clips = {n: 2.0 + i for i, n in enumerate(LINEARS)}

        def scale(self, name, fmt):
            assert fmt == "fp8"
            return torch.tensor(self.clips[name] / 448)

    model = _model()
    lowbit.quantize_(model, "fp8", calibration=Cal())
    for i, n in enumerate(LINEARS):
        assert model.get_submodule(n).act_scale.item() == pytest.approx((2.0 + i) / 448)
    del Cal.clips["head"]
    with pytest.raises(ValueError, match="head"):
        lowbit.quantize_(_model(), "fp8", calibration=Cal())
    # The weight-only schemes take no calibration.
    with pytest.raises(ValueError, match="calibration"):
        lowbit.quantize_(_model(), "fp8-w8a16", calibration=Cal())


def test_bad_arguments():
    with pytest.raises(ValueError, match="scheme"):
        lowbit.quantize_(_model(), "fp4")
    with pytest.raises(TypeError, match="model"):
        lowbit.quantize_(torch.zeros(3), "fp8")
    with pytest.raises(ValueError, match="no nn.Linear"):
        lowbit.quantize_(nn.Sequential(nn.ReLU()), "fp8")
    with pytest.raises(TypeError, match="filter"):
        lowbit.quantize_(_model(), "fp8", filter=[3])


def test_save_and_load_are_bit_identical(tmp_path):
    model = _model()
    lowbit.quantize_(model, "fp8", filter="head")
    with torch.no_grad():
        want = model(IDS)
    lowbit.save_quantized(model, str(tmp_path))
    fresh = Tiny().to(torch.bfloat16).eval()  # the architecture, other weights
    torch.manual_seed(5)
    for p in fresh.parameters():
        nn.init.normal_(p)
    lowbit.load_quantized(fresh, str(tmp_path))
    assert isinstance(fresh.blocks[0].up, Fp8Linear) and type(fresh.head) is nn.Linear
    with torch.no_grad():
        assert torch.equal(fresh(IDS), want)
    assert fresh.head.weight is fresh.embed.weight or torch.equal(fresh.head.weight,
                                                                   fresh.embed.weight)


def test_save_and_load_errors(tmp_path):
    with pytest.raises(ValueError, match="no lowbit module"):
        lowbit.save_quantized(_model(), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="lowbit.json"):
        lowbit.load_quantized(_model(), str(tmp_path / "missing"))
    model = _model()
    lowbit.quantize_(model, "fp8")
    lowbit.save_quantized(model, str(tmp_path))
    with pytest.raises(ValueError, match="no module"):
        lowbit.load_quantized(nn.Sequential(nn.Linear(64, 64)), str(tmp_path))


@pytest.mark.parametrize("scheme,cls_name,cosine", [
    ("int8", "Int8Linear", 0.99), ("w8a16", "Int8Linear", 0.999), ("int4", "Int4Linear", 0.95)])
def test_int_schemes_swap_save_and_load(tmp_path, scheme, cls_name, cosine):
    ref = _model()
    model = _model()
    s = lowbit.quantize_(model, scheme, group_size=32)
    assert s.swapped == LINEARS
    assert all(type(model.get_submodule(n)).__name__ == cls_name for n in LINEARS)
    with torch.no_grad():
        want = model(IDS)
        assert _cos(want, ref(IDS)) > cosine
    lowbit.save_quantized(model, str(tmp_path))
    fresh = _model()
    lowbit.load_quantized(fresh, str(tmp_path))
    with torch.no_grad():
        assert torch.equal(fresh(IDS), want)


def test_int4_keeps_layers_whose_k_the_group_does_not_divide():
    model = _model()
    s = lowbit.quantize_(model, "int4", group_size=128)  # every K here is 64 or 128
    assert s.swapped == ["blocks.0.down", "blocks.1.down"]
    assert all("not a multiple of group_size = 128" in why for why in s.skipped.values())
    with pytest.raises(ValueError, match="group_size"):
        lowbit.quantize_(_model(), "int4", group_size=48)


def test_a_layer_no_kernel_runs_is_kept_and_says_why(monkeypatch):
    """What quantize_ does on a device where the scheme's ops have no kernel (INT8 on a GPU
    today), shown on the CPU by making the trial forward raise as auto does there."""
    from lowbit.nn import Int8Linear

    def no_kernel(self, x):
        raise NotImplementedError("lowbit.int8_gemm: no CUDA or Triton kernel runs these inputs")

    monkeypatch.setattr(Int8Linear, "forward", no_kernel)
    model = _model()
    s = lowbit.quantize_(model, "int8")
    assert not s.swapped and all("no CUDA or Triton kernel" in w for w in s.skipped.values())
    assert all(type(model.get_submodule(n)) is nn.Linear for n in LINEARS)
    s = lowbit.quantize_(model, "int8", check_device=False)
    assert s.swapped == LINEARS


@pytest.mark.parametrize("scheme,fmt", [("fp8", "fp8"), ("int8", "int8")])
def test_calibrate_then_quantize(scheme, fmt):
    """calibrate's absmax clips become the layers' static scales, which then equal the
    dynamic per-tensor scales of the calibration batch's own activations."""
    model = _model()
    seen = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: seen.__setitem__(n, args[0].detach().clone())) for n in LINEARS]
    cal = lowbit.calibrate(model, [(IDS,)], progress=False)
    with torch.no_grad():
        model(IDS)
    for h in hooks:
        h.remove()
    lowbit.quantize_(model, scheme, calibration=cal)
    quant = lowbit.quantize_fp8 if fmt == "fp8" else lowbit.quantize_int8
    for n in LINEARS:
        want = quant(seen[n], granularity="tensor")[1]
        assert torch.equal(model.get_submodule(n).act_scale, want), n
    with torch.no_grad():
        assert _cos(model(IDS), _model()(IDS)) > 0.99


@pytest.mark.parametrize("scheme", ["fp8", "fp8-w8a16", "int8", "w8a16", "int4"])
def test_quantized_model_compiles_fullgraph(scheme):
    """No graph break, and the result is eager's up to what Inductor's fusion of the bf16
    ops around lowbit's changes: less than quantizing changed the model (each quantized
    module alone matches eager bit for bit: its own tests)."""
    model = _model()
    lowbit.quantize_(model, scheme, group_size=32)
    with torch.no_grad():
        full = _model()(IDS).double()
        eager = model(IDS).double()
        compiled = torch.compile(model, fullgraph=True)(IDS).double()
    assert (compiled - eager).norm() < (eager - full).norm()


def test_keep_slower_keeps_the_layers_measured_slower(monkeypatch):
    """keep_slower reads the measured layer table at the nearest weight shape and M: the up
    projections (64 -> 128: N = 128, K = 64) and the down ones (N = 64, K = 128) each have
    their own rows, and the verdict follows the nearest measured M."""
    from lowbit import heuristics

    table = {(128, 64): ((1, 1.5), (64, 0.8)), (64, 128): ((1, 0.9), (64, 1.2))}
    monkeypatch.setitem(heuristics.LAYER_SPEEDUP, "fp8", {(9, 0): table})
    monkeypatch.setattr(heuristics, "device_capability", lambda device: (9, 0))
    model = _model()
    summary = lowbit.quantize_(model, "fp8", keep_slower=2, filter=["head"])
    # M = 2 is nearest M = 1: up (N = 128, K = 64) 1.5x is swapped, down (64 x 128) 0.9x kept
    assert summary.swapped == ["blocks.0.up", "blocks.1.up"]
    assert "slower quantized: measured 0.90x bf16 at 1x64x128 on sm_90" in \
        summary.skipped["blocks.0.down"]
    assert isinstance(model.blocks[0].up, Fp8Linear)
    assert type(model.blocks[0].down) is nn.Linear
    report = {r.name: r.reason for r in summary.layers}
    assert "measured 1.50x bf16 at 1x128x64" in report["blocks.1.up"]
    # At M = 100 the nearest measured M is 64: the verdicts flip.
    summary = lowbit.quantize_(_model(), "fp8", keep_slower=100, filter=["head"])
    assert summary.swapped == ["blocks.0.down", "blocks.1.down"]


def test_keep_slower_says_when_nothing_was_measured():
    summary = lowbit.quantize_(_model(), "fp8", keep_slower=16, filter=["head"])
    assert len(summary.swapped) == 4
    assert all("not measured for fp8 on cpu" in r.reason for r in summary.layers if r.swapped)
    with pytest.raises(ValueError, match="keep_slower"):
        lowbit.quantize_(_model(), "fp8", keep_slower=0)
    with pytest.raises(ValueError, match="keep_slower"):
        lowbit.quantize_(_model(), "fp8", keep_slower=True)


def test_layer_speedup_reads_the_nearest_measured_point(monkeypatch):
    from lowbit import heuristics

    monkeypatch.setattr(heuristics, "device_capability", lambda device: (9, 0))
    cuda = torch.device("cuda", 0)
    # On log scales of N and K, 14336 x 8192 is nearer 28672 x 8192 than 4096^2.
    assert heuristics.layer_speedup("int8", cuda, 14336, 8192, 16) == (1.66, (16, 28672, 8192))
    assert heuristics.layer_speedup("int8", cuda, 4096, 4096, 3000) == (1.41, (4096, 4096, 4096))
    assert heuristics.layer_speedup("nf4", cuda, 4096, 4096, 1) is None
    monkeypatch.setattr(heuristics, "device_capability", lambda device: (8, 0))
    assert heuristics.layer_speedup("int8", cuda, 4096, 4096, 1) is None


# Cosine of a quantized model's output with bf16's, per scheme (random weights, tiny model).
DECODER_COS = {"fp8": 0.995, "fp8-w8a16": 0.997, "int8": 0.999, "w8a16": 0.999, "int4": 0.98}


@pytest.mark.parametrize("scheme", list(DECODER_COS))
def test_quantize_a_hugging_face_decoder(scheme):
    """A transformers decoder (a 2-layer Llama with random weights): every projection and
    the LM head are swapped, the logits stay close to the bf16 model's, and the quantized
    model generates without error."""
    transformers = pytest.importorskip("transformers")
    ref = tiny_llama(transformers)
    model = copy.deepcopy(ref)
    linears = [n for n, m in ref.named_modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer; lm_head
    summary = lowbit.quantize_(model, scheme, group_size=32)
    assert sorted(summary.swapped) == sorted(linears), summary.skipped
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, want = model(ids).logits, ref(ids).logits
        assert _cos(out, want) > DECODER_COS[scheme]
        gen = model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert gen.shape == (1, 7)


def test_transformer_encoder_layer_runs_after_quantizing():
    # Its fused inference path reads linear1/linear2's weights directly; once they are
    # swapped the layer must take its Python path. nn.MultiheadAttention's out_proj (a
    # subclass of nn.Linear whose weight it reads) is kept, and the summary says so.
    import copy
    torch.manual_seed(0)
    m = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True).eval()
    x = torch.randn(2, 8, 64)
    with torch.no_grad():
        ref = m(x)
    for scheme, tol in (("int8", 0.02), ("fp8", 0.05), ("int4", 0.1)):
        q = copy.deepcopy(m)
        s = lowbit.quantize_(q, scheme, group_size=64,
                             calibration=lowbit.calibrate(m, [x]) if scheme == "int8" else None)
        assert s.swapped == ["linear1", "linear2"]
        assert "a subclass of nn.Linear (NonDynamicallyQuantizableLinear)" in \
            s.skipped["self_attn.out_proj"]
        with torch.no_grad():
            y = q(x)
        assert float((y - ref).norm() / ref.norm()) < tol
    q = copy.deepcopy(m)
    lowbit.smooth_quant(q, [x])
    with torch.no_grad():
        assert torch.allclose(q(x), ref, atol=1e-5)


class GatedFFN(nn.Module):
    """T5's gated FFN: its forward casts the activations to ``wo.weight.dtype`` (the model
    keeps ``wo`` in fp32 and says so in ``_keep_in_fp32_modules``)."""

    def __init__(self, d=64, f=128):
        super().__init__()
        self.wi_0, self.wi_1 = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
        self.wo = nn.Linear(f, d, bias=False)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.wi_0(x)) * self.wi_1(x)
        if h.dtype != self.wo.weight.dtype and self.wo.weight.dtype != torch.int8:
            h = h.to(self.wo.weight.dtype)
        return self.wo(h)


class T5Like(nn.Module):
    _keep_in_fp32_modules = ["wo", "extra.proj"]

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block = nn.ModuleList(GatedFFN() for _ in range(2))
        self.extra = nn.ModuleDict({"proj": nn.Linear(64, 64), "two": nn.Linear(64, 64)})

    def forward(self, x):
        for b in self.block:
            x = x + b(x)
        return self.extra["two"](self.extra["proj"](x))


@pytest.mark.parametrize("scheme", ["fp8", "fp8-w8a16", "int4"])
def test_layers_the_model_keeps_in_full_precision_stay(scheme):
    """Without the rule, T5's forward would hand fp8 codes to Fp8Linear (or find no
    ``weight`` on Int4Linear); a nested model's list applies below it only, by whole
    name components (``two`` is not ``wo``)."""
    outer = nn.Sequential(nn.Linear(64, 64), T5Like()).to(torch.bfloat16).eval()
    x = torch.randn(2, 5, 64).bfloat16()
    with torch.no_grad():
        ref = outer(x)
    s = lowbit.quantize_(outer, scheme, group_size=32)
    assert sorted(s.swapped) == ["0", "1.block.0.wi_0", "1.block.0.wi_1", "1.block.1.wi_0",
                                 "1.block.1.wi_1", "1.extra.two"]
    assert s.skipped["1.block.0.wo"] == \
        "kept in full precision by the model (T5Like._keep_in_fp32_modules lists 'wo')"
    assert "lists 'extra.proj'" in s.skipped["1.extra.proj"]
    with torch.no_grad():
        assert _cos(outer(x), ref) > 0.98
    # a calibration need not hold the kept layers
    model = T5Like().bfloat16().eval()
    cal = lowbit.calibrate(model, [x], progress=False)
    del cal.clips["block.0.wo"]
    assert "block.0.wo" in lowbit.quantize_(model, "int8", calibration=cal).skipped


def test_linear_subclasses_are_reported_kept():
    class MyLinear(nn.Linear):
        pass

    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), MyLinear(64, 64))
    s = lowbit.quantize_(m, "int8")
    assert s.swapped == ["0"] and "subclass of nn.Linear (MyLinear)" in s.skipped["2"]
    with pytest.raises(TypeError, match=r"quantize_: filter must be a name, a module type, a "
                                        r"list of them or a callable"):
        lowbit.quantize_(nn.Sequential(nn.Linear(64, 64)), "int8", filter=3)


def test_load_keeps_the_saved_dtypes_and_checks_shapes(tmp_path):
    # A bf16 model loaded into its freshly built fp32 architecture comes back in bf16.
    def build(out=32):
        return nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, out))

    torch.manual_seed(0)
    m = build().to(torch.bfloat16)
    lowbit.quantize_(m, "int8", filter="2")
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    lowbit.save_quantized(m, str(tmp_path))
    back = lowbit.load_quantized(build(), str(tmp_path))
    assert back[1].weight.dtype == torch.bfloat16 and torch.equal(back(x), m(x))
    with pytest.raises(ValueError, match=r"load_quantized: '0' was saved as a 64 -> 64 layer; "
                                         r"the model's is 64 -> 48"):
        lowbit.load_quantized(nn.Sequential(nn.Linear(64, 48), nn.LayerNorm(48),
                                            nn.Linear(48, 32)), str(tmp_path))


class Experts(nn.Module):
    """A transformers MoE layer's experts: 3-D weights, no nn.Linear to swap."""

    def __init__(self, n=4, d=64, f=128):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(n, 2 * f, d))
        self.down_proj = nn.Parameter(torch.randn(n, d, f))


def test_the_summary_names_the_weights_outside_linears():
    model = nn.ModuleDict({"attn": nn.Linear(64, 64), "experts": Experts(),
                           "embed": nn.Embedding(50, 64), "norm": nn.LayerNorm(64)})
    s = lowbit.quantize_(model, "int8")
    assert s.swapped == ["attn"]
    # the experts' tensors, not the embedding's or the norm's
    assert s.outside == {"experts.gate_up_proj": 4 * 256 * 64 * 4,
                         "experts.down_proj": 4 * 64 * 128 * 4}
    assert ("weights outside nn.Linear layers, left as they are: 2 tensors, 0.38 MiB (largest: "
            "experts.gate_up_proj, experts.down_proj)") in str(s)
    # a small table beside large Linears is no line of the summary
    small = nn.ModuleDict({"a": nn.Linear(256, 256), "pos": Experts(1, 4, 4)})
    s = lowbit.quantize_(small, "int8")
    assert len(s.outside) == 2 and "outside" not in str(s)
