"""lowbit.fuse_siblings and lowbit.nn.SiblingLinear: quantized Linears that read one input run
as one layer. On the CPU (the reference ops) and, where there is one, on the GPU."""
import copy
import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn import Fp8Linear, Int4Linear, Int8Linear, SiblingLinear
from lowbit_testing import tiny_llama

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SCHEMES = ["fp8", "int8", "fp8-w8a16", "w8a16", "int4"]


class Attention(nn.Module):
    """BERT's self-attention projections (q, k, v of different widths, to catch an offset
    mix-up) and an output projection that must stay alone."""

    def __init__(self, d=64, kv=32):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, kv), nn.Linear(d, kv)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        return self.out(q) + torch.cat([k, v], -1)


class Stack(nn.Module):
    def __init__(self, layers=2):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(Attention() for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _pair(scheme, device, **kw):
    """(quantized model, the same with its siblings fused, the report)."""
    model = Stack().to(device, torch.bfloat16).eval()
    lowbit.quantize_(model, scheme, **({"group_size": 32} if scheme == "int4" else {}), **kw)
    fused = copy.deepcopy(model)
    return model, fused, lowbit.fuse_siblings(fused)


def _x(device, rows=5):
    return torch.randn(3, rows, 64, generator=torch.Generator().manual_seed(1)).to(
        device, torch.bfloat16)


def _same(got, want, scheme, device):
    """Bit for bit, except FP8 W8A8 on the GPU: its GEMM may accumulate the wider fused
    weight in another order (another K split), which moves a bf16 output by a step."""
    if device == "cuda" and scheme == "fp8":
        torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7,
                                   atol=2 ** -7 * want.float().abs().mean().item())
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_fused_group_gives_the_members_outputs(scheme, device):
    model, fused, report = _pair(scheme, device)
    assert report == {f"layers.{i}: query+key+value": "fused" for i in range(2)}
    att = fused.layers[0]
    assert isinstance(att.out, (Fp8Linear, Int8Linear, Int4Linear))  # in no group
    assert [type(m) for m in (att.query, att.key, att.value)] == [SiblingLinear] * 3
    assert att.query.fused.out_features == 64 + 32 + 32
    x = _x(device)
    with torch.no_grad():
        _same(fused(x), model(x), scheme, device)
        # each member alone, called as the model calls them (q, k, v on one input)
        ref = model.layers[0]
        outs = [getattr(att, n)(x) for n in ("query", "key", "value")]
        for n, got in zip(("query", "key", "value"), outs):
            _same(got, getattr(ref, n)(x), scheme, device)
    # The members' outputs are columns of one fused output (one GEMM, no copies).
    assert outs[0]._base is not None and all(o._base is outs[0]._base for o in outs)
    assert [o.data_ptr() - outs[0].data_ptr() for o in outs] == [0, 64 * 2, 96 * 2]


@pytest.mark.parametrize("scheme", ["fp8", "int8"])
def test_one_fused_call_serves_the_group(scheme, monkeypatch):
    _, fused, _ = _pair(scheme, "cpu")
    calls = []
    for layer in fused.layers:
        layer.query.fused.register_forward_hook(lambda m, i, o: calls.append(m))
    x = _x("cpu")
    with torch.no_grad():
        fused(x)
        assert len(calls) == 2  # one per layer's group
        # a member called again before its siblings: the group runs again (no stale output)
        att = fused.layers[0]
        att.query(x), att.key(x), att.value(x)
        assert len(calls) == 3
        assert att.query._hand.pending is None  # (every member served: nothing kept)


@pytest.mark.parametrize("scheme", ["fp8", "int8"])
def test_members_on_different_inputs_run_alone_and_say_so(scheme):
    model, fused, _ = _pair(scheme, "cpu")
    x, x2 = _x("cpu"), _x("cpu") * 2
    att, ref = fused.layers[0], model.layers[0]
    with torch.no_grad(), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        q = att.query(x)  # cross-attention: q on one input, k and v on another
        k, v = att.key(x2), att.value(x2)
        assert [str(w.message) for w in seen] == [
            "lowbit: the fused layers query+key+value are not called together on one input; "
            "each now runs alone (fuse only layers that read one input)"]
        assert att.query._hand.apart
        assert torch.equal(q, ref.query(x))
        assert torch.equal(k, ref.key(x2)) and torch.equal(v, ref.value(x2))
        # from then on each runs alone, on views of its rows of the fused weight
        assert torch.equal(att.value(x), ref.value(x))
        assert att.value._own[1].weight.data_ptr() == \
            att.query.fused.weight.data_ptr() + 96 * 64 * att.query.fused.weight.element_size()
        assert len(seen) == 1


@pytest.mark.parametrize("device", DEVICES)
def test_int4_members_alone_hold_their_rows_in_the_fused_layout(device):
    """An int4 group runs alone on its rows of the canonical weight (views) or, prepacked on
    a GPU, on those rows prepacked anew: the same numbers as the separate layers."""
    model, fused, _ = _pair("int4", device)
    att, ref = fused.layers[0], model.layers[0]
    assert att.query.fused.layout == ref.query.layout
    x, x2 = _x(device), _x(device) * 2
    with torch.no_grad(), warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        q, k, v = att.query(x), att.key(x2), att.value(x2)
        assert att.query._hand.apart
        assert torch.equal(q, ref.query(x))
        assert torch.equal(k, ref.key(x2)) and torch.equal(v, ref.value(x2))
        own = att.value._own[1]
        assert own.layout == ref.value.layout
        if own.layout == "canonical":
            assert own.qweight.data_ptr() == att.query.fused.qweight.data_ptr() + 96 * 32


def test_an_input_changed_in_place_is_not_served_stale():
    model, fused, _ = _pair("int8", "cpu")
    att, ref = fused.layers[0], model.layers[0]
    x = _x("cpu")
    with torch.no_grad(), warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        att.query(x)
        x.mul_(3)  # the same tensor, another version: the pending output is not its
        assert torch.equal(att.key(x), ref.key(x))
        assert torch.equal(att.value(x), ref.value(x))


@pytest.mark.parametrize("device", DEVICES)
def test_inference_mode(device):
    """Tensors made under inference_mode have no version counter: the group still hands
    its output on."""
    model, fused, _ = _pair("int8", device)
    calls = []
    for layer in fused.layers:
        layer.query.fused.register_forward_hook(lambda m, i, o: calls.append(m))
    with torch.inference_mode():
        x = _x(device)
        assert torch.equal(fused(x), model(x))
    assert len(calls) == 2


@pytest.mark.parametrize("scheme", ["fp8", "int8"])
def test_compiled_fullgraph_runs_one_op_per_group(scheme):
    model, fused, _ = _pair(scheme, "cpu")
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = _x("cpu")
    with torch.no_grad():
        want = fused(x)
        torch._dynamo.reset()
        got = torch.compile(fused, fullgraph=True, backend=backend)(x)
    assert torch.equal(got, want)
    ops = [str(n.target) for gm in graphs for n in gm.graph.nodes
           if n.op == "call_function" and "lowbit" in str(n.target)]
    assert len(ops) == 2 * 2, ops  # per layer: the fused group and the output projection
    assert fused.layers[0].query._hand.pending is None
    torch._dynamo.reset()


class Cross(nn.Module):
    """Cross-attention's projections: q on the decoder's states, k and v on the encoder's."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.query, self.key, self.value = nn.Linear(64, 64), nn.Linear(64, 32), nn.Linear(64, 32)

    def forward(self, x, e):
        return self.query(x), self.key(e), self.value(e)


@pytest.mark.parametrize("eager_first", [False, True])
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_compiled_members_on_different_inputs_stay_correct(scheme, eager_first):
    """Under torch.compile a group cannot be parted (no module is built inside a traced
    graph): each input gets its own hand-off, and the outputs are the separate layers'.
    After an eager call has parted it, the compiled graph runs the members alone."""
    model = Cross().to(torch.bfloat16).eval()
    lowbit.quantize_(model, scheme, group_size=32)
    fused = copy.deepcopy(model)
    lowbit.fuse_siblings(fused)
    x, e = _x("cpu"), _x("cpu", rows=7) * 2
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if eager_first:
            fused(x, e)
            assert fused.query._hand.apart
        torch._dynamo.reset()
        compiled = torch.compile(fused, fullgraph=True)
        for _ in range(3):
            for got, want in zip(compiled(x, e), model(x, e)):
                assert torch.equal(got, want)
    torch._dynamo.reset()


def test_members_alone_follow_a_cast_of_the_model():
    """`.half()` replaces the bias and the scales, not the integer weight: a member running
    alone must not keep computing with the old ones."""
    model = Stack().eval()
    lowbit.quantize_(model, "int8")
    fused = copy.deepcopy(model)
    lowbit.fuse_siblings(fused)
    x = torch.randn(3, 64)
    att = fused.layers[0]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        att.query(x), att.key(x * 2), att.value(x * 2)  # parts the group
        assert att.query._hand.apart
        model.half(), fused.half()
        for name in ("query", "key", "value"):
            got, want = getattr(att, name)(x.half()), getattr(model.layers[0], name)(x.half())
            assert got.dtype == want.dtype == torch.float16
            assert torch.equal(got, want)


def test_the_fused_layer_owns_its_per_layer_tensors():
    """Copies, not the first member's: shared with a member still registered under another
    name, a checkpoint would keep the tensor under that name only."""
    model = Stack().to(torch.bfloat16).eval()
    lowbit.quantize_(model, "int8")
    for name in ("query", "key", "value"):
        layer = getattr(model.layers[0], name)
        setattr(model.layers[0], name, Int8Linear.from_linear(
            nn.Linear(64, layer.out_features).bfloat16(), act_scale=0.02))
    first = model.layers[0].query
    lowbit.fuse_siblings(model)
    fused = model.layers[0].query.fused
    assert torch.equal(fused.act_scale, first.act_scale)
    assert fused.act_scale.data_ptr() != first.act_scale.data_ptr()


def test_save_load_and_copies_keep_the_groups(tmp_path):
    model, fused, _ = _pair("fp8", "cpu")
    x = _x("cpu")
    with torch.no_grad():
        want = fused(x)
    lowbit.save_quantized(fused, str(tmp_path))
    fresh = Stack().to(torch.bfloat16).eval()
    lowbit.load_quantized(fresh, str(tmp_path))
    assert "layers.0.query.fused.weight" in fresh.state_dict()
    assert not any(k.startswith("layers.0.key.") for k in fresh.state_dict())
    for m in (fresh, copy.deepcopy(fused)):
        att = m.layers[0]
        assert att.key.group is att.query and att.value.group is att.query
        with torch.no_grad():
            assert torch.equal(m(x), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_member_without_bias_fuses(scheme, device, tmp_path):
    """Whisper's attention: k_proj has no bias beside q_proj's and v_proj's. The fused layer
    adds zeros in its rows, which changes no output; saved and loaded, the group holds."""
    def whisper_like():
        m = Stack().to(device, torch.bfloat16).eval()
        for layer in m.layers:
            layer.key = nn.Linear(64, 32, bias=False).to(device, torch.bfloat16)
        return m

    model = whisper_like()
    lowbit.quantize_(model, scheme, **({"group_size": 32} if scheme == "int4" else {}))
    fused = copy.deepcopy(model)
    assert lowbit.fuse_siblings(fused)["layers.0: query+key+value"] == "fused"
    bias = fused.layers[0].query.fused.bias
    assert bias is not None and not bias[64:96].any() and torch.equal(
        bias[:64], model.layers[0].query.bias)
    x = _x(device)
    with torch.no_grad():
        want = fused(x)
        _same(want, model(x), scheme, device)
    lowbit.save_quantized(fused, str(tmp_path))
    fresh = whisper_like()
    lowbit.load_quantized(fresh, str(tmp_path))
    with torch.no_grad():
        assert torch.equal(fresh(x), want)
    # apart (members on different inputs), the member without a bias still adds none
    att, ref = fresh.layers[0], model.layers[0]
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="not called together"):
        att.query(x), att.key(x * 2)
    with torch.no_grad():
        _same(att.key(x), ref.key(x), scheme, device)


def test_what_does_not_fuse_is_kept_and_reported():
    model = Stack().to(torch.bfloat16).eval()
    # one member left in bf16: not alike
    lowbit.quantize_(model, "int8", filter=lambda name, m: name == "layers.0.key")
    report = lowbit.fuse_siblings(model)
    assert report["layers.0: query+key+value"] == "kept: members of different classes"
    assert report["layers.1: query+key+value"] == "fused"
    # static activation scales that differ cannot share one quantization
    model = Stack().to(torch.bfloat16).eval()
    lowbit.quantize_(model, "fp8")
    for i, name in enumerate(("query", "key", "value")):
        layer = getattr(model.layers[0], name)
        setattr(model.layers[0], name, Fp8Linear.from_linear(
            nn.Linear(64, layer.out_features).bfloat16(), act_scale=0.01 * (i + 1)))
    report = lowbit.fuse_siblings(model)
    assert report["layers.0: query+key+value"] == "kept: members with different act_scale"
    # int4 groups of different sizes cannot share one weight layout
    model = Stack().to(torch.bfloat16).eval()
    lowbit.quantize_(model, "int4", group_size=32, filter="layers.0.key")
    model.layers[0].key = Int4Linear.from_linear(nn.Linear(64, 32).bfloat16(), group_size=64)
    report = lowbit.fuse_siblings(model)
    assert report["layers.0: query+key+value"] == \
        "kept: members configured differently (mode, format, dtype, groups)"
    # a cross-attention whose k and v read wider states
    model = Stack().to(torch.bfloat16).eval()
    model.layers[0].key = nn.Linear(96, 32).bfloat16()
    model.layers[0].value = nn.Linear(96, 32).bfloat16()
    lowbit.quantize_(model, "int8")
    assert lowbit.fuse_siblings(model)["layers.0: query+key+value"] == \
        "kept: members of different in_features"
    # fusing again changes nothing
    _, fused, _ = _pair("fp8", "cpu")
    assert lowbit.fuse_siblings(fused) == {}


def test_bad_arguments():
    with pytest.raises(TypeError, match="fuse_siblings: model must be a torch.nn.Module"):
        lowbit.fuse_siblings("model")
    # one group passed bare (it would read as groups of single letters)
    with pytest.raises(ValueError, match="groups must be a sequence of groups"):
        lowbit.fuse_siblings(Stack(), groups=("query", "key", "value"))
    with pytest.raises(ValueError, match="groups must be sequences of at least two"):
        lowbit.fuse_siblings(Stack(), groups=[("query",)])
    with pytest.raises(ValueError, match="SiblingLinear: index 3"):
        SiblingLinear(64, [8, 8], 3, ["a", "b"])
    lone = SiblingLinear(64, [8, 8], 1, ["a", "b"])
    with pytest.raises(RuntimeError, match="not linked to its owner"):
        lone(torch.zeros(1, 64))


@pytest.mark.parametrize("scheme", ["fp8", "int8", "int4"])
def test_a_hugging_face_decoder_generates_the_same_tokens(scheme):
    """q/k/v and gate/up of a 2-layer Llama fused: the same logits and the same generation
    (with its KV cache, q, k and v still read one input each step)."""
    transformers = pytest.importorskip("transformers")
    model = tiny_llama(transformers)
    lowbit.quantize_(model, scheme, group_size=32)
    fused = copy.deepcopy(model)
    report = lowbit.fuse_siblings(fused)
    assert sorted(report) == sorted(f"model.layers.{i}.{p}" for i in range(2) for p in (
        "self_attn: q_proj+k_proj+v_proj", "mlp: gate_proj+up_proj"))
    assert set(report.values()) == {"fused"}
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no group may fall apart
        assert torch.equal(fused(ids).logits, model(ids).logits)
        gen = fused.generate(ids[:1, :4], max_new_tokens=4, do_sample=False)
        assert torch.equal(gen, model.generate(ids[:1, :4], max_new_tokens=4, do_sample=False))


@pytest.mark.parametrize("scheme", ["fp8", "int8", "int4"])
def test_a_hugging_face_t5_generates_the_same_tokens(scheme):
    """Flan-T5's layout (gated FFN): the encoder's and the decoder's self-attention q/k/v and
    wi_0/wi_1 fuse, the decoder's cross-attention is kept by name (its q reads the decoder's
    states, k and v the encoder's), and generation gives the same tokens with no warning."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=96, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                num_heads=4, feed_forward_proj="gated-gelu",
                                decoder_start_token_id=0, pad_token_id=0)
    model = transformers.T5ForConditionalGeneration(cfg).to(torch.bfloat16).eval()
    lowbit.quantize_(model, scheme, group_size=32)
    fused = copy.deepcopy(model)
    report = lowbit.fuse_siblings(fused)
    cross = {k for k in report if ".EncDecAttention:" in k}
    assert len(cross) == 2 and {report[k] for k in cross} == {
        "kept: cross-attention (the query reads other states)"}
    assert len(report) == 2 + 4 * 2  # per layer of each stack: q+k+v and wi_0+wi_1
    assert {v for k, v in report.items() if k not in cross} == {"fused"}
    ids = torch.randint(1, 96, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no group may fall apart
        gen = fused.generate(ids, max_new_tokens=4, do_sample=False)
        assert torch.equal(gen, model.generate(ids, max_new_tokens=4, do_sample=False))


@pytest.mark.parametrize("names", [("q_lin", "k_lin", "v_lin"), ("q", "k", "v")])
def test_other_default_names_fuse_and_cross_attention_is_kept(names):
    """DistilBERT's and T5's names fuse by default; the same group under a module named as
    transformers names a cross-attention is kept and says why."""
    class Att(nn.Module):
        def __init__(self):
            super().__init__()
            for n in names:
                setattr(self, n, nn.Linear(64, 64))

        def forward(self, x):
            return sum(getattr(self, n)(x) for n in names)

    model = nn.ModuleDict({"self_attn": Att(), "crossattention": nn.Sequential(Att())})
    model = model.to(torch.bfloat16).eval()
    lowbit.quantize_(model, "int8")
    ref = copy.deepcopy(model)
    report = lowbit.fuse_siblings(model)
    member = "+".join(names)
    assert report == {f"self_attn: {member}": "fused", f"crossattention.0: {member}":
                      "kept: cross-attention (the query reads other states)"}
    x = _x("cpu")
    with torch.no_grad():
        assert torch.equal(model["self_attn"](x), ref["self_attn"](x))
