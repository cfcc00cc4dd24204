"""The op layer: torch.library registration (opcheck), torch.compile(fullgraph=True),
backend choice (explain, use_backend, LOWBIT_BACKEND), and the `lowbit` command line."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import lowbit
from lowbit.spec import OPS as SPEC_OPS, PENDING, SIGNATURES
from lowbit_testing import find_spec, spec_block, spec_op_params

F8 = torch.float8_e4m3fn


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=gen(seed)).to(dtype)


def i8(*shape, seed=0):
    return torch.randint(-128, 128, shape, generator=gen(seed), dtype=torch.int8)


def int4_fields(symmetric=True, n=48, k=256, g=64):
    w = lowbit.int4_quantize(randn(n, k, dtype=torch.bfloat16), group_size=g,
                             symmetric=symmetric)
    return w.qweight, w.scales, w.zeros


def opcheck_cases():
    """(op name, args) for torch.ops.lowbit.* with representative CPU inputs: every
    Optional argument both given and None, every backend-name spelling."""
    x = randn(17, 256)
    xb = randn(17, 256, dtype=torch.bfloat16, seed=1)
    w = randn(130, 256, dtype=torch.float16, seed=2)
    blk = [128, 128]
    q8, s8 = lowbit.quantize_fp8(x, granularity="token")
    qb, sb = lowbit.quantize_fp8(w, granularity="block")
    qi, si, _ = lowbit.quantize_int8(x)
    qa, sa, za = lowbit.quantize_int8(x, symmetric=False)
    a, b = i8(17, 256, seed=3), i8(33, 256, seed=4)
    qw, sw, zw = int4_fields(symmetric=False)
    qs, ss, _ = int4_fields(symmetric=True)
    perm = torch.randperm(256, generator=gen(5))
    w8, w8c, _ = lowbit.quantize_int8(w[:48], granularity="channel")
    _, w8g, _ = lowbit.quantize_int8(w[:48], granularity="group", group_size=32)
    return [
        ("quantize_fp8", (x, None, "e4m3fn", "tensor", 128, blk, True, "reference")),
        ("quantize_fp8", (xb, torch.tensor(0.5), "e5m2", "tensor", 128, blk, False, "auto")),
        ("quantize_fp8", (w, None, "e4m3fnuz", "token", 128, blk, True, "default")),
        ("quantize_fp8", (x, None, "e4m3fn", "group", 64, blk, True, "reference")),
        ("quantize_fp8", (w, None, "e4m3fn", "block", 128, blk, True, "reference")),
        ("quantize_fp8", (x, None, "e4m3fn", "block", 128, [1, 128], True, "reference")),
        ("quantize_fp8", (w, sb, "e4m3fn", "block", 128, blk, True, "reference")),
        ("dequantize_fp8", (q8, s8, torch.bfloat16, "reference")),
        ("dequantize_fp8", (qb, sb, torch.float32, "auto")),
        ("dequantize_fp8", (q8, torch.tensor(2.0), torch.float16, "default")),
        ("quantize_int8", (x, None, None, "token", 128, blk, True, "reference")),
        ("quantize_int8", (xb, None, None, "token", 128, blk, False, "auto")),
        ("quantize_int8", (x, si, None, "token", 128, blk, True, "reference")),
        ("quantize_int8", (x, sa, za, "token", 128, blk, False, "reference")),
        ("quantize_int8", (x, None, None, "tensor", 128, blk, False, "default")),
        ("quantize_int8", (w, None, None, "group", 32, blk, True, "reference")),
        ("quantize_int8", (w, None, None, "block", 128, blk, True, "reference")),
        ("dequantize_int8", (qi, si, None, torch.bfloat16, "reference")),
        ("dequantize_int8", (qa, sa, za, torch.float32, "auto")),
        ("int8_mm", (a, b, "reference")),
        ("int8_mm", (a[:0], b, "auto")),
        ("int8_gemm", (a, b, torch.tensor(0.1), torch.rand(33, 1), None, torch.bfloat16, None,
                       "reference")),
        ("int8_gemm", (a, b, torch.rand(17, 1), torch.tensor(0.2), torch.randn(33),
                       torch.float32, torch.randint(-5, 5, (17, 1), dtype=torch.int32),
                       "default")),
        ("int8_gemm", (a, b, torch.rand(17, 1), torch.rand(33, 1), None, torch.float16,
                       torch.tensor(3, dtype=torch.int32), "auto")),
        ("fp8_scaled_mm", (q8, qb[:33], s8, torch.tensor(0.01), None, torch.bfloat16, False,
                           "reference")),
        ("fp8_scaled_mm", (q8, qb, torch.rand(17, 2), sb, torch.randn(130), torch.float32,
                           True, "default")),
        ("fp8_scaled_mm", (q8, qb[:5].to(torch.float8_e5m2), torch.tensor(1.0),
                           torch.rand(5, 1), torch.randn(5).half(), torch.float16, False,
                           "auto")),
        ("int4_quantize", (w, 128, True, "reference")),
        ("int4_quantize", (xb, 32, False, "default")),
        ("int4_quantize", (x, 64, True, "auto")),
        ("w4a16_gemm", (xb, qs, ss, None, 64, None, None, "reference")),
        ("w4a16_gemm", (xb, qw, sw, zw, 64, perm, torch.randn(48).bfloat16(), "default")),
        ("w4a16_gemm", (xb[:0], qw, sw, zw, 64, None, None, "auto")),
        ("w8a16_gemm", (xb, w8, w8c, None, "reference")),
        ("w8a16_gemm", (xb.half(), w8, w8g, torch.randn(48), "default")),
        ("w8a16_gemm", (x[:0], w8, w8g, None, "auto")),
    ]


CASES = opcheck_cases()
_seen = {}
_ids = []
for _name, _ in CASES:
    _seen[_name] = _seen.get(_name, 0) + 1
    _ids.append(f"{_name}-{_seen[_name]}")


# Coverage is read from the SPEC's op list (lowbit.spec): an op the SPEC names but the
# package lacks fails here; one that is not built yet is an expected failure naming the
# issue that builds it (strict, so building it flips the test to "unexpectedly passed").
@pytest.mark.parametrize("name", spec_op_params(SPEC_OPS, PENDING))
def test_every_spec_op_is_public_registered_and_has_opcheck_cases(name):
    assert callable(getattr(lowbit, name, None)), f"lowbit.{name} is missing"
    assert hasattr(torch.ops.lowbit, name), f"torch.ops.lowbit.{name} is not registered"
    assert name in {n for n, _ in CASES}, f"no opcheck case for {name}"


def test_opcheck_cases_name_only_spec_ops():
    assert {n for n, _ in CASES} <= set(SPEC_OPS)


def test_spec_signatures_match_the_spec_file():
    """lowbit.spec.SIGNATURES is the SPEC's op block, line for line (the SPEC lives outside
    the repository: the test skips where it is not at hand, as on CI)."""
    path = find_spec()
    if path is None:
        pytest.skip("SPEC.md is not at hand (looked for shared/SPEC.md above the repository)")
    assert SIGNATURES.splitlines() == spec_block(path.read_text(), "## Ops")


def test_pending_ops_are_spec_ops():
    assert set(PENDING) <= set(SPEC_OPS) and all(PENDING.values())


def _op(name):
    return getattr(torch.ops.lowbit, name).default


FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz)


def _tensors(args):
    return [a for a in args if isinstance(a, torch.Tensor)]


@pytest.mark.parametrize("name,args", CASES, ids=_ids)
def test_opcheck(name, args):
    if not any(t.dtype in FP8_DTYPES for t in _tensors(args)):
        torch.library.opcheck(_op(name), args)
        return
    # opcheck's test_schema compares inputs before and after with torch.allclose, which CPU
    # fp8 lacks ("mul_cpu_reduced_float" not implemented): run the other checks, and the
    # schema's promise (no input mutated, no output aliasing an input) by hand.
    utils = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(_op(name), args, test_utils=utils)
    before = [t.clone() for t in _tensors(args)]
    out = _op(name)(*args)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    for t, b in zip(_tensors(args), before):
        assert torch.equal(t.view(torch.uint8) if t.element_size() == 1 else t,
                           b.view(torch.uint8) if b.element_size() == 1 else b)
    inputs = {t.untyped_storage().data_ptr() for t in _tensors(args) if t.numel()}
    assert not any(o.numel() and o.untyped_storage().data_ptr() in inputs for o in outs)


# ------------------------------------------------------------------------- torch.compile
def _public_cases():
    x = randn(17, 256, dtype=torch.bfloat16)
    w = randn(48, 256, seed=1)
    q8, s8 = lowbit.quantize_fp8(x, granularity="block", block=(1, 128))
    qb, sb = lowbit.quantize_fp8(w, granularity="block")
    qa, sa, za = lowbit.quantize_int8(x, symmetric=False)
    qw, sw, _ = lowbit.quantize_int8(w, granularity="channel")
    iw = lowbit.int4_quantize(w, group_size=64, symmetric=False)
    _, sg, _ = lowbit.quantize_int8(w, granularity="group", group_size=64)
    bias = randn(48, seed=2)
    return {
        "quantize_fp8": (lambda x: lowbit.quantize_fp8(x, granularity="token", fmt="e5m2"),
                         (x,)),
        "dequantize_fp8": (lambda q, s: lowbit.dequantize_fp8(q, s, out_dtype=torch.float16),
                           (q8, s8)),
        "quantize_int8": (lambda x: lowbit.quantize_int8(x, symmetric=False), (x,)),
        "dequantize_int8": (lambda q, s, z: lowbit.dequantize_int8(q, s, z), (qa, sa, za)),
        "int8_mm": (lambda a, b: lowbit.int8_mm(a, b), (qa, qw)),
        "int8_gemm": (lambda a, b, sa, sb, z, bias: lowbit.int8_gemm(
            a, b, sa, sb, bias, out_dtype=torch.float32, a_zero=z), (qa, qw, sa, sw, za, bias)),
        "fp8_scaled_mm": (lambda a, b, sa, sb: lowbit.fp8_scaled_mm(a, b, sa, sb),
                          (q8, qb, s8, sb)),
        "int4_quantize": (lambda w: lowbit.int4_quantize(w, group_size=32), (w,)),
        "w4a16_gemm": (lambda x, w, b: lowbit.w4a16_gemm(x, w, b), (x, iw, bias.bfloat16())),
        "w8a16_gemm": (lambda x, w, s, b: lowbit.w8a16_gemm(x, w, s, b), (x, qw, sg, bias)),
    }


PUBLIC = _public_cases()


def _flat(out):
    if isinstance(out, lowbit.Int4Weight):
        return [out.qweight, out.scales, out.zeros, out.perm]
    if isinstance(out, (tuple, list)):
        return list(out)
    return [out]


def _assert_identical(got, want):
    got, want = _flat(got), _flat(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is None:
            continue
        assert g.dtype == w.dtype and g.shape == w.shape
        if g.element_size() == 1:
            g, w = g.view(torch.uint8), w.view(torch.uint8)
        assert torch.equal(g, w)


@pytest.mark.parametrize("name", spec_op_params(SPEC_OPS, PENDING))
def test_every_spec_op_has_a_compile_case(name):
    assert name in PUBLIC


def test_compile_cases_name_only_spec_ops():
    assert set(PUBLIC) <= set(SPEC_OPS)


@pytest.mark.parametrize("name", list(PUBLIC))
def test_compile_fullgraph_matches_eager(name):
    fn, args = PUBLIC[name]
    compiled = torch.compile(fn, fullgraph=True)
    _assert_identical(compiled(*args), fn(*args))


def test_compile_dynamic_m():
    """One compiled function serves several M (including 0): the fake impls take SymInts."""
    def f(x):
        q, s = lowbit.quantize_fp8(x, granularity="block", block=(1, 128))
        return lowbit.dequantize_fp8(q, s, out_dtype=torch.float32)

    cf = torch.compile(f, fullgraph=True, dynamic=True)
    for m in (17, 5, 0, 33):
        x = randn(m, 300, seed=m)
        assert torch.equal(cf(x), f(x))


def test_compile_follows_use_backend_at_run_time():
    """backend=None travels as "default" and is resolved when the op runs, so the context
    manager steers a compiled function too."""
    cf = torch.compile(lambda a, b: lowbit.int8_mm(a, b), fullgraph=True)
    a, b = i8(4, 64), i8(3, 64, seed=1)
    assert torch.equal(cf(a, b), lowbit.int8_mm(a, b))
    with lowbit.use_backend("cuda"):
        with pytest.raises(ValueError, match="backend='cuda'"):
            cf(a, b)


# --------------------------------------------------------------------------------- backends
def gemm_args():
    a = randn(17, 256).to(F8)
    b = randn(33, 256, seed=1).to(F8)
    return a, b, torch.tensor(0.5), torch.rand(33, 1)


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("LOWBIT_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return monkeypatch


def test_explain_on_cpu_says_reference(clean_env):
    choice = lowbit.explain(lowbit.fp8_scaled_mm, *gemm_args())
    assert isinstance(choice, lowbit.Choice)
    assert choice.op == "fp8_scaled_mm" and choice.backend == "reference"
    assert "reference" in str(choice) and "CPU" in choice.reason
    # explain runs nothing and returns a choice for every op
    for name, (fn, args) in PUBLIC.items():
        assert lowbit.explain(fn, *args).backend == "reference", name


def test_explain_raises_argument_errors():
    a, b, sa, sb = gemm_args()
    with pytest.raises(ValueError, match="b_scale"):
        lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, torch.rand(7, 1))


def test_explain_rejects_non_ops():
    with pytest.raises(RuntimeError, match="not a lowbit op"):
        lowbit.explain(lambda: None)


def test_use_backend_changes_the_default(clean_env):
    assert lowbit.default_backend() == "auto"
    with lowbit.use_backend("reference"):
        assert lowbit.default_backend() == "reference"
        choice = lowbit.explain(lowbit.fp8_scaled_mm, *gemm_args())
        assert choice.backend == "reference" and choice.reason == "requested"
        with lowbit.use_backend("cuda"):
            assert lowbit.default_backend() == "cuda"
            with pytest.raises(ValueError, match="backend='cuda'"):
                lowbit.fp8_scaled_mm(*gemm_args())
            # an explicit backend= wins over the context
            assert lowbit.fp8_scaled_mm(*gemm_args(), backend="reference").shape == (17, 33)
        assert lowbit.default_backend() == "reference"
    assert lowbit.default_backend() == "auto"
    with pytest.raises(ValueError, match="backend"):
        with lowbit.use_backend("gpu"):
            pass


def test_env_var_changes_the_default(clean_env):
    clean_env.setenv("LOWBIT_BACKEND", "reference")
    assert lowbit.default_backend() == "reference"
    assert lowbit.explain(lowbit.int8_mm, i8(2, 8), i8(3, 8)).reason == "requested"
    clean_env.setenv("LOWBIT_BACKEND", "cuda")
    assert lowbit.default_backend() == "cuda"
    with pytest.raises(ValueError, match="backend='cuda'"):
        lowbit.int8_mm(i8(2, 8), i8(3, 8))
    with lowbit.use_backend("auto"):  # the context manager wins over the environment
        assert lowbit.int8_mm(i8(2, 8), i8(3, 8)).shape == (2, 3)
    clean_env.setenv("LOWBIT_BACKEND", "fastest")
    with pytest.raises(ValueError, match="LOWBIT_BACKEND"):
        lowbit.int8_mm(i8(2, 8), i8(3, 8))


def fn_with_backend(name, args, backend):
    """Call public op ``name`` with ``backend=``; args as in PUBLIC."""
    f = getattr(lowbit, name)
    extra = {"int8_gemm": lambda a, b, sa, sb, z, bias: f(a, b, sa, sb, bias, a_zero=z,
                                                          backend=backend)}
    if name in extra:
        return extra[name](*args)
    return f(*args, backend=backend)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backend_on_cpu_raises(backend, clean_env):
    """A GPU backend for CPU tensors is a ValueError naming the backend (on any machine)."""
    for name, (fn, args) in PUBLIC.items():
        with pytest.raises(ValueError, match=f"backend='{backend}'"):
            fn_with_backend(name, args, backend)


# (no id "gpu": conftest skips any test whose keywords include "gpu")
@pytest.mark.parametrize("bad", ["nvidia", "CUDA", "", "numpy", "default"])
def test_invalid_backend_name(bad):
    with pytest.raises(ValueError, match="backend must be one of"):
        lowbit.int8_mm(i8(2, 8), i8(3, 8), backend=bad)


def test_backends_listed():
    assert lowbit.BACKENDS == ("auto", "cuda", "triton", "reference")


# ------------------------------------------------------------------------------ lowbit info
def _check_info(text):
    assert text.startswith("lowbit ")
    assert "op " in text and "backends that can run it here" in text
    for name in (op for op in SPEC_OPS if op not in PENDING):
        line = next((ln for ln in text.splitlines() if ln.strip().startswith(name + " ")), None)
        assert line is not None, f"{name} missing from the op table"
        assert "reference/numpy_reference" in line
    assert "default backend:" in text


def test_cli_info_in_process(capsys):
    from lowbit.cli import main
    assert main(["info"]) == 0
    _check_info(capsys.readouterr().out)


def test_cli_info_subprocess():
    """The installed `lowbit` console script (or `python -m lowbit` where it is not on
    PATH) runs `lowbit info` and prints the op table."""
    exe = shutil.which("lowbit")
    cmd = [exe, "info"] if exe else [sys.executable, "-m", "lowbit", "info"]
    env = {k: v for k, v in os.environ.items() if k != "LOWBIT_BACKEND"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    _check_info(r.stdout)


def test_a_built_extension_loads():
    """An installed lowbit._C that fails to load (an undefined symbol, say) would leave every
    CUDA test skipped as on a machine without a build: where the file exists, it must load."""
    import pathlib
    from lowbit import _build

    built = list(pathlib.Path(_build.__file__).parent.glob("_C.*"))
    assert not built or _build.build_info()["compiled"], _build.build_info()["error"]


def test_registered_ops_are_the_spec_ops_and_the_module_ops():
    from lowbit.spec import MODULE_OPS
    assert set(lowbit.ops.DEFS) == (set(SPEC_OPS) - set(PENDING)) | set(MODULE_OPS)
    for name in MODULE_OPS:
        assert callable(getattr(lowbit, name)) and hasattr(torch.ops.lowbit, name)


def test_available_kernels_filters_by_backend_and_availability():
    from lowbit._backend import available_kernels, kernels

    ref = available_kernels("w4a16_gemm", ("reference",))
    assert [k.backend for k in ref] == ["reference"]
    gpu = available_kernels("w4a16_gemm", ("cuda", "triton"))
    assert all(k.backend in ("cuda", "triton") and (k.available is None or k.available() is None)
               for k in gpu)
    # What it leaves out is exactly what says it cannot run here.
    left = [k for k in kernels("w4a16_gemm") if k.backend in ("cuda", "triton") and k not in gpu]
    assert all(k.available is not None and k.available() for k in left)
    assert available_kernels("no_such_op", ("cuda",)) == []
