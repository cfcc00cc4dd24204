"""lowbit._torch_ops: the C++ implementations of the registered ops of lowbit._native.OPS
on CUDA tensors (csrc/torch/plans.cpp, lowbit/_native.py).

On the CPU: the library loads where it was built, registers the CUDA kernels, and the
context managers hold its plans off. On a GPU: a call served by a plan gives the bits of the
Python path, a signature that passed once still rejects a later call whose tensors differ,
and what Python holds in context (use_backend, explain) reaches the op. Asymmetric INT8
activations get no plan.
"""
import contextlib
import importlib.util

import pytest
import torch
from torch import nn

import lowbit
from lowbit import _native, heuristics
from lowbit.nn import Fp8Linear, Int8Linear

BUILT = importlib.util.find_spec("lowbit._torch_ops_build") is not None
needs_native = pytest.mark.skipif(not _native.loaded(), reason=f"lowbit._torch_ops: "
                                  f"{_native.status()}")


@pytest.fixture(autouse=True)
def _no_plans():
    """Each test starts with no plan kept (another file may have run the same signatures)."""
    _native.reset()
    yield


def test_status_says_why():
    status = _native.status()
    if not BUILT:
        assert status.startswith("not built"), status
    elif _native.loaded():
        assert status.startswith("loaded (built against torch "), status
    else:
        assert status.startswith(("not loaded", "off")), status


@pytest.mark.skipif(not BUILT, reason="lowbit._torch_ops was not built here")
def test_the_built_library_loads_under_its_torch():
    from lowbit._torch_ops_build import TORCH_VERSION
    assert TORCH_VERSION == torch.__version__
    assert _native.loaded() or _native.status() == "off (LOWBIT_NATIVE_OPS=0)"


@needs_native
@pytest.mark.parametrize("op", _native.OPS)
def test_cuda_kernels_are_registered_in_cpp(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lowbit::{op}", "CUDA")
    assert hasattr(torch.ops.lowbit, f"_{op}_prepare") and _native.serves(op)
    assert not _native.serves("no_such_op")


def test_every_registered_op_is_implemented_in_cpp():
    """A new op is added to the C++ table too (its torch.ops calls would otherwise pay the
    Python implementation's host time)."""
    assert sorted(_native.OPS) == sorted(lowbit.ops.DEFS)


@needs_native
def test_use_backend_and_explain_hold_the_plans_off():
    assert _native.stats()["hold"] == 0
    with lowbit.use_backend("reference"):
        assert _native.stats()["hold"] == 1
        with lowbit.use_backend("auto"):
            assert _native.stats()["hold"] == 2
    assert _native.stats()["hold"] == 0
    mod = Fp8Linear.from_linear(nn.Linear(64, 32).to(torch.bfloat16))
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    seen = []
    real = _native.hold

    def spy(delta):
        seen.append(delta)
        return real(delta)

    import lowbit._backend as backend
    old, backend._native_hold = backend._native_hold, spy
    try:
        choice = lowbit.explain(lowbit.fp8_linear, x, mod.weight, mod.weight_scale, mod.bias)
    finally:
        backend._native_hold = old
    assert choice.backend == "reference" and seen == [1, -1]
    with pytest.raises(ValueError):
        with lowbit.use_backend("reference"):
            raise ValueError("inside")
    assert _native.stats()["hold"] == 0


def test_prepare_returns_the_python_output_and_no_plan_on_the_cpu():
    mod = Fp8Linear.from_linear(nn.Linear(64, 32).to(torch.bfloat16))
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    y, plan = torch.ops.lowbit._fp8_linear_prepare(x, *mod._state(), "default")
    assert torch.equal(y, mod(x)) and plan == []
    imod = Int8Linear.from_linear(nn.Linear(64, 32).to(torch.bfloat16))
    y, plan = torch.ops.lowbit._int8_linear_prepare(x, *imod._state(), "default")
    assert torch.equal(y, imod(x)) and plan == []


def test_a_step_without_a_fused_launch_has_the_no_plan_plan():
    """A step that is not one fused launch: the "no plan" plan (launch 0), which sends the
    signature's module calls to Python, or, for a single op, names the step for the eager
    entry to hand back (kept alive until a reset); no step at all: nothing to keep."""
    assert _native.plan(None) == []

    def step(x):
        return x

    want = [_native.PLAN_FORMAT, 0, 0, 0, 0] if _native.loaded() else []
    assert _native.plan(step) == want
    want = [_native.PLAN_FORMAT, 0, 0, 0, id(step)] if _native.loaded() else []
    assert _native.plan(step, python_step=True) == want
    assert (step in _native._keep.values()) == _native.loaded()
    _native.reset()
    assert not _native._keep


def test_the_entries_are_not_used_under_a_backend_of_a_copied_context(monkeypatch):
    """A context copied inside a use_backend block that runs after it still has the block's
    backend, which the plans cannot see: the eager API and the modules do not enter them."""
    import contextvars

    from lowbit.nn import _layer
    called = []

    def entry(*args):
        called.append(args)
        return None  # "Python serves it"

    monkeypatch.setitem(_native.ENTRY, "fp8_scaled_mm", entry)
    monkeypatch.setattr(_layer, "_MODULE_ENTRY", {"fp8_linear": entry})
    mod = Fp8Linear.from_linear(nn.Linear(64, 32).to(torch.bfloat16))
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    a, sa = lowbit.quantize_fp8(x, granularity="token")

    def calls():
        lowbit.fp8_scaled_mm(a, mod.weight, sa, mod.weight_scale)
        mod(x)

    with lowbit.use_backend("reference"):
        copied = contextvars.copy_context()
    copied.run(calls)
    assert called == []
    calls()
    assert len(called) == 2


@needs_native
@pytest.mark.parametrize("op", ["fp8_linear", "int8_linear"])
def test_the_module_entry_leaves_what_plans_do_not_take_to_python(op):
    entry = _native.MODULE_ENTRY[op]
    mod = (Fp8Linear if op == "fp8_linear" else Int8Linear).from_linear(
        nn.Linear(64, 32).to(torch.bfloat16))
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert entry(mod, x) is None  # a CPU tensor
    assert entry(mod, nn.Parameter(x)) is None  # not exactly a torch.Tensor
    assert entry(nn.Linear(2, 2), x) is None
    with pytest.raises(TypeError, match=f"{op}_module.module, x. takes 2 arguments; got 1"):
        entry(mod)


@needs_native
def test_a_plan_is_what_csrc_torch_linear_ops_reads_and_keeps_its_launch_alive():
    class Launch:  # stands for _C.Fp8LinearLaunch
        def native(self):
            return 0x1000, 0x2000

    def step():
        pass

    launch = Launch()
    step.native = lambda: (launch, 4096)
    plan = _native.plan(step)
    # [kPlanFormat, launch function, object, workspace bytes, Python step]
    assert plan == [_native.PLAN_FORMAT, 0x2000, 0x1000, 4096, 0]
    assert _native.plan(step, python_step=True) == plan  # (a launch: no Python step)
    assert launch in _native._keep.values()
    _native.reset()
    assert not _native._keep and _native.stats()["plans"] == 0


# ------------------------------------------------------------------------------- GPU
def _fp8(k=512, n=384, bias=True, static=False, dtype=torch.bfloat16, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias).to("cuda", dtype)
    act = torch.tensor(0.02) if static else None
    return Fp8Linear.from_linear(lin, act_scale=act)


def _int8(k=512, n=384, bias=True, static=False, symmetric=True, dtype=torch.bfloat16, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias).to("cuda", dtype)
    act = torch.tensor(0.03) if static else None
    zero = torch.tensor(3, dtype=torch.int32) if static and not symmetric else None
    return Int8Linear.from_linear(lin, act_scale=act, act_symmetric=symmetric, act_zero=zero)


CASES = [("fp8", dict()), ("fp8", dict(bias=False)), ("fp8", dict(static=True)),
         ("int8", dict()), ("int8", dict(symmetric=False)), ("int8", dict(static=True)),
         ("int8", dict(static=True, symmetric=False, bias=False))]


def _make(family, **kw):
    return (_fp8 if family == "fp8" else _int8)(**kw)


def _op(mod):
    ops = torch.ops.lowbit
    return ops.fp8_linear if isinstance(mod, Fp8Linear) else ops.int8_linear


def _replayed(fn, x):
    """fn captured in a CUDA graph on a copy of x, replayed on new values: (output, input)."""
    static = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fn(static)
    x2 = torch.randn_like(x)
    static.copy_(x2)
    graph.replay()
    torch.cuda.synchronize()
    return captured, x2


@contextlib.contextmanager
def _python_path():
    """Every call in the block served by Python (the plans held off, as lowbit.use_backend
    holds them): the module's own step, the op's Python implementation."""
    _native.hold(1)
    try:
        yield
    finally:
        _native.hold(-1)


@needs_native
@pytest.mark.gpu
@pytest.mark.parametrize("family,kw", CASES, ids=[f"{f}-{kw}" for f, kw in CASES])
@pytest.mark.parametrize("lead", [(1,), (16,), (3, 45)], ids=["m1", "m16", "3x45"])
def test_a_plan_gives_the_bits_of_the_python_path(family, kw, lead):
    """... and asymmetric INT8 activations get no plan: every call runs Python's."""
    planned = not (family == "int8" and kw.get("symmetric") is False)
    mod = _make(family, **kw)
    x = torch.randn(*lead, mod.in_features, dtype=torch.bfloat16, device="cuda")
    with _python_path():
        want = mod(x)
    op = _op(mod)
    before = _native.stats()
    first = op(x, *mod._state(), "default")  # a miss: Python prepares the plan
    after_first = _native.stats()
    assert after_first["misses"] == before["misses"] + 1
    for _ in range(2):
        x2 = torch.randn_like(x)
        got = op(x2, *mod._state(), "default")  # served by the plan
        with _python_path():
            assert torch.equal(got, mod(x2)), "plan and Python path differ"
    if planned:
        assert _native.stats()["hits"] >= after_first["hits"] + 2
    else:
        assert _native.stats()["hits"] == after_first["hits"]
        assert _native.stats()["misses"] >= after_first["misses"] + 2
    assert torch.equal(first, want)


@needs_native
@pytest.mark.gpu
def test_layers_of_one_signature_share_a_plan_with_their_own_tensors():
    mods = [_fp8(seed=s) for s in range(3)]
    x = torch.randn(4, 512, dtype=torch.bfloat16, device="cuda")
    op = torch.ops.lowbit.fp8_linear
    for m in mods:
        op(x, *m._state(), "default")
    plans = _native.stats()["plans"]
    for m in mods:
        assert torch.equal(op(x, *m._state(), "default"), m(x))
    assert _native.stats()["plans"] == plans


@needs_native
@pytest.mark.gpu
def test_a_known_signature_still_rejects_what_differs():
    mod = _fp8()
    op = torch.ops.lowbit.fp8_linear
    x = torch.randn(4, 512, dtype=torch.bfloat16, device="cuda")
    for _ in range(2):
        op(x, *mod._state(), "default")
    w, s, b, a = mod._state()
    bad = [
        ((x, w.view(torch.int8), s, b, a), "weight"),  # dtype
        ((x, w[:, :256], s, b, a), "K"),  # shape
        ((x, w, s.reshape(-1), b, a), "weight_scale"),  # shape
        ((x, w, s, b.cpu(), a), "device"),  # device
        ((x.float().to(torch.int32), w, s, b, a), "x"),
    ]
    for args, what in bad:
        with pytest.raises((TypeError, ValueError, RuntimeError), match="fp8_linear") as e:
            op(*args, "default")
        assert what in str(e.value), (what, str(e.value))
    # Another alignment (x one element in) is another signature: right, through Python.
    buf = torch.randn(4 * 512 + 1, dtype=torch.bfloat16, device="cuda")
    shifted = buf[1:].view(4, 512)
    assert torch.equal(op(shifted, *mod._state(), "default"), mod(shifted.clone()))
    # And a strided x (a column slice) another again.
    wide = torch.randn(4, 1024, dtype=torch.bfloat16, device="cuda")
    assert torch.equal(op(wide[:, :512], *mod._state(), "default"), mod(wide[:, :512].contiguous()))


@needs_native
@pytest.mark.gpu
def test_use_backend_reaches_a_known_signature():
    pytest.importorskip("triton")
    mod = _fp8()
    op = torch.ops.lowbit.fp8_linear
    x = torch.randn(4, 512, dtype=torch.bfloat16, device="cuda")
    for _ in range(2):
        y = op(x, *mod._state(), "default")
    with lowbit.use_backend("reference"):
        hits = _native.stats()["hits"]
        ref = op(x, *mod._state(), "default")
        assert _native.stats()["hits"] == hits, "a held plan served a call"
    assert torch.equal(ref.cpu(), lowbit.fp8_linear(x.cpu(), *[t if t is None else t.cpu()
                                                            for t in mod._state()]))
    assert torch.equal(op(x, *mod._state(), "default"), y)


@needs_native
@pytest.mark.gpu
def test_an_environment_switch_empties_the_plans(monkeypatch):
    mod = _fp8()
    op = torch.ops.lowbit.fp8_linear
    x = torch.randn(4, 512, dtype=torch.bfloat16, device="cuda")
    for _ in range(2):
        y = op(x, *mod._state(), "default")
    monkeypatch.setenv("LOWBIT_ARCH", "80")
    misses = _native.stats()["misses"]
    got = op(x, *mod._state(), "default")
    assert _native.stats()["misses"] == misses + 1, "the plan of another arch served a call"
    assert (got.float() - y.float()).abs().max() < 0.05 * y.float().abs().max()


@needs_native
@pytest.mark.gpu
def test_a_compiled_model_runs_the_plans_and_matches_eager():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 128),
                          nn.Linear(128, 256)).to("cuda", torch.bfloat16)
    model[0] = Fp8Linear.from_linear(model[0])
    model[2] = Int8Linear.from_linear(model[2])
    model[3] = Int8Linear.from_linear(model[3], act_symmetric=False)
    x = torch.randn(5, 256, dtype=torch.bfloat16, device="cuda")
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    hits = _native.stats()["hits"]
    outs = [compiled(x) for _ in range(3)]
    assert all(torch.equal(o, eager) for o in outs)
    # Two planned layers (the asymmetric one runs Python), their first compiled call a miss.
    assert _native.stats()["hits"] >= hits + 4, "the compiled graph's calls ran no plan"
    compiled(x.clone())
    captured, x2 = _replayed(compiled, x)
    assert torch.equal(captured, model(x2))


@needs_native
@pytest.mark.gpu
@pytest.mark.parametrize("family,kw", CASES, ids=[f"{f}-{kw}" for f, kw in CASES])
def test_a_module_forward_runs_the_plan_of_its_signature(family, kw):
    """The module's eager forward enters the plans with no dispatcher: its first call of a
    signature goes through the registered op (which prepares the plan), the next ones are
    served by the plan, with the Python path's bits. A signature with no plan (asymmetric
    INT8) runs the module's own Python step, without the dispatcher either."""
    planned = not (family == "int8" and kw.get("symmetric") is False)
    mod = _make(family, **kw)
    x = torch.randn(3, 45, mod.in_features, dtype=torch.bfloat16, device="cuda")
    before = _native.stats()
    first = mod(x)
    after_first = _native.stats()
    assert after_first["misses"] == before["misses"] + 1, "an unseen signature: the op"
    for _ in range(2):
        x2 = torch.randn_like(x)
        got = mod(x2)
        with _python_path():
            assert torch.equal(got, mod(x2)), "the module's plan and Python path differ"
    after = _native.stats()
    assert after["misses"] == after_first["misses"], "a known signature went to the op"
    assert after["hits"] == after_first["hits"] + (2 if planned else 0)
    if not planned:
        assert mod._step is not None, "no plan: the module's own step"
    with _python_path():
        assert torch.equal(first, mod(x))


@needs_native
@pytest.mark.gpu
@pytest.mark.parametrize("arch", [None, "89", "80"], ids=["native", "sm89", "sm80"])
def test_a_module_plan_follows_its_tensors_and_the_arch(monkeypatch, arch):
    """A plan reads the module's tensors on every call: new tensors (load_state_dict with
    assign, register_buffer, new storage under the same tensor) are used at once; and the
    arch switch prepares the plan of that arch's kernels."""
    if arch is not None:
        monkeypatch.setenv("LOWBIT_ARCH", arch)
    mod, other, third = (_fp8(k=1024, n=256, seed=s) for s in (0, 5, 6))
    x = torch.randn(1, 1024, dtype=torch.bfloat16, device="cuda")

    def python(m, x):
        with _python_path():
            return m(x)

    hits = _native.stats()["hits"]
    for _ in range(2):  # the op (unseen), then the plan
        assert torch.equal(mod(x), python(mod, x))
    mod.load_state_dict(other.state_dict(), assign=True)
    assert torch.equal(mod(x), python(other, x))
    mod.register_buffer("weight_scale", mod.weight_scale * 2)
    got = mod(x)
    assert torch.equal(got, python(mod, x)) and not torch.equal(got, python(other, x))
    mod.weight.data = third.weight.clone()
    assert torch.equal(mod(x), python(mod, x))
    assert _native.stats()["hits"] == hits + 4, "the plan served the module's calls"


@needs_native
@pytest.mark.gpu
def test_a_module_says_the_same_errors_on_every_path():
    """Bad input to a module whose plans serve its good input: the errors of the module's
    Python path (module check, then the op's)."""
    mod = _fp8()
    x = torch.randn(4, 512, dtype=torch.bfloat16, device="cuda")
    for _ in range(2):
        mod(x)
    bias = torch.randn(383, dtype=torch.bfloat16, device="cuda")
    bad_inputs = [x[:, :256], x.to(torch.int32), x.double()[0, 0], x.cpu()]
    for bad in bad_inputs:
        errors = []
        for path in (contextlib.nullcontext, _python_path):
            with path(), pytest.raises((TypeError, ValueError, RuntimeError)) as e:
                mod(bad)
            errors.append((type(e.value), str(e.value)))
        assert errors[0] == errors[1], bad.shape
    # A module tensor of the wrong shape (set by hand): the op's error, on both paths.
    mod.bias.data = bias
    errors = []
    for path in (contextlib.nullcontext, _python_path):
        with path(), pytest.raises((TypeError, ValueError)) as e:
            mod(x)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "bias" in errors[0]


@needs_native
@pytest.mark.gpu
def test_an_eager_model_matches_its_compiled_self_and_its_graph():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256)).to(
        "cuda", torch.bfloat16)
    model[0] = Fp8Linear.from_linear(model[0])
    model[2] = Int8Linear.from_linear(model[2])
    x = torch.randn(16, 256, dtype=torch.bfloat16, device="cuda")
    eager = [model(x) for _ in range(3)]  # the op, then the plans
    assert all(torch.equal(e, eager[0]) for e in eager)
    assert torch.equal(torch.compile(model, fullgraph=True)(x), eager[0])
    captured, x2 = _replayed(model, x)
    with _python_path():
        assert torch.equal(captured, model(x2))


def _bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


def _same(a, b):
    a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
    return len(a) == len(b) and all(torch.equal(_bits(x), _bits(y)) for x, y in zip(a, b))


QUANT_CASES = [dict(granularity="token"), dict(granularity="tensor"),
               dict(granularity="channel"), dict(granularity="group", group_size=64),
               dict(granularity="block", block=(1, 128)), dict(granularity="block"),
               dict(granularity="token", fmt="e5m2"), dict(granularity="tensor", saturate=False),
               dict(granularity="tensor", static=True)]


@needs_native
@pytest.mark.gpu
@pytest.mark.parametrize("kw", QUANT_CASES, ids=lambda kw: "-".join(map(str, kw.values())))
@pytest.mark.parametrize("shape", [(1, 256), (3, 50, 384), (300, 1024)], ids=str)
def test_quantize_fp8_plans_give_the_bits_of_the_python_path(kw, shape):
    """lowbit.quantize_fp8 and torch.ops.lowbit.quantize_fp8 of a known signature run its
    plan (the dynamic per-tensor scale with its workspace word), with Python's bits."""
    kw = dict(kw)
    if len(shape) > 2 and kw["granularity"] in ("channel", "block"):
        pytest.skip("per-channel and block scales take 2-D x")
    x = torch.randn(*shape, dtype=torch.bfloat16, device="cuda") * 3
    scale = (x.abs().amax().float() / 448) if kw.pop("static", False) else None
    op = torch.ops.lowbit.quantize_fp8
    full = dict(dict(fmt="e4m3fn", granularity="tensor", group_size=128, block=(128, 128),
                     saturate=True), **kw)
    args = (scale, full["fmt"], full["granularity"], full["group_size"], list(full["block"]),
            full["saturate"], "default")
    hits = _native.stats()["hits"]
    for _ in range(3):
        x2 = torch.randn_like(x) * 3
        got, got_op = lowbit.quantize_fp8(x2, scale, **kw), op(x2, *args)
        with _python_path():
            want = lowbit.quantize_fp8(x2, scale, **kw)
        assert _same(got, want) and _same(tuple(got_op), want)
    assert _native.stats()["hits"] >= hits + 4, "no plan served the known signature"


DEQUANT_CASES = [  # (family, the quantizer's arguments, out_dtype, q's layout)
    ("fp8", dict(granularity="token"), torch.bfloat16, "2d"),
    ("fp8", dict(granularity="tensor", fmt="e5m2"), torch.float32, "3d"),
    ("fp8", dict(granularity="block"), torch.float16, "2d"),
    ("fp8", dict(granularity="block"), torch.bfloat16, "transposed"),  # (3, 2) -> (2, 3)
    ("fp8", dict(granularity="tensor"), torch.bfloat16, "unmergeable"),
    ("int8", dict(granularity="token"), torch.bfloat16, "2d"),
    ("int8", dict(granularity="tensor", symmetric=False), torch.float16, "3d"),
    ("int8", dict(granularity="group", group_size=64, symmetric=False), torch.float32, "2d"),
    ("int8", dict(granularity="tensor", symmetric=False), torch.bfloat16, "transposed"),
    ("int8", dict(granularity="tensor"), torch.bfloat16, "unmergeable"),
]


def _dequant_inputs(family, kw, layout):
    """(q, scale, zero) as the family's quantizer makes them, q laid out as ``layout``
    says: contiguous 2-D or 3-D, a transposed 2-D view, or a 3-D view whose leading
    dimensions no single stride describes (the dequantizer copies it: no plan)."""
    shape = {"2d": (256, 512), "3d": (3, 50, 384), "transposed": (384, 256),
             "unmergeable": (6, 40, 128)}[layout]
    x = torch.randn(*shape, dtype=torch.bfloat16, device="cuda") * 3
    if family == "fp8":
        q, scale = lowbit.quantize_fp8(x, **kw)
        zero = None
    else:
        q, scale, zero = lowbit.quantize_int8(x, **kw)
    if layout == "transposed":
        q, scale = q.t(), scale.t().contiguous()
        zero = None if zero is None else zero.t().contiguous()
    elif layout == "unmergeable":
        q = q.permute(1, 0, 2)  # [40, 6, 128]: rows 40 x 6 with no single stride
    return q, scale, zero


@needs_native
@pytest.mark.gpu
@pytest.mark.parametrize("case", DEQUANT_CASES,
                         ids=lambda c: f"{c[0]}-{'-'.join(map(str, c[1].values()))}-{c[3]}")
def test_dequantize_plans_give_the_bits_of_the_python_path(case):
    """lowbit.dequantize_fp8 / dequantize_int8 and their torch.ops calls of a known signature
    run its plan where the kernel reads q in place (contiguous or a transposed view), with
    Python's bits; a q the kernel must copy gets no plan and the same bits."""
    family, kw, out_dtype, layout = case
    q, scale, zero = _dequant_inputs(family, kw, layout)
    if family == "fp8":
        def eager(q):
            return lowbit.dequantize_fp8(q, scale, out_dtype=out_dtype)

        def through_op(q):
            return torch.ops.lowbit.dequantize_fp8(q, scale, out_dtype, "default")
    else:
        def eager(q):
            return lowbit.dequantize_int8(q, scale, zero, out_dtype=out_dtype)

        def through_op(q):
            return torch.ops.lowbit.dequantize_int8(q, scale, zero, out_dtype, "default")
    assert lowbit.explain(eager, q).kernel.startswith("cuda_")
    eager(q)  # prepared
    others = [_dequant_inputs(family, kw, layout)[0] for _ in range(3)]  # (quantizer plans)
    hits = _native.stats()["hits"]
    for q2 in others:
        got, got_op = eager(q2), through_op(q2)
        with _python_path():
            want = eager(q2)
        assert got.dtype == out_dtype and got.shape == q2.shape
        assert _same(got, want) and _same(got_op, want)
    planned = layout != "unmergeable"
    assert _native.stats()["hits"] == hits + (6 if planned else 0)


GEMM_CASES = [  # (M, N, K, scales, bias, out_dtype, fast_accum)
    (1, 512, 1024, "row", False, torch.bfloat16, False),      # swap-AB
    (16, 384, 512, "row", True, torch.float16, False),
    (300, 256, 512, "tensor", True, torch.bfloat16, True),
    (256, 256, 512, "block", False, torch.float32, False),
]


@needs_native
@pytest.mark.gpu
@pytest.mark.parametrize("arch", [None, "89", "80"], ids=["native", "sm89", "sm80"])
@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: f"m{c[0]}-{c[3]}-{c[5]}")
def test_fp8_scaled_mm_plans_give_the_bits_of_the_python_path(monkeypatch, arch, case):
    if arch is not None:
        monkeypatch.setenv("LOWBIT_ARCH", arch)
    m, n, k, scales, bias, out_dtype, fast_accum = case
    gran = {"row": ("token", "channel"), "tensor": ("tensor", "tensor"),
            "block": (("block", (1, 128)), ("block", (128, 128)))}[scales]

    def quant(t, g):
        g, block = (g if isinstance(g, tuple) else (g, (128, 128)))
        return lowbit.quantize_fp8(t, granularity=g, block=block)

    b, sb = quant(torch.randn(n, k, device="cuda"), gran[1])
    bias_t = torch.randn(n, dtype=torch.bfloat16, device="cuda") if bias else None
    op = torch.ops.lowbit.fp8_scaled_mm
    hits = _native.stats()["hits"]
    for _ in range(3):
        a, sa = quant(torch.randn(m, k, device="cuda"), gran[0])
        got = lowbit.fp8_scaled_mm(a, b, sa, sb, bias_t, out_dtype=out_dtype,
                                   fast_accum=fast_accum)
        got_op = op(a, b, sa, sb, bias_t, out_dtype, fast_accum, "default")
        with _python_path():
            want = lowbit.fp8_scaled_mm(a, b, sa, sb, bias_t, out_dtype=out_dtype,
                                        fast_accum=fast_accum)
        assert got.dtype == out_dtype and torch.equal(got, want) and torch.equal(got_op, want)
    chosen = lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb, bias_t, out_dtype=out_dtype,
                            fast_accum=fast_accum)
    if chosen.backend == "cuda":  # (else a Triton kernel: the plan names its Python step)
        assert _native.stats()["hits"] >= hits + 4, "no plan served the known signature"


INT8_QUANT_CASES = [dict(granularity="token"), dict(granularity="token", symmetric=False),
                    dict(granularity="tensor"), dict(granularity="tensor", symmetric=False),
                    dict(granularity="group", group_size=64), dict(granularity="block"),
                    dict(granularity="tensor", static=True),
                    dict(granularity="tensor", symmetric=False, static=True)]


def _present(outputs):
    """The outputs of lowbit.quantize_int8 without its None zero point (symmetric)."""
    return tuple(t for t in outputs if t is not None)


@needs_native
@pytest.mark.gpu
@pytest.mark.parametrize("kw", INT8_QUANT_CASES, ids=lambda kw: "-".join(map(str, kw.values())))
@pytest.mark.parametrize("shape", [(1, 256), (3, 50, 384), (300, 1024)], ids=str)
def test_quantize_int8_plans_give_the_bits_of_the_python_path(kw, shape):
    """lowbit.quantize_int8 and torch.ops.lowbit.quantize_int8 of a known signature run its
    plan (dynamic per-tensor scales with their workspace, asymmetric zero points, the empty
    zero point of a symmetric quantizer), with Python's bits."""
    kw = dict(kw)
    if len(shape) > 2 and kw["granularity"] == "block":
        pytest.skip("block scales take 2-D x")
    x = torch.randn(*shape, dtype=torch.bfloat16, device="cuda") * 3 + 0.5
    symmetric = kw.get("symmetric", True)
    scale = zero = None
    if kw.pop("static", False):
        scale = x.abs().amax().float() / 127
        zero = None if symmetric else torch.tensor(3, dtype=torch.int32, device="cuda")
    op = torch.ops.lowbit.quantize_int8
    full = dict(dict(granularity="token", group_size=128, block=(128, 128), symmetric=True), **kw)
    args = (scale, zero, full["granularity"], full["group_size"], list(full["block"]),
            full["symmetric"], "default")
    hits = _native.stats()["hits"]
    for _ in range(3):
        x2 = torch.randn_like(x) * 3 + 0.5
        got = lowbit.quantize_int8(x2, scale, zero=zero, **kw)
        got_op = op(x2, *args)
        with _python_path():
            want = lowbit.quantize_int8(x2, scale, zero=zero, **kw)
            want_op = op(x2, *args)
        assert (got[2] is None) == symmetric and (want[2] is None) == symmetric
        assert _same(_present(got), _present(want)) and _same(tuple(got_op), tuple(want_op))
        assert _same(tuple(got_op)[:2], _present(want)[:2])
        assert got_op[2].dtype == torch.int32 and got_op[2].numel() == (0 if symmetric else
                                                                        want[1].numel())
    chosen = lowbit.explain(lowbit.quantize_int8, x, scale, zero=zero, **kw)
    if chosen.backend == "cuda":  # (else a Triton kernel: the plan names its Python step)
        assert _native.stats()["hits"] >= hits + 4, "no plan served the known signature"
        # The eager entry does not make the empty zero points that the API drops.
        served = _native.ENTRY["quantize_int8"](x, *args)
        assert type(served) is tuple and (served[2] is None) == symmetric


INT8_GEMM_CASES = [  # (M, N, K, per-row scales, bias, out_dtype)
    (1, 512, 1024, True, False, torch.bfloat16),      # swap-AB
    (16, 384, 512, True, True, torch.float16),
    (300, 256, 512, False, True, torch.bfloat16),
    (256, 256, 512, True, False, torch.float32),
]


@needs_native
@pytest.mark.gpu
@pytest.mark.parametrize("arch", [None, "80"], ids=["native", "sm80"])
@pytest.mark.parametrize("case", INT8_GEMM_CASES, ids=lambda c: f"m{c[0]}-{c[5]}")
def test_int8_gemm_plans_give_the_bits_of_the_python_path(monkeypatch, arch, case):
    """int8_gemm (symmetric: a plan) and int8_mm of a known signature, eager and through
    torch.ops, give Python's bits; with a zero point the signature has no launch (the row
    sums of b are one more kernel), its plan names the Python step, and it still gives
    Python's bits."""
    if arch is not None:
        monkeypatch.setenv("LOWBIT_ARCH", arch)
    m, n, k, rows, bias, out_dtype = case
    g = torch.Generator(device="cuda").manual_seed(m + n)
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda", generator=g)
    sb = torch.rand(n, 1, device="cuda", generator=g) if rows else torch.tensor(0.02, device="cuda")
    bias_t = torch.randn(n, dtype=torch.bfloat16, device="cuda") if bias else None
    gemm, mm = torch.ops.lowbit.int8_gemm, torch.ops.lowbit.int8_mm
    hits = _native.stats()["hits"]
    for _ in range(3):
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8, device="cuda", generator=g)
        sa = torch.rand(m, 1, device="cuda", generator=g) if rows else torch.tensor(
            0.01, device="cuda")
        za = torch.randint(-128, 128, (m, 1), dtype=torch.int32, device="cuda", generator=g)
        got = lowbit.int8_gemm(a, b, sa, sb, bias_t, out_dtype=out_dtype)
        got_op = gemm(a, b, sa, sb, bias_t, out_dtype, None, "default")
        got_mm, got_mm_op = lowbit.int8_mm(a, b), mm(a, b, "default")
        got_z = lowbit.int8_gemm(a, b, sa, sb, bias_t, out_dtype=out_dtype, a_zero=za)
        with _python_path():
            want = lowbit.int8_gemm(a, b, sa, sb, bias_t, out_dtype=out_dtype)
            want_mm = lowbit.int8_mm(a, b)
            want_z = lowbit.int8_gemm(a, b, sa, sb, bias_t, out_dtype=out_dtype, a_zero=za)
        assert got.dtype == out_dtype and torch.equal(got, want) and torch.equal(got_op, want)
        assert torch.equal(got_mm, want_mm) and torch.equal(got_mm_op, want_mm)
        assert torch.equal(got_z, want_z)
    # A zero point: no launch for the plan, which names the Python step instead.
    step = _native.ENTRY["int8_gemm"](a, b, sa, sb, bias_t, out_dtype, za, "default")
    assert type(step) is list and torch.equal(step[0](a, b, sa, sb, bias_t, out_dtype, za),
                                              got_z)
    chosen = [lowbit.explain(lowbit.int8_gemm, a, b, sa, sb, bias_t, out_dtype=out_dtype),
              lowbit.explain(lowbit.int8_mm, a, b)]
    served = sum(4 for c in chosen if c.backend == "cuda")  # (Triton: Python serves it)
    assert _native.stats()["hits"] >= hits + served, "no plan served the known signature"


@needs_native
@pytest.mark.gpu
def test_entries_leave_tensors_without_a_strided_storage_to_python():
    """A meta or sparse tensor has no pointer a plan could key: the entry answers None (the
    Python path then says what the op takes), and raises nothing of its own."""
    a, sa = lowbit.quantize_fp8(torch.randn(16, 512, device="cuda"), granularity="token")
    b, sb = lowbit.quantize_fp8(torch.randn(256, 512, device="cuda"), granularity="channel")
    entry = _native.ENTRY["fp8_scaled_mm"]
    for odd in (sb.to("meta"), torch.eye(256, 1, device="cuda").to_sparse()):
        assert entry(a, b, sa, odd, None, torch.bfloat16, False, "default") is None
    mod = _fp8()
    mod.register_buffer("weight_scale", mod.weight_scale.to("meta"))
    x = torch.randn(4, 512, dtype=torch.bfloat16, device="cuda")
    assert _native.MODULE_ENTRY["fp8_linear"](mod, x) is None


@needs_native
@pytest.mark.gpu
def test_known_op_signatures_still_reject_what_differs():
    """Eager and through torch.ops, after a signature has its plan: every bad argument gets
    the Python path's error."""
    a, sa = lowbit.quantize_fp8(torch.randn(16, 512, device="cuda"), granularity="token")
    b, sb = lowbit.quantize_fp8(torch.randn(256, 512, device="cuda"), granularity="channel")
    a8 = torch.randint(-127, 128, (16, 512), dtype=torch.int8, device="cuda")
    b8 = torch.randint(-127, 128, (256, 512), dtype=torch.int8, device="cuda")
    sa8, sb8 = torch.rand(16, 1, device="cuda"), torch.rand(256, 1, device="cuda")
    x = torch.randn(16, 512, device="cuda")
    for _ in range(2):
        lowbit.fp8_scaled_mm(a, b, sa, sb)
        lowbit.quantize_fp8(a.float(), granularity="token")
        lowbit.int8_gemm(a8, b8, sa8, sb8)
        lowbit.int8_mm(a8, b8)
        lowbit.quantize_int8(x, granularity="token")
        lowbit.quantize_int8(x, granularity="tensor", symmetric=False)
    calls = [
        lambda: lowbit.fp8_scaled_mm(a, b, sa[:8], sb),
        lambda: lowbit.fp8_scaled_mm(a, b, sa, sb.cpu()),
        lambda: lowbit.fp8_scaled_mm(a, b.view(torch.int8), sa, sb),
        lambda: lowbit.fp8_scaled_mm(a, b, sa, sb, out_dtype=torch.int32),
        lambda: lowbit.fp8_scaled_mm(a, b, sa, sb, backend="nope"),
        lambda: lowbit.quantize_fp8(a.float(), granularity="tokens"),
        lambda: lowbit.quantize_fp8(a.float().double(), granularity="token"),
        lambda: lowbit.quantize_fp8(a.float(), torch.ones(3, device="cuda"), granularity="token"),
        lambda: lowbit.int8_gemm(a8, b8, sa8[:8], sb8),
        lambda: lowbit.int8_gemm(a8, b8, sa8, sb8.cpu()),
        lambda: lowbit.int8_gemm(a8, b8.view(torch.uint8), sa8, sb8),
        lambda: lowbit.int8_gemm(a8, b8[:, :256], sa8, sb8),
        lambda: lowbit.int8_gemm(a8, b8, sa8, sb8, out_dtype=torch.int32),
        lambda: lowbit.int8_mm(a8, b8[:, :256]),
        lambda: lowbit.int8_mm(a8.float(), b8),
        lambda: lowbit.quantize_int8(x, granularity="tokens"),
        lambda: lowbit.quantize_int8(x.double(), granularity="token"),
        lambda: lowbit.quantize_int8(x, torch.ones(3, device="cuda"), granularity="token"),
        lambda: lowbit.quantize_int8(x, torch.ones((), device="cuda"), granularity="tensor",
                                     symmetric=False),
    ]
    for i, call in enumerate(calls):
        errors = []
        for path in (contextlib.nullcontext, _python_path):
            with path(), pytest.raises((TypeError, ValueError, RuntimeError)) as e:
                call()
            errors.append((type(e.value), str(e.value)))
        assert errors[0] == errors[1], i


@needs_native
@pytest.mark.gpu
def test_threads_share_the_plans():
    """Plans serve calls from several threads at once (no GIL on that path: the launch objects
    are shared under a lock), each thread on its own stream, and resets meanwhile."""
    import threading

    mods = [_fp8(seed=s) for s in range(2)] + [_int8(seed=s) for s in range(2)]
    xs = [torch.randn(8, 512, dtype=torch.bfloat16, device="cuda") for _ in range(4)]
    want = [[m(x) for x in xs] for m in mods]
    errors = []

    def work(t):
        try:
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                for i in range(50):
                    m = mods[(t + i) % len(mods)]
                    j = (t * 7 + i) % len(xs)
                    y = _op(m)(xs[j], *m._state(), "default")
                    stream.synchronize()
                    if not torch.equal(y, want[(t + i) % len(mods)][j]):
                        errors.append((t, i))
                    if t == 0 and i % 10 == 9:
                        _native.reset()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:5]
    assert _native.stats()["hits"] > 0


# ---- the weight-only GEMMs (w4a16_gemm on the prepacked layout, w8a16_gemm)


def _w4(n, k, group, symmetric, seed=0, perm=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    q = lowbit.int4_quantize(w, group_size=group, symmetric=symmetric)
    if perm:
        q = lowbit.Int4Weight(q.qweight, q.scales, q.zeros, q.group_size,
                              torch.randperm(k, generator=g))
    return q.to("cuda").prepack()


def _w4_args(w, x, bias):
    return (x, w.qweight, w.scales, w.zeros, w.group_size, w.perm, bias)


def _w8(n, k, group, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    q, s, _ = lowbit.quantize_int8(w, granularity="channel" if group == 0 else "group",
                                   group_size=group or 128)
    return q.cuda(), s.cuda()


W_ONLY = [("w4a16", 128, True), ("w4a16", 128, False), ("w4a16", -1, True),
          ("w4a16", 32, False), ("w8a16", 0, None), ("w8a16", 128, None)]


@needs_native
@pytest.mark.gpu
@pytest.mark.parametrize("kind,group,symmetric", W_ONLY,
                         ids=[f"{k}-g{g}-{s}" for k, g, s in W_ONLY])
@pytest.mark.parametrize("m", [1, 16, 40, 100])
def test_weight_only_plans_give_the_bits_of_the_python_path(kind, group, symmetric, m):
    """torch.ops and the eager API: the first call of a signature prepares the plan, the
    next ones are served by it (split launches with the plan's own counters; at M = 100 the
    wgmma kernel on sm_90; the two-step dequantize paths have none), bit for bit the Python
    path's, call after call."""
    n, k = 3000, 4224
    if kind == "w4a16":
        w = _w4(n, k, group, symmetric)
        op, api = torch.ops.lowbit.w4a16_gemm, lowbit.w4a16_gemm
        args = lambda x, b: _w4_args(w, x, b)  # noqa: E731
        call = lambda x, b: api(x, w, b)  # noqa: E731
    else:
        q, s = _w8(n, k, group)
        op, api = torch.ops.lowbit.w8a16_gemm, lowbit.w8a16_gemm
        args = lambda x, b: (x, q, s, b)  # noqa: E731
        call = lambda x, b: api(x, q, s, b)  # noqa: E731
    bias = torch.randn(n, dtype=torch.bfloat16, device="cuda") if m % 2 == 0 else None
    x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
    # One CUDA launch has a plan (not Triton, nor the two-step dequantize paths). Up to
    # M = 64 auto takes one CUDA launch on every card (N = 3000); above, the wgmma kernels on
    # sm_90 (all but int4 groups of 32), else the dequantize paths.
    kernel = lowbit.explain(call, x, bias).kernel
    planned = kernel.startswith(("cuda_", "sm90_")) and not kernel.endswith("_dequant")
    sm90 = heuristics.device_capability(x.device) == (9, 0)
    assert planned == (m <= 64 or (sm90 and group != 32)), kernel
    with _python_path():
        want = op(*args(x, bias), "default")
    first = op(*args(x, bias), "default")  # a miss: prepared
    assert torch.equal(first, want)
    hits = _native.stats()["hits"]
    for _ in range(3):
        x2 = torch.randn_like(x)
        got_op, got_api = op(*args(x2, bias), "default"), call(x2, bias)
        with _python_path():
            ref = op(*args(x2, bias), "default")
        assert torch.equal(got_op, ref) and torch.equal(got_api, ref), "plan and Python differ"
    assert _native.stats()["hits"] == hits + (6 if planned else 0)


@needs_native
@pytest.mark.gpu
def test_act_order_gets_no_plan_and_the_right_product():
    w = _w4(3000, 4224, 128, False, perm=True)
    x = torch.randn(1, 4224, dtype=torch.bfloat16, device="cuda")
    with _python_path():
        want = lowbit.w4a16_gemm(x, w)
    lowbit.w4a16_gemm(x, w)
    hits = _native.stats()["hits"]
    for _ in range(2):
        assert torch.equal(torch.ops.lowbit.w4a16_gemm(*_w4_args(w, x, None), "default"), want)
        assert torch.equal(lowbit.w4a16_gemm(x, w), want)
    assert _native.stats()["hits"] == hits


@needs_native
@pytest.mark.gpu
def test_weight_only_plans_decline_a_capture():
    """A planned split launch under CUDA graph capture declines (the Python path gives the
    graph's launch counters of its own): two graphs captured on one stream replay
    concurrently on two streams, and eager calls on the capture stream keep working."""
    w = _w4(256, 8192, 128, True)  # two row tiles, K split over many CTAs
    op = torch.ops.lowbit.w4a16_gemm
    x = torch.randn(1, 8192, dtype=torch.bfloat16, device="cuda")
    for _ in range(2):
        op(*_w4_args(w, x, None), "default")  # prepared, then planned
    stream = torch.cuda.Stream()
    graphs, statics, outs = [], [], []
    with torch.cuda.stream(stream):
        for _ in range(2):
            static = x.clone()
            graph = torch.cuda.CUDAGraph()
            misses = _native.stats()["misses"]
            with torch.cuda.graph(graph, stream=stream):
                outs.append(op(*_w4_args(w, static, None), "default"))
            assert _native.stats()["misses"] == misses + 1, "the plan launched in a capture"
            graphs.append(graph)
            statics.append(static)
        eager = op(*_w4_args(w, x, None), "default")  # the stream's own counters
    torch.cuda.synchronize()
    xs = [torch.randn_like(x) for _ in graphs]
    for static, v in zip(statics, xs):
        static.copy_(v)
    side = [torch.cuda.Stream(), torch.cuda.Stream()]
    torch.cuda.synchronize()
    for _ in range(20):
        for g, s in zip(graphs, side):
            with torch.cuda.stream(s):
                g.replay()
    torch.cuda.synchronize()
    with _python_path():
        for out, v in zip(outs, xs):
            assert torch.equal(out, op(*_w4_args(w, v, None), "default"))
        assert torch.equal(eager, op(*_w4_args(w, x, None), "default"))


@needs_native
@pytest.mark.gpu
def test_int4_linear_forward_runs_the_plan():
    mod = lowbit.nn.Int4Linear.from_linear(
        nn.Linear(4224, 3000, bias=True).to("cuda", torch.bfloat16), symmetric=False)
    x = torch.randn(2, 3, 4224, dtype=torch.bfloat16, device="cuda")
    mod(x)
    hits = _native.stats()["hits"]
    for _ in range(2):
        x2 = torch.randn_like(x)
        got = mod(x2)
        with _python_path():
            assert torch.equal(got, mod(x2))
    assert _native.stats()["hits"] == hits + 2


@needs_native
@pytest.mark.gpu
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zeros"])
@pytest.mark.parametrize("group", [32, 128, -1], ids=["g32", "g128", "channel"])
def test_int4_quantize_plans_give_the_bits_of_the_python_path(group, symmetric):
    """The CUDA quantizer's signatures are planned (per channel runs Triton: its Python
    step); the three outputs, the empty zero points of a symmetric call included, match the
    Python path's bit for bit, through the eager API and torch.ops."""
    w = torch.randn(300, 4224, dtype=torch.bfloat16, device="cuda")
    kernel = lowbit.explain(lowbit.int4_quantize, w, group_size=group,
                            symmetric=symmetric).kernel
    planned = kernel == "cuda_int4_quantize"
    assert planned == (group != -1), kernel
    g = group if group != -1 else 4224
    lowbit.int4_quantize(w, group_size=group, symmetric=symmetric)  # prepared
    hits = _native.stats()["hits"]
    for _ in range(2):
        w2 = torch.randn_like(w)
        got = lowbit.int4_quantize(w2, group_size=group, symmetric=symmetric)
        got_op = torch.ops.lowbit.int4_quantize(w2, g, symmetric, "default")
        with _python_path():
            want = torch.ops.lowbit.int4_quantize(w2, g, symmetric, "default")
        for a, b in zip((got.qweight, got.scales), want[:2]):
            assert torch.equal(a, b)
        assert (got.zeros is None) == symmetric
        if not symmetric:
            assert torch.equal(got.zeros, want[2])
        for a, b in zip(got_op, want):
            assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    assert _native.stats()["hits"] == hits + (4 if planned else 0)
    if planned:  # (the eager entry does not make the empty zero points the API drops)
        served = _native.ENTRY["int4_quantize"](w, g, symmetric, "default")
        assert type(served) is tuple and (served[2] is None) == symmetric


@needs_native
@pytest.mark.gpu
def test_weight_only_plans_survive_resets():
    """A launch object that dies hands its split counters back (they are never freed: a free
    synchronizes the device); the next plan on the stream takes them, zeroed again."""
    import gc

    w = _w4(256, 8192, 128, True)
    op = torch.ops.lowbit.w4a16_gemm
    x = torch.randn(1, 8192, dtype=torch.bfloat16, device="cuda")
    with _python_path():
        want = op(*_w4_args(w, x, None), "default")
    for _ in range(3):
        hits = _native.stats()["hits"]
        for _ in range(3):
            assert torch.equal(op(*_w4_args(w, x, None), "default"), want)
        assert _native.stats()["hits"] == hits + 2
        _native.reset()
        gc.collect()


@needs_native
@pytest.mark.gpu
def test_the_dequantize_launch_has_no_native_entry():
    from lowbit.backends.cuda import kernel_id
    from lowbit.backends.cuda.wxa16_gemm import wxa16_gemm_launch

    launch = wxa16_gemm_launch(kernel_id("cuda_w4a16_gemm_dequant"), 4, 128, 256, 4096, 128,
                               4096, torch.bfloat16, 0, torch.bfloat16, 32, False, 0, None, 4096)
    with pytest.raises(ValueError, match="dequantize"):
        launch.native()


@needs_native
def test_the_native_empty_means_torch_empty():
    """EMPTY(device, dtype, *sizes) is torch.empty(sizes, dtype=dtype, device=device): the
    Triton launches allocate with it, so a wrong shape, dtype or device would be a wrong
    output. Bad arguments raise, naming what is wrong."""
    empty = _native.EMPTY
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available()
                                       else [])
    for dev in devices:
        for dtype, sizes in ((torch.bfloat16, (3, 5)), (torch.float32, (2, 0, 7)),
                             (torch.int8, ()), (torch.float8_e4m3fn, (16,))):
            t = empty(dev, dtype, *sizes)
            want = torch.empty(sizes, dtype=dtype, device=dev)
            assert (t.shape, t.dtype, t.device, t.stride()) == \
                (want.shape, want.dtype, want.device, want.stride())
    with pytest.raises(TypeError, match="torch.device"):
        empty("cpu", torch.float32, 2)
    with pytest.raises(ValueError, match="negative"):
        empty(torch.device("cpu"), torch.float32, 4, -1)
    with pytest.raises(TypeError):
        empty(torch.device("cpu"), torch.float32, 1.5)


@needs_native
def test_the_triton_launches_allocate_with_the_native_empty():
    backend = pytest.importorskip("lowbit.backends.triton")
    if backend._load() is None:
        pytest.skip(f"triton kernels: {backend._import_error}")
    from lowbit.triton_kernels import _common

    assert _common.allocator() is _native.EMPTY
