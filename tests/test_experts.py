"""lowbit.nn.QuantizedExperts and quantize_ on mixture-of-experts layers: a transformers experts
module (3-D weights) with each expert's projections quantized. On the CPU (the reference ops)
and, where there is one, on the GPU; the transformers models where transformers is installed."""
import copy
import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn import Fp8Linear, Int4Linear, Int8Linear, QuantizedExperts
from lowbit.nn.experts import experts_layout
from lowbit_testing import (EXPERT_LAYOUTS, GPU_TARGETS, Experts, as_linear,
                            compile_checks_in_fresh_process, compile_kernel, routing)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LAYER = {"fp8": Fp8Linear, "int8": Int8Linear, "fp8-w8a16": Fp8Linear, "w8a16": Int8Linear,
         "int4": Int4Linear}


@pytest.mark.parametrize("layout", EXPERT_LAYOUTS)
def test_the_experts_loop_is_reproduced(layout):
    # In fp32 with each expert's slice kept as an nn.Linear, the module computes what the
    # eager loop computes: same tokens, same order, same gate, same sums.
    src = Experts(**EXPERT_LAYOUTS[layout]).eval()
    mod = QuantizedExperts.from_experts(src, as_linear)
    x = torch.randn(11, 64)
    index, weights = routing(11)
    with torch.no_grad():
        want, got = src(x, index, weights), mod(x, index, weights)
    if EXPERT_LAYOUTS[layout]["bias"] or EXPERT_LAYOUTS[layout]["transposed"]:
        # (x @ w vs x @ w.T-as-contiguous and a bias added after: other rounding in fp32)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(got, want)


def test_layout_is_read_from_the_flags():
    src = Experts(**EXPERT_LAYOUTS["gpt-oss"])
    assert experts_layout(src) == ("gate_up_proj", True, True, 4, 64, 96)
    assert experts_layout(Experts(**EXPERT_LAYOUTS["no-gate"]))[:3] == ("up_proj", False, False)

    class OwnForward(Experts):  # a forward of its own: not the loop QuantizedExperts runs
        def forward(self, hidden_states, top_k_index, top_k_weights):
            return hidden_states

    assert experts_layout(OwnForward(**EXPERT_LAYOUTS["mixtral"])) is None
    bad = Experts(**EXPERT_LAYOUTS["mixtral"])
    bad.down_proj = nn.Parameter(torch.zeros(4, 64, 95))  # I disagrees with gate_up_proj
    assert experts_layout(bad) is None
    plain = nn.Module()
    plain.gate_up_proj, plain.down_proj = (nn.Parameter(torch.zeros(4, 8, 4)),
                                           nn.Parameter(torch.zeros(4, 4, 4)))
    assert experts_layout(plain) is None  # no flags


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme", list(LAYER))
@pytest.mark.parametrize("layout", ["mixtral", "gpt-oss"])
def test_each_expert_is_its_quantized_linear(device, scheme, layout):
    # Expert e's projections are what from_linear makes of an nn.Linear holding its slice,
    # and the forward is the eager loop over those layers.
    def source():
        return Experts(**EXPERT_LAYOUTS[layout]).to(device, torch.bfloat16)

    holder = nn.ModuleDict({"experts": source()})
    s = lowbit.quantize_(holder, scheme, group_size=32)
    assert s.swapped == ["experts"] and s.layers[0].experts
    mod = holder["experts"]
    mod.grouped = False  # (the loop; the grouped path: test_grouped_path_computes_the_loop)
    kwargs = dict(group_size=32) if scheme == "int4" else \
        {"mode": "w8a16" if "w8a16" in scheme else "w8a8"}
    src = source()
    first = src.gate_up_proj.detach()
    for e in range(4):
        w = first[e].t() if src.is_transposed else first[e]
        lin = nn.Linear(64, 192, device=device, dtype=torch.bfloat16)
        lin.weight.data.copy_(w)
        lin.bias.data.copy_(src.gate_up_proj_bias[e] if src.has_bias else 0)
        if not src.has_bias:
            lin.bias = None
        own = LAYER[scheme].from_linear(lin, **kwargs)
        layer = mod.gate_up_proj[e]
        assert isinstance(layer, LAYER[scheme])
        assert own.state_dict().keys() == layer.state_dict().keys()
        assert all(torch.equal(a, layer.state_dict()[k]) for k, a in own.state_dict().items())
    x = torch.randn(9, 64, device=device, dtype=torch.bfloat16)
    index, weights = routing(9, device=device)
    with torch.no_grad():
        got = mod(x, index, weights)
        want = torch.zeros(x.shape, device=device)  # (summed in fp32, rounded once)
        for e in range(4):
            pos, token = torch.where(index.t() == e)
            y = Experts._apply_gate(mod, mod.gate_up_proj[e](x[token]))
            y = mod.down_proj[e](y)
            want.index_add_(0, token, y.float() * weights[token, pos, None].float())
        want = want.to(x.dtype)
        full = src(x, index, weights)
    assert torch.equal(got, want)
    # and it stays near the full-precision experts
    cos = nn.functional.cosine_similarity(got.float().flatten(), full.float().flatten(), dim=0)
    assert cos > (0.97 if scheme == "int4" else 0.995)


def test_sentinel_ids_are_skipped_and_negative_ids_rejected():
    src = Experts(**EXPERT_LAYOUTS["mixtral"])
    mod = QuantizedExperts.from_experts(src, as_linear)
    x = torch.randn(5, 64)
    index, weights = routing(5)
    index[1, 0] = 4  # an expert-parallel rank's sentinel: a route to no local expert
    with torch.no_grad():
        assert torch.equal(mod(x, index, weights), src(x, index, weights))
        index[2, 1] = -1
        with pytest.raises(ValueError, match="top_k_index holds 1 negative expert id"):
            mod(x, index, weights)
        with pytest.raises(ValueError, match="hidden_size = 64; got \\(5, 32\\)"):
            mod(x[:, :32], index, weights)
        with pytest.raises(ValueError, match="top_k_index and top_k_weights must both be"):
            mod(x, index[:4], weights[:4])


def test_a_forward_patched_onto_the_source_is_not_carried():
    # accelerate's device hooks set forward (and _old_forward, _hf_hook) on the instance:
    # carried over, the module would run the source's loop on its full-precision weights
    src = Experts(**EXPERT_LAYOUTS["mixtral"])
    src._old_forward, src._hf_hook = src.forward, object()
    src.forward = lambda *args: src._old_forward(*args)
    src.some_constant = 3
    mod = QuantizedExperts.from_experts(src, lambda lin: Int8Linear.from_linear(lin))
    assert "forward" not in vars(mod) and not hasattr(mod, "_hf_hook")
    assert mod.some_constant == 3
    x = torch.randn(4, 64)
    index, weights = routing(4)
    plain = QuantizedExperts.from_experts(Experts(**EXPERT_LAYOUTS["mixtral"]),
                                          lambda lin: Int8Linear.from_linear(lin))
    with torch.no_grad():
        assert torch.equal(mod(x, index, weights), plain(x, index, weights))
        assert not torch.equal(mod(x, index, weights), src(x, index, weights))


def test_contributions_are_summed_in_fp32():
    # bf16 hidden states: each expert's contribution added in fp32 and the sum rounded
    # once; transformers' eager loop (the source here) rounds after each expert
    src = Experts(**EXPERT_LAYOUTS["mixtral"]).to(torch.bfloat16)
    mod = QuantizedExperts.from_experts(src, as_linear)
    x = torch.randn(64, 64, dtype=torch.bfloat16)
    index, weights = routing(64)
    with torch.no_grad():
        got = mod(x, index, weights)
        exact = copy.deepcopy(src).double()(x.double(), index, weights.double())
        eager = src(x, index, weights)
    assert got.dtype == torch.bfloat16
    err = (got.double() - exact).abs().sum()
    assert err < (eager.double() - exact).abs().sum()


def test_a_layer_wider_than_the_sum_is_rounded_to_it():
    # a make() that computes in fp64 (a reference): its output is rounded to the fp32 sum
    def wide(lin):
        return as_linear(lin).double()

    src = Experts(**EXPERT_LAYOUTS["mixtral"])
    mod = QuantizedExperts.from_experts(src, as_linear)
    widened = QuantizedExperts.from_experts(src, wide)

    class Back(nn.Module):  # fp32 in, the fp64 layer, fp64 out
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x.double())

    for name in ("gate_up_proj", "down_proj"):
        for e in range(4):
            getattr(widened, name)[e] = Back(getattr(widened, name)[e])
    x = torch.randn(5, 64)
    index, weights = routing(5)
    with torch.no_grad():
        got = widened(x, index, weights)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, mod(x, index, weights), rtol=1e-5, atol=1e-5)


def test_a_token_routed_nowhere_gets_zeros():
    mod = QuantizedExperts.from_experts(Experts(**EXPERT_LAYOUTS["mixtral"]), as_linear)
    index = torch.full((3, 2), 4)  # every route a sentinel
    out = mod(torch.randn(3, 64), index, torch.ones(3, 2))
    assert torch.equal(out, torch.zeros(3, 64))
    # and no token at all
    empty = torch.zeros(0, 2, dtype=torch.int64)
    assert mod(torch.zeros(0, 64), empty, torch.zeros(0, 2)).shape == (0, 64)


def test_quantize_reports_experts_and_skips_what_it_cannot_take():
    model = nn.ModuleDict({"attn": nn.Linear(64, 64),
                           "experts": Experts(**EXPERT_LAYOUTS["mixtral"]),
                           "other": Experts(**EXPERT_LAYOUTS["mixtral"])})
    s = lowbit.quantize_(model, "int4", filter="other", group_size=64)
    assert s.swapped == ["attn"]  # I = 96 is no multiple of 64
    assert s.skipped == {"experts": "experts: in_features = 96 is not a multiple of "
                                    "group_size = 64",
                         "other": "excluded by filter"}
    text = str(s)
    assert "1 of 1 Linear layers and 0 of 2 experts modules swapped" in text
    # the experts left as they are are named as weights outside
    assert "experts.gate_up_proj" in s.outside and "other.down_proj" in s.outside
    s = lowbit.quantize_(model, "int8", filter="other")
    assert s.swapped == ["experts"] and isinstance(model["experts"], QuantizedExperts)
    assert "experts.gate_up_proj" not in s.outside
    row = next(r for r in s.layers if r.name == "experts")
    # fp32 weights: 4 bytes a weight before, 1 (and a scale per row) after
    assert row.bytes_before == 4 * (4 * 192 * 64 + 4 * 64 * 96)
    assert row.bytes_after == 4 * 192 * 64 + 4 * 64 * 96 + 4 * 4 * (192 + 64)
    assert "QuantizedExperts(experts=4, 64 -> 96 (gated) -> 64, bias=False, " \
        "layers=Int8Linear)" in row.reason


def test_tensors_besides_the_weights_keep_the_module():
    src = Experts(**EXPERT_LAYOUTS["mixtral"])
    src.register_buffer("expert_bias", torch.zeros(4))  # e.g. a routing correction
    with pytest.raises(ValueError, match=r"holds tensors besides its experts' weights "
                                         r"\(expert_bias\)"):
        QuantizedExperts.from_experts(src, as_linear)
    s = lowbit.quantize_(nn.ModuleDict({"e": src, "l": nn.Linear(64, 64)}), "fp8")
    assert "holds tensors besides" in s.skipped["e"]


def test_a_filter_that_raises_leaves_the_model_as_it_was():
    model = nn.ModuleDict({"attn": nn.Linear(64, 64),
                           "experts": Experts(**EXPERT_LAYOUTS["mixtral"])})

    def by_width(name, m):  # written for Linears
        return m.out_features < 32

    with pytest.raises(AttributeError, match="out_features"):
        lowbit.quantize_(model, "int8", filter=by_width)
    assert type(model["attn"]) is nn.Linear and isinstance(model["experts"], Experts)
    s = lowbit.quantize_(model, "int8", filter=lambda name, m: isinstance(m, Experts))
    assert s.swapped == ["attn"] and s.skipped == {"experts": "excluded by filter"}


def test_a_transformers_config_attribute_does_not_hide_config(tmp_path):
    # transformers' decorator sets the model's config on every experts module
    def build():
        src = Experts(**EXPERT_LAYOUTS["mixtral"])
        src.config = {"model": "config"}
        return nn.ModuleDict({"experts": src})

    model = build()
    lowbit.quantize_(model, "fp8")
    assert model["experts"].config()["num_experts"] == 4
    lowbit.save_quantized(model, str(tmp_path))
    back = lowbit.load_quantized(build(), str(tmp_path))
    assert back["experts"].config() == model["experts"].config()


def test_save_load_and_deepcopy_keep_the_numbers(tmp_path):
    def build():
        torch.manual_seed(0)
        return nn.ModuleDict({"proj": nn.Linear(64, 64),
                              "experts": Experts(**EXPERT_LAYOUTS["gpt-oss"]),
                              "plain": Experts(**EXPERT_LAYOUTS["post-norm"])}).to(torch.bfloat16)

    model = build()
    lowbit.quantize_(model, "fp8")
    x = torch.randn(6, 64, dtype=torch.bfloat16)
    index, weights = routing(6)
    with torch.no_grad():
        want = model["experts"](x, index, weights), model["plain"](x, index, weights)
    lowbit.save_quantized(model, str(tmp_path))
    back = lowbit.load_quantized(build(), str(tmp_path))
    twin = copy.deepcopy(model)
    for m in (back, twin):
        assert isinstance(m["experts"].gate_up_proj[3], Fp8Linear)
        with torch.no_grad():
            got = m["experts"](x, index, weights), m["plain"](x, index, weights)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    # loading into a model that is already quantized (a second load) works as for Linears
    again = lowbit.load_quantized(back, str(tmp_path))
    with torch.no_grad():
        assert torch.equal(again["experts"](x, index, weights), want[0])
    with pytest.raises(ValueError, match="QuantizedExperts: source must be"):
        wrong = nn.ModuleDict({"proj": nn.Linear(64, 64),
                               "experts": Experts(8, **EXPERT_LAYOUTS["gpt-oss"]),
                               "plain": Experts(**EXPERT_LAYOUTS["post-norm"])})
        lowbit.load_quantized(wrong, str(tmp_path))


@pytest.mark.parametrize("scheme", ["fp8", "int4"])
def test_a_transformers_moe_model(scheme):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(vocab_size=96, hidden_size=64, intermediate_size=128,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2)
    model = transformers.MixtralForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, 96, (2, 9))
    with torch.no_grad():
        ref = model(ids).logits
    s = lowbit.quantize_(model, scheme, group_size=32)
    assert [r.name for r in s.layers if r.experts and r.swapped] == \
        [f"model.layers.{i}.mlp.experts" for i in range(2)]
    # nothing of the experts is left in full precision (the routers' [E, H] weights are)
    assert sorted(s.outside) == [f"model.layers.{i}.mlp.gate.weight" for i in range(2)]
    with torch.no_grad():
        out = model(ids).logits
        generated = model.generate(ids[:1], max_new_tokens=4, do_sample=False)
    cos = nn.functional.cosine_similarity(out.float().flatten(), ref.float().flatten(), dim=0)
    assert cos > (0.98 if scheme == "int4" else 0.995)
    assert generated.shape == (1, 13)


def test_compiled_module_matches_eager():
    # Under torch.compile the routing read is a graph break (fullgraph=True raises, as for
    # transformers' own eager loop); the pieces around it compile. fp32: inductor's fusion of
    # the gate rounds nothing that eager rounds.
    holder = nn.ModuleDict({"e": Experts(**EXPERT_LAYOUTS["mixtral"])})
    lowbit.quantize_(holder, "int8")
    x = torch.randn(9, 64)
    index, weights = routing(9)
    with torch.no_grad():
        want = holder["e"](x, index, weights)
        got = torch.compile(holder["e"])(x, index, weights)
    assert torch.equal(got, want)


# The grouped path (lowbit/nn/_experts_grouped.py): on the GPU, and on the CPU through the
# Triton interpreter (TRITON_INTERPRET=1; without it a CPU forward runs the loop).


def _interpret(monkeypatch, device):
    if device == "cpu":
        # (the interpreter only where there is no GPU, as conftest.py loads the kernels: a
        # process that ran it cannot compile them for a GPU afterwards)
        if torch.cuda.is_available():
            pytest.skip("the Triton interpreter runs where there is no GPU")
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    elif lowbit.backends.triton.available() is not None:
        pytest.skip(lowbit.backends.triton.available())


def _quantized(scheme, layout, device, dtype=torch.bfloat16, check_device=True):
    holder = nn.ModuleDict({"e": Experts(**EXPERT_LAYOUTS[layout]).to(device, dtype)})
    lowbit.quantize_(holder, scheme, group_size=32, check_device=check_device)
    return holder["e"]


def _weight_loads(target, int8: bool, aligned: bool) -> str:
    """The PTX of the grouped kernel compiled for ``target`` as a decode launch specializes
    it (aligned pointer arguments and sizes); ``aligned``: the host found every weight and
    scale address of the tables a 16-byte multiple."""
    from lowbit.triton_kernels import experts_gemm

    kern = experts_gemm._experts_w8a8_kernel
    const = dict(A_BY_TOKEN=True, INT8=int8, HAS_BIAS=False, BIAS_BF16=False, BIAS_F16=False,
                 BF16_BITS=False, BLOCK_P=16, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128,
                 W_ALIGNED=aligned, WS_ALIGNED=aligned, ROUTE=False, ROUND_BF16=False,
                 ROUND_F16=False, RW_BF16=False)
    ptrs = dict(a_ptr="*i8" if int8 else "*fp8e4nv", sa_ptr="*fp32", ids_ptr="*i64",
                w_table="*i64", ws_table="*i64", bias_table="*i64", rw_ptr="*fp32",
                c_ptr="*bf16")
    sig = {a: "constexpr" if a in const else ptrs.get(a, "i32") for a in kern.arg_names}
    aligned_args = [a for a in kern.arg_names
                    if a in ptrs or a in ("N", "K", "stride_am", "stride_cm")]
    return compile_kernel(kern, target, sig, const, aligned_args,
                          dict(num_warps=4, num_stages=3)).asm["ptx"]


def compile_checks(target) -> None:
    """A weight whose address comes from the table is read in 16-byte pieces where the host
    found the addresses aligned, and a byte at a time where it did not (what the hint
    changes: Triton knows nothing of a pointer read from memory)."""
    for int8 in (False, True):
        assert "ld.global.b8" not in _weight_loads(target, int8, True), int8
        assert "ld.global.b8" in _weight_loads(target, int8, False), int8


def test_grouped_kernel_reads_aligned_weights_in_vectors():
    pytest.importorskip("triton")
    compile_checks_in_fresh_process(__file__, GPU_TARGETS["sm90"])


@pytest.mark.parametrize("offset", [0, 1])
def test_pointer_table_says_whether_addresses_are_aligned(offset):
    pytest.importorskip("triton")
    from lowbit.triton_kernels.experts_gemm import pointer_table

    base = torch.zeros(4, 64, dtype=torch.int8)
    views = [base[i, offset:] for i in range(4)]  # rows 64 bytes apart, shifted by offset
    table, aligned = pointer_table(views, torch.device("cpu"))
    assert table.tolist() == [v.data_ptr() for v in views]
    assert aligned == (base.data_ptr() % 16 == 0 and offset == 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "offset"])
@pytest.mark.parametrize("case", range(5))
def test_experts_kernel_is_each_experts_gemm(monkeypatch, device, offset, case):
    # Every routed pair's row is its expert's int8_gemm of its row (int32 sums, exact: equal);
    # rows routed nowhere are zero. Cases: decode, several blocks an expert (T * k past 16
    # pairs), a token sent to one expert twice, ids outside [0, E), biases. "offset": every
    # weight a view one byte into its storage (the kernel then reads it without the
    # 16-byte alignment hint).
    _interpret(monkeypatch, device)
    from lowbit.triton_kernels.experts_gemm import experts_w8a8

    t, k, e, n, kk, by_token, bias = [(1, 2, 8, 40, 64, True, False),
                                      (40, 4, 3, 24, 96, True, True),
                                      (9, 2, 4, 130, 64, False, True),
                                      (5, 3, 4, 16, 200, False, False),
                                      (17, 1, 2, 8, 32, True, False)][case]
    g = torch.Generator().manual_seed(case)
    ids = torch.randint(-1, e + 1, (t, k), generator=g)  # -1 and e: routed nowhere
    ids[0] = 1  # every slot of token 0 to expert 1 (twice, or more)
    rows = t if by_token else t * k
    a = torch.randint(-127, 128, (rows, kk), generator=g, dtype=torch.int8)
    sa = torch.rand(rows, 1, generator=g) + 0.5
    ws = [torch.randint(-127, 128, (n, kk), generator=g, dtype=torch.int8) for _ in range(e)]
    ss = [torch.rand(n, 1, generator=g) / 64 for _ in range(e)]
    bs = [torch.randn(n, generator=g).to(torch.bfloat16) for _ in range(e)] if bias else None
    to = {"device": device}

    def placed(w):
        store = torch.zeros(offset + w.numel(), dtype=w.dtype, device=device)
        view = store[offset:].view(w.shape)
        view.copy_(w)
        return view

    got = experts_w8a8(a.to(**to), sa.to(**to), ids.to(**to), by_token,
                       [placed(w) for w in ws], [s.to(**to) for s in ss],
                       None if bs is None else [b.to(**to) for b in bs], torch.bfloat16).cpu()
    assert got.shape == (t * k, n)
    # With routing weights: each row as above (rounded to bf16) times its pair's weight in
    # fp32, an fp32 output (the down projection's epilogue in QuantizedExperts).
    rw = torch.rand(t, k, generator=g).to([torch.bfloat16, torch.float16, torch.float32][case % 3])
    routed = experts_w8a8(a.to(**to), sa.to(**to), ids.to(**to), by_token,
                          [placed(w) for w in ws], [s.to(**to) for s in ss],
                          None if bs is None else [b.to(**to) for b in bs], torch.bfloat16,
                          route_weights=rw.to(**to)).cpu()
    assert routed.dtype == torch.float32
    for p in range(t * k):
        ex = int(ids[p % t, p // t])
        assert torch.equal(routed[p], got[p].float() * rw[p % t, p // t].float()), p
        if not 0 <= ex < e:
            assert not got[p].any()
            continue
        r = p % t if by_token else p
        want = lowbit.int8_gemm(a[r:r + 1], ws[ex], sa[r:r + 1], ss[ex],
                                None if bs is None else bs[ex], out_dtype=torch.bfloat16,
                                backend="reference")
        assert torch.equal(got[p], want[0]), p


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme", ["fp8", "int8"])
@pytest.mark.parametrize("layout", EXPERT_LAYOUTS)
@pytest.mark.parametrize("route_dtype", [torch.float32, torch.bfloat16], ids=["w32", "w16"])
def test_grouped_path_computes_the_loop(monkeypatch, device, scheme, layout, route_dtype):
    _interpret(monkeypatch, device)
    torch.manual_seed(0)
    src = Experts(**EXPERT_LAYOUTS[layout]).to(device, torch.bfloat16)
    mod = _quantized(scheme, layout, device)  # (the same weights: Experts seeds its own)
    x = torch.randn(9, 64, device=device, dtype=torch.bfloat16)
    index, weights = routing(9, device=device)
    weights = weights.to(route_dtype)  # (a router's softmax in x's dtype, or in fp32)
    index[1, 0] = 4  # a sentinel
    assert mod.path(9, 2, x) == "grouped"
    with torch.no_grad():
        got = mod(x, index, weights)
        mod.grouped = False
        assert mod.path(9, 2, x) == "loop: grouped is False"
        want = mod(x, index, weights)
        exact = src(x, index, weights).float()
    # The same quantized activations and epilogue roundings as each expert's layer; int8
    # sums exactly, and two slots' contributions add in either order alike: equal. fp8's
    # fp32 sums of the products run in another order on the GPU (on the CPU both sum
    # these K = 64 / 96 products without rounding), and where that moves the first
    # projection's bf16 output by its last bit, the intermediate's fp8 code there may move
    # by a whole step (1/8 of it): so on the GPU the grouped path must be as close to the
    # full-precision experts as the loop is (a wrong expert, pair or scale is far off).
    if scheme == "int8" or device == "cpu":
        assert torch.equal(got, want)
    else:
        def err(y):
            return ((y.float() - exact).norm() / exact.norm()).item()
        assert err(got) < 1.25 * err(want), (err(got), err(want))


def test_grouped_path_reads_what_changed_after_a_forward(monkeypatch):
    # An eager forward keeps what it read of the layers (lowbit/nn/_experts_grouped.py,
    # Prepared) only while each object it read is still in its place: a weight scale
    # replaced after a forward, a static scale set on an expert, are read by the next
    # forward; a reading that still holds is kept.
    _interpret(monkeypatch, "cpu")
    mod = _quantized("int8", "mixtral", "cpu")
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    index, weights = routing(5)
    with torch.no_grad():
        before = mod(x, index, weights)
        kept = mod._prepared()
        assert mod(x, index, weights).equal(before) and mod._prepared() is kept
        lay = mod.gate_up_proj[index[0, 0]]
        lay.weight_scale = lay.weight_scale * 2  # (a new tensor in the buffer's place)
        got = mod(x, index, weights)
        assert mod._prepared() is not kept
        mod.grouped = False
        want = mod(x, index, weights)
        mod.grouped = True
        assert not torch.equal(got, before)
        assert torch.equal(got, want)
        mod.down_proj[2].act_scale = torch.tensor(0.05)
        assert mod.path(5, 2, x) == "loop: an expert with a static activation scale"


def test_grouped_path_reads_a_parametrized_scale_every_forward(monkeypatch):
    # A _STATE attribute behind a parametrization (a property) has no place to hold: every
    # forward reads it anew, as the loop does.
    from torch.nn.utils import parametrize

    class Times(nn.Module):
        def __init__(self):
            super().__init__()
            self.factor = 1.0

        def forward(self, t):
            return t * self.factor

    _interpret(monkeypatch, "cpu")
    mod = _quantized("int8", "mixtral", "cpu")
    times = Times()
    for lay in mod.down_proj:
        parametrize.register_parametrization(lay, "weight_scale", times)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    index, weights = routing(5)
    with torch.no_grad():
        before = mod(x, index, weights)
        times.factor = 2.0
        got = mod(x, index, weights)
        mod.grouped = False
        want = mod(x, index, weights)
    assert not torch.equal(got, before)
    assert torch.equal(got, want)


def test_grouped_path_keeps_no_replaced_weight_alive(monkeypatch):
    # The reading remembers the layers' tensors by weak reference: a weight replaced after a
    # forward is freed at once, not at the next forward.
    import weakref

    _interpret(monkeypatch, "cpu")
    mod = _quantized("fp8", "mixtral", "cpu")
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        mod(x, *routing(3))
    lay = mod.down_proj[1]
    old = weakref.ref(lay.weight)
    lay.weight = lay.weight.clone()
    assert old() is None
    mod.compile()  # (pickling and copying leave out torch's compiled call, as a module's)
    assert copy.deepcopy(mod)._compiled_call_impl is None


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_path_at_its_most_pairs(monkeypatch, device):
    # MAX_PAIRS routed pairs: an expert's pairs span several blocks of BLOCK_M, and each
    # program scans the whole routing. int8 sums exactly: equal to the loop.
    from lowbit.nn._experts_grouped import MAX_PAIRS

    _interpret(monkeypatch, device)
    mod = _quantized("int8", "mixtral", device)
    tokens = MAX_PAIRS // 2
    x = torch.randn(tokens, 64, device=device, dtype=torch.bfloat16)
    index, weights = routing(tokens, device=device)
    assert mod.path(tokens, 2, x) == "grouped"
    with torch.no_grad():
        got = mod(x, index, weights)
        mod.grouped = False
        assert torch.equal(got, mod(x, index, weights))


def test_import_leaves_dynamo_unloaded():
    # (marking the use_backend check for Dynamo imports torch._dynamo: over a second, paid
    # when experts are quantized, not by every `import lowbit`)
    import subprocess
    import sys

    code = "import sys, lowbit; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-1] == "False"


def test_an_unpickled_module_is_marked_for_tracing(tmp_path):
    # torch.load of a whole model in a fresh process builds QuantizedExperts without
    # __init__; its use_backend check must still be marked for Dynamo.
    import subprocess
    import sys

    torch.save(_quantized("int8", "mixtral", "cpu"), tmp_path / "m.pt")
    here = str(__import__("pathlib").Path(__file__).parent)  # (the source class's module)
    code = (f"import sys; sys.path.insert(0, {here!r}); "
            "import torch, lowbit, lowbit.nn._experts_grouped as g; "
            f"torch.load({str(tmp_path / 'm.pt')!r}, weights_only=False); "
            "print(*(getattr(f, '_dynamo_marked_constant', False) "
            "for f in (g._backend_named, g._kernel_reason)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-2:] == ["True", "True"]


def test_grouped_path_keeps_the_routing_weights_gradient(monkeypatch):
    # A router being trained: the routing weights' multiply stays in torch (the kernel's
    # epilogue has no backward), so their gradient is the loop's.
    _interpret(monkeypatch, "cpu")
    mod = _quantized("fp8", "mixtral", "cpu")
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    index, weights = routing(5)
    grads = []
    for grouped in (True, False):
        mod.grouped = grouped
        w = weights.clone().requires_grad_()
        mod(x, index, w).float().sum().backward()
        grads.append(w.grad)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_path_takes_no_tokens_and_3d_input(monkeypatch, device):
    _interpret(monkeypatch, device)
    mod = _quantized("fp8", "mixtral", device)
    x = torch.randn(0, 64, device=device, dtype=torch.bfloat16)
    assert mod.path(0, 2, x) == "grouped"
    with torch.no_grad():
        empty = mod(x, torch.zeros(0, 2, dtype=torch.int64, device=device),
                    torch.zeros(0, 2, device=device))
        assert empty.shape == (0, 64)
        x3 = torch.randn(2, 3, 64, device=device, dtype=torch.bfloat16)
        index, weights = routing(6, device=device)
        got = mod(x3, index, weights)
        mod.grouped = False
        want = mod(x3, index, weights)
    assert got.shape == (2, 3, 64)
    if device == "cpu":
        assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_path_skips_negative_ids(monkeypatch, device):
    # The grouped path never reads ids on the host: a negative id is skipped as a sentinel
    # (the loop, which reads them, raises).
    _interpret(monkeypatch, device)
    mod = _quantized("int8", "mixtral", device)
    x = torch.randn(5, 64, device=device, dtype=torch.bfloat16)
    index, weights = routing(5, device=device)
    with torch.no_grad():
        neg, sentinel = index.clone(), index.clone()
        neg[2, 1], sentinel[2, 1] = -1, 4
        assert torch.equal(mod(x, neg, weights), mod(x, sentinel, weights))


def test_path_names_why_the_loop_runs(monkeypatch):
    from lowbit.nn._experts_grouped import MAX_PAIRS

    if torch.cuda.is_available():
        pytest.skip("the Triton interpreter runs where there is no GPU")
    mod = _quantized("fp8", "mixtral", "cpu")
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert mod.path(1, 2, x).startswith("loop: x is on cpu")
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert mod.path(1, 2, x) == "grouped"
    assert mod.path(MAX_PAIRS // 2 + 1, 2, x) == \
        f"loop: {MAX_PAIRS + 2} routed pairs (the grouped kernel serves up to {MAX_PAIRS})"
    assert mod.path(4, 2) == "grouped"  # (x by default: the experts' device and dtype)
    assert _quantized("int4", "mixtral", "cpu").path(1, 2, x) == \
        "loop: a Int4Linear expert (the grouped kernel runs W8A8 only)"
    w8a16 = _quantized("w8a16", "mixtral", "cpu")
    assert w8a16.path(1, 2, x) == \
        "loop: an Int8Linear expert that is not W8A8 with symmetric activations"


def test_grouped_path_follows_the_experts(monkeypatch, tmp_path):
    # The path is decided again when the experts' layers or devices change: a model loaded
    # over a quantized one of another scheme, experts moved elsewhere, a named backend.
    _interpret(monkeypatch, "cpu")
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    index, weights = routing(3)
    for have, saved in [("int8", "fp8"), ("fp8", "int8"), ("int8", "w8a16")]:
        holder = nn.ModuleDict({"e": _quantized(have, "mixtral", "cpu")})
        with torch.no_grad():
            holder["e"](x, index, weights)  # (decides the path for int8 / fp8 experts)
            other = nn.ModuleDict({"e": _quantized(saved, "mixtral", "cpu")})
            lowbit.save_quantized(other, str(tmp_path / saved))
            holder = lowbit.load_quantized(holder, str(tmp_path / saved))
            assert holder["e"].path(3, 2, x) == other["e"].path(3, 2, x)
            assert torch.equal(holder["e"](x, index, weights), other["e"](x, index, weights))
    mod = _quantized("int8", "mixtral", "cpu")
    with lowbit.use_backend("reference"):
        assert mod.path(3, 2, x) == "loop: a backend is named (lowbit.use_backend)"
    mod.to("meta")
    assert mod.path(3, 2, x) == "loop: x is on cpu, the experts on meta"


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_path_compiles_whole(monkeypatch, device):
    # No host read: fullgraph=True traces the grouped forward (the loop's is a graph break).
    # The use_backend check is a constant of the trace (Dynamo cannot read a ContextVar): a
    # block opened after the trace leaves the compiled graph as it was.
    from lowbit.triton_kernels import experts_gemm

    _interpret(monkeypatch, device)
    torch._dynamo.reset()
    launches = []
    real = experts_gemm.experts_w8a8
    monkeypatch.setattr(experts_gemm, "experts_w8a8",
                        lambda *a, **kw: launches.append(1) or real(*a, **kw))
    mod = _quantized("int8", "mixtral", device, torch.float32)
    x = torch.randn(9, 64, device=device)
    index, weights = routing(9, device=device)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(mod, fullgraph=True)
        got = compiled(x, index, weights)  # (compiled first)
        # (the path's checks are constants of the trace: Dynamo traces none of their
        # caches, e.g. the card's capability behind an lru_cache)
        assert not [w for w in caught if "lru_cache" in str(w.message)]
        want = mod(x, index, weights)
        with lowbit.use_backend("reference"):
            assert mod.path(9, 2, x).startswith("loop")
            launches.clear()
            assert torch.equal(compiled(x, index, weights), got)
            assert len(launches) == 2  # the grouped kernel's two projections, as traced
    torch._dynamo.reset()
    if device == "cpu":
        assert torch.equal(got, want)
    else:  # (Inductor's SiLU and fused multiply-adds round otherwise than eager's kernels)
        cos = nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert cos > 0.9999


def test_the_loop_refuses_capture_by_name(monkeypatch):
    # The loop reads the routing counts on the host: under capture it says so, and why the
    # forward took it, before torch would (its error names a CPU copy).
    from lowbit.nn import experts

    mod = _quantized("fp8", "mixtral", "cpu")
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    index, weights = routing(3)
    want = mod(x, index, weights)  # (not capturing: the loop runs)
    monkeypatch.setattr(experts, "_capturing", lambda x: True)
    why = mod.path(3, 2, x)[len("loop: "):]
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph") as err:
        mod(x, index, weights)
    assert f"loop ({why})" in str(err.value)
    monkeypatch.setattr(experts, "_capturing", lambda x: False)
    assert torch.equal(mod(x, index, weights), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_loop_under_capture_raises_by_name():
    from lowbit.nn._experts_grouped import MAX_PAIRS

    mod = _quantized("int8", "mixtral", "cuda")
    tokens = MAX_PAIRS // 2 + 1  # (top-2: one pair past the grouped kernel's)
    x = torch.randn(tokens, 64, device="cuda", dtype=torch.bfloat16)
    index, weights = routing(tokens, device="cuda")
    with torch.no_grad():
        mod(x, index, weights)  # (the loop runs eagerly)
        graph = torch.cuda.CUDAGraph()
        with pytest.raises(RuntimeError, match="routed pairs.*cannot be captured"):
            with torch.cuda.graph(graph):
                mod(x, index, weights)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("scheme", ["fp8", "int8"])
def test_grouped_path_captures_in_a_cuda_graph(scheme, monkeypatch):
    from lowbit.triton_kernels import experts_gemm

    # (an earlier test's experts freed at these weights' addresses left a table for them)
    monkeypatch.setattr(experts_gemm, "_TABLES", {})
    # (quantize_'s device check runs a forward, which would build the table)
    mod = _quantized(scheme, "gpt-oss", "cuda", check_device=False)
    x = torch.randn(3, 64, device="cuda", dtype=torch.bfloat16)
    index, weights = routing(3, device="cuda")
    with torch.no_grad():
        graph = torch.cuda.CUDAGraph()
        with pytest.raises(RuntimeError, match="run one forward of the layer before"):
            with torch.cuda.graph(graph):  # (no eager forward yet: no address table)
                mod(x, index, weights)
        want = mod(x, index, weights)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = mod(x, index, weights)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, want)
        other_index, other_weights = routing(3, seed=1, device="cuda")
        index.copy_(other_index)  # another routing, replayed from the device
        weights.copy_(other_weights)
        graph.replay()
        torch.cuda.synchronize()
        want = mod(x, other_index, other_weights)
    assert not torch.equal(want, mod(x, *routing(3, device="cuda")))
    assert torch.equal(out, want)
