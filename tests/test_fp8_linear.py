"""lowbit.nn.Fp8Linear: construction, accuracy against nn.Linear, state_dict, compile."""
import pytest
import torch
from torch import nn

import lowbit
from lowbit.backends.cuda import FUSED_LINEAR
from lowbit.backends.cuda import linear as cuda_linear
from lowbit.nn import Fp8Linear
from lowbit_testing import assert_bits_equal


def _linear(k=256, n=96, bias=True, device="cpu", dtype=torch.bfloat16):
    torch.manual_seed(0)
    return nn.Linear(k, n, bias=bias).to(device=device, dtype=dtype)


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def _expected(mod: Fp8Linear, x):
    """The W8A8 result from the reference ops, step by step (per-token dynamic)."""
    x2 = x.reshape(-1, mod.in_features)
    q, s = lowbit.quantize_fp8(x2, granularity="token", backend="reference")
    return lowbit.fp8_scaled_mm(q, mod.weight, s, mod.weight_scale, mod.bias,
                                out_dtype=x.dtype, backend="reference")


@pytest.mark.parametrize("bias", [True, False])
def test_w8a8_close_to_linear_and_equal_to_ops(bias):
    lin = _linear(bias=bias)
    mod = Fp8Linear.from_linear(lin)
    x = torch.randn(3, 5, 256, dtype=torch.bfloat16)
    y = mod(x)
    assert y.shape == (3, 5, 96) and y.dtype == torch.bfloat16
    # FP8 e4m3 keeps 3 mantissa bits: a few percent of relative error is the format's.
    assert _rel(y, lin(x)) < 0.08
    assert torch.equal(y.reshape(15, 96), _expected(mod, x))
    # The weight was quantized once, per output channel.
    q, s = lowbit.quantize_fp8(lin.weight.detach(), granularity="channel")
    assert torch.equal(mod.weight.view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(mod.weight_scale, s)


def test_static_act_scale_and_w8a16():
    lin = _linear()
    x = torch.randn(7, 256, dtype=torch.bfloat16)
    amax = x.abs().amax().float()
    st = Fp8Linear.from_linear(lin, act_scale=amax / 448)
    assert _rel(st(x), lin(x)) < 0.08
    wo = Fp8Linear.from_linear(lin, mode="w8a16")
    assert _rel(wo(x), lin(x)) < 0.05
    w = lowbit.dequantize_fp8(wo.weight, wo.weight_scale, out_dtype=x.dtype)
    assert torch.equal(wo(x), torch.nn.functional.linear(x, w, lin.bias))


def test_state_dict_round_trip(tmp_path):
    lin = _linear()
    mod = Fp8Linear.from_linear(lin, act_scale=torch.tensor(0.01))
    path = tmp_path / "m.pt"
    torch.save(mod.state_dict(), path)
    fresh = Fp8Linear(256, 96, bias=True, static_act_scale=True)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    assert torch.equal(fresh(x), mod(x))


def _expected_fmt(mod: Fp8Linear, x):
    """As _expected, the activations quantized to the module's format."""
    x2 = x.reshape(-1, mod.in_features)
    q, s = lowbit.quantize_fp8(x2.cpu(), fmt=mod.fmt, granularity="token", backend="reference")
    return lowbit.fp8_scaled_mm(q, mod.weight.cpu(), s, mod.weight_scale.cpu(),
                                None if mod.bias is None else mod.bias.cpu(),
                                out_dtype=x.dtype, backend="reference")


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_e4m3fnuz_layer(tmp_path, static):
    """fmt="e4m3fnuz" (AMD MI300's format): weights and activations in it (max 240), the
    ops' result, its calibrated static scale, config and state round trips, and no mixing
    of formats in the layer op."""
    lin = _linear()
    x = torch.randn(3, 5, 256, dtype=torch.bfloat16)
    act = None
    if static:
        cal = lowbit.calibrate(lin, [x])
        act = cal.scale("", "e4m3fnuz")
        assert torch.equal(act, x.abs().amax().float() / 240)
    mod = Fp8Linear.from_linear(lin, fmt="e4m3fnuz", act_scale=act)
    assert mod.weight.dtype == torch.float8_e4m3fnuz and mod.fmt == "e4m3fnuz"
    assert "fmt=e4m3fnuz" in repr(mod)
    q, s = lowbit.quantize_fp8(lin.weight.detach(), fmt="e4m3fnuz", granularity="channel")
    assert torch.equal(mod.weight.view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(mod.weight_scale, s)
    y = mod(x)
    assert _rel(y, lin(x)) < 0.08
    if not static:
        assert torch.equal(y.reshape(15, 96), _expected_fmt(mod, x))
    assert torch.equal(torch.compile(mod, fullgraph=True)(x), y)
    rebuilt = Fp8Linear(**mod.config())
    rebuilt.load_state_dict(mod.state_dict())
    assert rebuilt.weight.dtype == torch.float8_e4m3fnuz and torch.equal(rebuilt(x), y)
    model = nn.Sequential(lin)
    summary = lowbit.quantize_(model, "fp8-fnuz", calibration=lowbit.calibrate(model, [x])
                               if static else None, check_device=False)
    assert isinstance(model[0], Fp8Linear) and model[0].fmt == "e4m3fnuz", summary
    lowbit.save_quantized(model, str(tmp_path))
    fresh = lowbit.load_quantized(nn.Sequential(_linear()), str(tmp_path))
    assert fresh[0].fmt == "e4m3fnuz" and torch.equal(fresh(x), model(x))
    with pytest.raises(ValueError, match="fmt must be one of"):
        Fp8Linear(4, 4, fmt="e5m2")


def test_native_fp8_format(monkeypatch):
    """e4m3fn wherever the device is not an MI300; e4m3fnuz where it is (faked here)."""
    assert lowbit.native_fp8_format("cpu") == "e4m3fn"
    monkeypatch.setattr(torch.version, "hip", "6.4")
    for arch, want in (("gfx942:sramecc+:xnack-", "e4m3fnuz"), ("gfx950", "e4m3fn"),
                       ("gfx90a", "e4m3fn")):
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda device, a=arch: type("P", (), {"gcnArchName": a})())
        assert lowbit.native_fp8_format("cuda:0") == want, arch
    assert lowbit.native_fp8_format("cpu") == "e4m3fn"


def test_bad_inputs():
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        Fp8Linear.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="mode must be one of"):
        Fp8Linear(4, 4, mode="w4a4")
    mod = Fp8Linear.from_linear(_linear())
    with pytest.raises(ValueError, match="in_features = 256"):
        mod(torch.randn(2, 255, dtype=torch.bfloat16))


def test_compile_fullgraph():
    mod = Fp8Linear.from_linear(_linear())
    x = torch.randn(6, 256, dtype=torch.bfloat16)
    compiled = torch.compile(mod, fullgraph=True)
    assert torch.equal(compiled(x), mod(x))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 64, 300])
def test_gpu_matches_reference(m):
    lin = _linear(k=512, n=384, device="cuda")
    mod = Fp8Linear.from_linear(lin)
    x = torch.randn(m, 512, dtype=torch.bfloat16, device="cuda")
    y = mod(x)
    ref = _expected(mod, x)
    assert _rel(y, ref) < 1e-2
    assert _rel(y, lin(x)) < 0.08
    y2 = torch.compile(mod, fullgraph=True)(x)
    assert _rel(y2, ref) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 300])
def test_gpu_e4m3fnuz_layer(m):
    """e4m3fnuz on an NVIDIA GPU: quantized on CUDA, multiplied by the Triton GEMM (decoded);
    eager and compiled within the tolerance of the reference's ops."""
    pytest.importorskip("triton")
    lin = _linear(k=512, n=384, device="cuda")
    mod = Fp8Linear.from_linear(lin, fmt="e4m3fnuz")
    x = torch.randn(m, 512, dtype=torch.bfloat16, device="cuda")
    ref = _expected_fmt(mod, x)
    y = mod(x)
    assert _rel(y.cpu(), ref) < 1e-2
    assert _rel(y, lin(x)) < 0.08
    assert _rel(torch.compile(mod, fullgraph=True)(x).cpu(), ref) < 1e-2


def test_fp32_layer_keeps_fp32_bias():
    lin = _linear(dtype=torch.float32)
    mod = Fp8Linear.from_linear(lin)
    assert mod.bias.dtype == torch.float32
    assert torch.equal(mod.bias, lin.bias)


# ------------------------------------------- the prepared chain (one host call per forward)
def _two_ops(mod, x):
    """The forward as two checked op calls, for comparison with the prepared chain."""
    x2 = x.reshape(-1, mod.in_features)
    gran = "tensor" if mod.act_scale is not None else "token"
    q, s = lowbit.quantize_fp8(x2, mod.act_scale, granularity=gran)
    y = lowbit.fp8_scaled_mm(q, mod.weight, s, mod.weight_scale, mod.bias, out_dtype=x.dtype)
    return y.reshape(*x.shape[:-1], mod.out_features)


def _check_prepared_chain(device, static):
    lin = _linear(device=device)
    x = torch.randn(3, 4, 256, dtype=torch.bfloat16, device=device)
    act = x.abs().amax().float() / 448 if static else None
    mod = Fp8Linear.from_linear(lin, act_scale=act)
    first = mod(x)
    assert mod._step is not None, "a GPU forward prepares its chain"
    runs = []
    chain = mod._step.run
    mod._step = mod._step._replace(run=lambda x, *a: runs.append(1) or chain(x, *a))
    again = mod(x)
    assert runs == [1], "the second forward of the signature runs the prepared chain"
    assert torch.equal(again, first) and torch.equal(first, _two_ops(mod, x))
    # Another signature (M) misses and prepares its own chain; the result is the ops'.
    assert torch.equal(mod(x[:1]), _two_ops(mod, x[:1])) and runs == [1]
    # Other strides or dtype: a miss, computed as the ops compute it.
    for other_x in (x.transpose(0, 1), x.float()):
        assert torch.equal(mod(other_x), _two_ops(mod, other_x))
    # Bad input after a prepared chain: the same error as on a fresh module.
    fresh = Fp8Linear.from_linear(lin, act_scale=act)
    for bad in (x.double(), x.to(torch.int32)):
        errs = []
        for m in (mod, fresh):
            with pytest.raises((TypeError, ValueError)) as e:
                m(bad)
            errs.append(str(e.value))
        assert errs[0] == errs[1]
    # New module tensors (load_state_dict(assign=True)): the old chain must not run.
    mod(x)
    other = Fp8Linear.from_linear(_linear(device=device).requires_grad_(False).apply(
        lambda m: torch.nn.init.normal_(m.weight) if isinstance(m, nn.Linear) else None),
        act_scale=act)
    mod.load_state_dict(other.state_dict(), assign=True)
    assert torch.equal(mod(x), _two_ops(other, x))
    # A tensor replaced without __setattr__ (register_buffer writes the buffer dict): the
    # chain checks the dicts that hold the tensors, so the old chain must not run either.
    mod(x)
    mod.register_buffer("weight_scale", mod.weight_scale * 2)
    assert torch.equal(mod(x), _two_ops(mod, x))


# torch counts float8 (and the fp32 scales) as floating point: a plain nn.Module cast would
# turn the quantized weight into fp16 values and round the scales. The W8A8 modules keep
# their format tensors as they are under every dtype cast; the layer (bias, output, config)
# follows the cast, and the prepared step is dropped (the bias changed dtype in place).
@pytest.mark.parametrize("cls", ["Fp8Linear", "Int8Linear"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_dtype_casts_keep_the_quantized_format(cls, bias):
    import lowbit.nn
    cls = getattr(lowbit.nn, cls)
    mod = cls.from_linear(_linear(bias=bias))
    fmt = {name: t.clone() for name, t in mod.named_buffers()}
    for cast, dtype in ((lambda m: m.half(), torch.float16),
                        (lambda m: m.to(torch.float32), torch.float32),
                        (lambda m: m.to("cpu", torch.bfloat16), torch.bfloat16)):
        mod._step = "a step of the old dtypes"
        cast(mod)
        assert mod._step is None
        assert mod.dtype == dtype and (mod.bias is None or mod.bias.dtype == dtype)
        for name, t in mod.named_buffers():
            assert_bits_equal(t, fmt[name], name)
        x = torch.randn(3, 256, dtype=dtype)
        rebuilt = cls(**mod.config())
        rebuilt.load_state_dict(mod.state_dict())
        y = mod(x)
        assert y.dtype == dtype and torch.equal(y, rebuilt(x))


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_prepared_chain_on_interpreted_triton(monkeypatch, static):
    """The chain logic on the CPU: the Triton kernels under the interpreter, with choices on
    CPU tensors remembered as they are on a GPU."""
    pytest.importorskip("triton")
    from lowbit import _backend
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_backend, "_REMEMBER_ON", ("cuda", "cpu"))
    with lowbit.use_backend("triton"):
        _check_prepared_chain("cpu", static)


@pytest.mark.parametrize("cls", ["Fp8Linear", "Int8Linear"])
def test_a_prepared_module_is_freed_by_reference_counting(monkeypatch, cls):
    """The prepared step must not form a reference cycle with its module (e.g. by holding
    its __dict__): a dropped model's weights go at once, not at the next full collection."""
    pytest.importorskip("triton")
    import gc
    import weakref

    import lowbit.nn
    from lowbit import _backend
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_backend, "_REMEMBER_ON", ("cuda", "cpu"))
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    with lowbit.use_backend("triton"):
        mod = getattr(lowbit.nn, cls).from_linear(_linear(bias=False))
        mod(x)
        assert mod._step is not None
    weight = weakref.ref(mod.weight)
    gc.disable()
    try:
        del mod
        assert weight() is None
    finally:
        gc.enable()


def test_no_prepared_chain_on_the_reference():
    mod = Fp8Linear.from_linear(_linear())
    mod(torch.randn(2, 256, dtype=torch.bfloat16))
    assert mod._step is None


@pytest.mark.gpu
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_prepared_chain_on_gpu(python_step, static):
    _check_prepared_chain("cuda", static)


# Prepared forwards on CUDA kernels share one workspace per device and stream
# (backends/cuda/linear.py): here three layers of different sizes run back to back behind a
# sleeping kernel, so that each quantizer writes the workspace right after the GEMM before it
# has read it (stream order, and on sm_90 the quantizer's wait for that GEMM, keep them apart),
# on the default stream, on a side stream, and in a CUDA graph (a workspace per call there).
@pytest.mark.gpu
def test_layers_share_the_stream_workspace(python_step):
    torch.manual_seed(3)
    sizes = ((256, 512), (512, 128), (128, 384))
    mods = [Fp8Linear.from_linear(_linear(k=k, n=n, device="cuda")) for k, n in sizes]
    xs = [torch.randn(m, 256, dtype=torch.bfloat16, device="cuda") for m in (1, 40, 300)]

    def run(x):
        outs = []
        for mod in mods:
            x = mod(x)
            outs.append(x)
        return outs

    def two_ops(x):
        outs = []
        for mod in mods:
            x = _two_ops(mod, x)
            outs.append(x)
        return outs

    want = [two_ops(x) for x in xs]
    for x in xs:
        run(x)  # prepares each layer's step for each M
    side = torch.cuda.Stream()
    for stream in (torch.cuda.current_stream(), side):
        with torch.cuda.stream(stream):
            for _ in range(2):
                torch.cuda._sleep(20_000_000)  # the host queues every call meanwhile
                got = [run(x) for x in xs]
                torch.cuda.synchronize()
                for w, o in zip(want, got):
                    assert all(torch.equal(a, b) for a, b in zip(w, o))
    graph = torch.cuda.CUDAGraph()
    static = xs[1].clone()
    with torch.cuda.graph(graph):
        captured = run(static)
    for x, w in zip(xs[1:2] * 2, want[1:2] * 2):
        static.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        assert all(torch.equal(a, b) for a, b in zip(w, captured))
    # Only the modules' eager forwards keep a workspace; the registered op (what compiled
    # graphs call, also in their CUDA-graph warm-up) allocates one per call.
    from lowbit.backends.cuda import linear
    linear.release_workspaces()
    torch.ops.lowbit.fp8_linear(xs[2], *mods[0]._state(), "default")
    torch.ops.lowbit.fp8_linear(xs[2], *mods[0]._state(), "default")
    assert not linear._WORKSPACE
    mods[0](xs[2])  # another M than its step's: the checked ops, which prepare a new step
    mods[0](xs[2])  # that step, on the stream's workspace
    assert len(linear._WORKSPACE) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("cls", ["Fp8Linear", "Int8Linear"])
def test_a_cast_and_move_to_the_gpu_keeps_the_quantized_format(cls):
    import lowbit.nn
    mod = getattr(lowbit.nn, cls).from_linear(_linear())
    fmt = {name: t.clone() for name, t in mod.named_buffers()}
    mod.to("cuda", torch.float16, non_blocking=True)
    for name, t in mod.named_buffers():
        assert t.is_cuda, name
        assert_bits_equal(t, fmt[name], name)
    assert mod.bias.dtype == torch.float16 and mod.bias.is_cuda
    x = torch.randn(5, 256, dtype=torch.float16, device="cuda")
    assert torch.equal(mod(x), mod(x)) and mod(x).dtype == torch.float16


@pytest.mark.gpu
def test_compiled_model_matches_eager_bit_for_bit():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 128)).to(
        "cuda", torch.bfloat16)
    for i in (0, 2):
        model[i] = Fp8Linear.from_linear(model[i])
    x = torch.randn(5, 256, dtype=torch.bfloat16, device="cuda")
    eager = [model(x) for _ in range(2)]  # the second runs the prepared chains
    compiled = torch.compile(model, fullgraph=True)(x)
    assert torch.equal(eager[0], eager[1]) and torch.equal(compiled, eager[0])


@pytest.mark.gpu
@pytest.mark.parametrize("arch", [None, "89", "80"], ids=["native", "sm89", "sm80"])
@pytest.mark.parametrize("shape,k,n,bias,dtype,static", [
    ((1, 4096), 4096, 1024, False, torch.bfloat16, False),   # small M: swap-AB / split-K
    ((2, 3, 512), 512, 384, True, torch.bfloat16, False),     # 3-D input, bias
    ((300, 256), 256, 200, True, torch.float16, True),        # tiled GEMM, static scale, ragged N
    ((65, 128), 128, 136, False, torch.float32, False),       # fp32 activations and output
], ids=["m1", "3d-bias", "m300-static", "fp32"])
def test_fused_cuda_step_matches_the_ops(monkeypatch, python_step, arch, shape, k, n, bias,
                                         dtype, static):
    """On CUDA kernels a prepared forward is one fused launch (quantize + GEMM through a
    workspace): the same kernels as the two op calls, so the same bits, on every arch path,
    also after the weight's storage changes under the same module tensor."""
    from lowbit.backends.cuda import quantize
    if arch is not None:
        monkeypatch.setenv("LOWBIT_ARCH", arch)
    lin = _linear(k=k, n=n, bias=bias, device="cuda", dtype=dtype)
    x = torch.randn(*shape, dtype=dtype, device="cuda")
    act = x.abs().amax().float() / 448 if static else None
    mod = Fp8Linear.from_linear(lin, act_scale=act)
    first = mod(x)
    step = mod._step.run
    x2 = x.reshape(-1, k)
    q, s = lowbit.quantize_fp8(x2, act, granularity="tensor" if static else "token")
    q_kernel = lowbit.explain(lowbit.quantize_fp8, x2, act,
                              granularity="tensor" if static else "token").kernel
    g_kernel = lowbit.explain(lowbit.fp8_scaled_mm, q, mod.weight, s, mod.weight_scale,
                              mod.bias, out_dtype=dtype).kernel
    want = q_kernel + "+" + g_kernel
    fused_kernel, quantizers, gemm = FUSED_LINEAR["fp8_linear"]
    if (g_kernel == gemm and q_kernel in quantizers and dtype != torch.float32
            and cuda_linear.fused_enabled()):
        want = fused_kernel  # one kernel: the quantizer in the GEMM's prologue
    assert step.__name__ == want, "a CUDA forward runs the two chosen kernels in one call"
    for hw_cvt in (True, False):
        monkeypatch.setattr(quantize, "HW_CVT", hw_cvt)
        assert torch.equal(mod(x), _two_ops(mod, x)) and torch.equal(mod(x), first)
    # New storage under the same weight tensor: the fused launch reads the new pointer (its
    # cached TMA map of the old one must not be used).
    other = _linear(k=k, n=n, bias=bias, device="cuda", dtype=dtype)
    with torch.no_grad():
        other.weight.mul_(-3)
    new_w = Fp8Linear.from_linear(other).weight
    mod.weight.data = new_w.clone()
    assert mod._step is not None and mod._step.run is step
    assert torch.equal(mod(x), _two_ops(mod, x)) and not torch.equal(mod(x), first)


@pytest.mark.gpu
def test_fused_launch_rejects_a_misaligned_workspace():
    from lowbit._build import _C
    from lowbit.backends.cuda import kernel_id, DTYPE_CODE, FP8_FORMAT_CODE
    q = _C.QuantizeLaunch(kernel_id("cuda_fp8_quant_per_token"), DTYPE_CODE[torch.bfloat16], 1,
                          256, 256, 1, FP8_FORMAT_CODE["e4m3fn"], True, 1, 0, True)
    g = _C.GemmLaunch(kernel_id("sm89_fp8_gemm_smallm"), 1, 96, 256, 256, 256, 1, 0, 1, 1, 0, 1,
                      0, DTYPE_CODE[torch.bfloat16], 96, False)
    with pytest.raises(ValueError, match="scale_offset"):
        _C.Fp8LinearLaunch(q, g, 8, -1)
    launch = _C.Fp8LinearLaunch(q, g, 256, -1)
    ws = torch.empty(1024, dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match="workspace"):
        launch.launch(1, 0, 1, 1, 0, ws.data_ptr() + 8, 1, 0)


# ------------------------------------------------ fp8_linear: the module's forward as one op
_OPCHECK_UTILS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_fp8_linear_op_is_the_module(static):
    """lowbit.fp8_linear and torch.ops.lowbit.fp8_linear compute what Fp8Linear computes;
    a compiled Fp8Linear calls that one op; opcheck passes (test_schema compares fp8 inputs
    with allclose, which CPU torch lacks: left out, as for the other fp8 ops)."""
    lin = _linear()
    x = torch.randn(3, 4, 256, dtype=torch.bfloat16)
    mod = Fp8Linear.from_linear(lin, act_scale=x.abs().amax().float() / 448 if static else None)
    args = (x, mod.weight, mod.weight_scale, mod.bias, mod.act_scale)
    y = mod(x)
    assert torch.equal(y, _two_ops(mod, x))
    assert torch.equal(lowbit.fp8_linear(*args), y)
    assert torch.equal(torch.ops.lowbit.fp8_linear(*args, "default"), y)
    gm = []
    compiled = torch.compile(mod, fullgraph=True, backend=lambda g, _: gm.append(g) or g)
    assert torch.equal(compiled(x), y)
    targets = [str(n.target) for n in gm[0].graph.nodes if n.op == "call_function"]
    assert any("lowbit.fp8_linear" in t for t in targets), targets
    assert not any("quantize_fp8" in t or "fp8_scaled_mm" in t for t in targets), targets
    torch.library.opcheck(torch.ops.lowbit.fp8_linear.default, (*args, "default"),
                          test_utils=_OPCHECK_UTILS)


def test_fp8_linear_op_errors():
    mod = Fp8Linear.from_linear(_linear())
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    w, s, b = mod.weight, mod.weight_scale, mod.bias
    bad = [
        ((x, w.view(torch.int8), s, b, None), "weight"),
        ((x[:, :128], w, s, b, None), "K = weight.shape"),
        ((x, w, s.reshape(-1), b, None), "weight_scale"),
        ((x, w, s, b[:5], None), "bias"),
        ((x, w, s, b, torch.ones(2)), "act_scale"),
        ((x.to(torch.int32), w, s, b, None), "x"),
        ((torch.tensor(1.0), w, s, b, None), "x"),
    ]
    for args, what in bad:
        with pytest.raises((TypeError, ValueError), match="fp8_linear") as e:
            lowbit.fp8_linear(*args)
        assert what in str(e.value), (what, str(e.value))


def test_fp8_linear_op_keeps_a_step_per_signature(monkeypatch):
    """On the CPU through the interpreted Triton kernels, choices remembered as on a GPU: the
    op keeps the step of a signature, runs it for the next call of that signature (any
    tensors of it), and a call of another signature, good or bad, goes through the checks."""
    pytest.importorskip("triton")
    from lowbit import _backend
    from lowbit import _linear as fused
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_backend, "_REMEMBER_ON", ("cuda", "cpu"))
    monkeypatch.setattr(fused, "_steps", {})
    with lowbit.use_backend("triton"):
        mod = Fp8Linear.from_linear(_linear())
        other = Fp8Linear.from_linear(nn.Linear(256, 96).to(torch.bfloat16))
        x = torch.randn(5, 256, dtype=torch.bfloat16)
        y = lowbit.fp8_linear(x, mod.weight, mod.weight_scale, mod.bias)
        assert len(fused._steps) == 1
        (key, step), = fused._steps.items()
        runs = []
        fused._steps[key] = lambda *a: runs.append(1) or step(*a)
        assert torch.equal(lowbit.fp8_linear(x, mod.weight, mod.weight_scale, mod.bias), y)
        # Another layer of the same signature runs the same step with its own tensors.
        y_other = lowbit.fp8_linear(x, other.weight, other.weight_scale, other.bias)
        assert runs == [1, 1] and torch.equal(y_other, _two_ops(other, x))
        assert torch.equal(y, _two_ops(mod, x))
        # Bad input of another signature: the op's own error, not the kept step.
        with pytest.raises(ValueError, match="fp8_linear: weight_scale"):
            lowbit.fp8_linear(x, mod.weight, mod.weight_scale.reshape(-1), mod.bias)
        assert runs == [1, 1]


@pytest.mark.gpu
def test_fp8_linear_op_fuses_on_gpu():
    lin = _linear(k=512, n=384, device="cuda")
    mod = Fp8Linear.from_linear(lin)
    x = torch.randn(7, 512, dtype=torch.bfloat16, device="cuda")
    args = (x, mod.weight, mod.weight_scale, mod.bias)
    y = lowbit.fp8_linear(*args)
    from lowbit import _linear as fused
    steps = [s for s in fused._steps.values()
             if "+" in s.__name__ or s.__name__ == FUSED_LINEAR["fp8_linear"][0]]
    assert steps, "the op keeps a fused CUDA step"
    assert torch.equal(lowbit.fp8_linear(*args), y) and torch.equal(y, _two_ops(mod, x))
    assert torch.equal(mod(x), y)
