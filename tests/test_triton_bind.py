"""The bound Triton launches (triton_kernels/_common.py ``bind`` and ``quantize_launcher``,
the GEMM launchers), on the CPU with stand-ins for Triton's compiled kernel and driver.

On a GPU the Triton tests check the launches' bits; here, what a GPU run could not show
quickly: the direct launch hands the compiled kernel's launcher exactly what
``JITFunction.run`` would (every parameter in order, the constexprs and defaults after the
positional ones), Triton's own path takes over under a launch hook or the interpreter, and a
bound quantizer launches each kernel with the arguments the generic ``quantize`` gives it:
the same grid, constexprs and integers, each pointer in the same role (input, codes, scale,
zero point, workspace), and, at binding, pointers of the dtypes the generic path passes (a
compiled kernel is specialized on them).
"""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed")
from lowbit.triton_kernels import _common, fp8_gemm, int8_gemm  # noqa: E402
from lowbit.triton_kernels.fp8_quant import fmt_constants  # noqa: E402

STREAM, DEVICE, FUNCTION, PACKED = 0x5, 0, 0xF00, ("packed",)


class _Compiled:
    """A compiled kernel: its launcher records every call."""

    def __init__(self):
        self.calls = []
        self.function, self.packed_metadata = FUNCTION, PACKED

    @property
    def run(self):
        return lambda *a: self.calls.append(a)


class _Kernel:
    """A jitted kernel: ``warmup`` gives the compiled kernel; ``kernel[grid](...)``, Triton's
    own launch path, records its call."""

    arg_names = ["x_ptr", "n", "BLOCK", "FLAG"]

    @staticmethod
    def fn(x_ptr, n, BLOCK, FLAG=True):
        pass

    def __init__(self):
        self.compiled, self.generic, self.warmed = _Compiled(), [], []

    def warmup(self, *args, grid, **consts):
        self.warmed.append((args, grid, consts))
        return self.compiled

    def __getitem__(self, grid):
        return lambda *a, **kw: self.generic.append((grid, a, kw))


class _Driver:
    @staticmethod
    def get_current_stream(device):
        assert device == DEVICE
        return STREAM

    @staticmethod
    def get_current_device():
        return DEVICE


@pytest.fixture
def compiled_launches(monkeypatch):
    """bind() as on a GPU: not interpreting, the direct protocol on, a driver."""
    monkeypatch.setattr(_common, "interpreting", lambda: False)
    monkeypatch.setattr(_common, "_DIRECT_LAUNCH", True)
    monkeypatch.setattr(triton.runtime.driver, "_active", _Driver())


def _hook_chain():
    from triton import knobs
    return knobs.runtime.launch_enter_hook


def test_the_direct_launch_gives_the_launcher_what_jit_run_would(compiled_launches):
    k = _Kernel()
    x = torch.empty(8)
    launch = _common.bind(k, (3, 2), (x, 5), dict(BLOCK=64, num_warps=4))
    assert k.warmed == [((x, 5), (3, 2), dict(BLOCK=64, num_warps=4))]
    launch(x, 7)
    # grid (z = 1), stream, function, packed metadata, no launch metadata or hooks, then every
    # parameter: the positional ones, the constexpr given, the default of the one not given.
    assert k.compiled.calls == [(3, 2, 1, STREAM, FUNCTION, PACKED, None, None, None, x, 7, 64,
                                 True)]
    assert launch.direct(0x1000, 9) and k.compiled.calls[-1][9:] == (0x1000, 9, 64, True)
    assert k.generic == []


def test_a_launch_hook_or_the_interpreter_takes_tritons_own_path(compiled_launches,
                                                                 monkeypatch):
    k = _Kernel()
    x = torch.empty(8)
    launch = _common.bind(k, (4,), (x, 5), dict(BLOCK=64))
    chain = _hook_chain()
    if not hasattr(chain, "add"):
        pytest.skip("this Triton keeps no chain of launch hooks")
    hook = lambda *a: None  # noqa: E731
    chain.add(hook)
    try:
        assert not launch.direct(x, 5)
        launch(x, 5)
    finally:
        chain.remove(hook)
    assert k.compiled.calls == [] and k.generic == [((4,), (x, 5), dict(BLOCK=64))]
    monkeypatch.setattr(_common, "interpreting", lambda: True)
    launch(x, 6)
    assert k.compiled.calls == [] and len(k.generic) == 2
    # Bound under the interpreter, or on a Triton of another launch protocol: nothing is
    # compiled, and every launch is Triton's own.
    for interp, direct in ((True, True), (False, False)):
        monkeypatch.setattr(_common, "interpreting", lambda: interp)
        monkeypatch.setattr(_common, "_DIRECT_LAUNCH", direct)
        k2 = _Kernel()
        launch = _common.bind(k2, (1,), (x, 5), dict(BLOCK=64))
        assert k2.warmed == [] and not launch.direct(x, 5)
        launch(x, 5)
        assert k2.generic == [((1,), (x, 5), dict(BLOCK=64))]


def test_tritons_c_launch_function_is_called_as_its_wrapper_would(compiled_launches,
                                                                    monkeypatch):
    """Triton 3.6's NVIDIA launcher without scratch buffers: its C function is called with
    the wrapper's arguments (cooperative grid, PDL, two None scratch buffers, then what the
    wrapper was given); any other launcher, or version, keeps the wrapper."""
    calls = []

    class CudaLauncher:
        global_scratch_size = profile_scratch_size = 0
        launch_cooperative_grid, launch_pdl = False, True

        def launch(self, *a):
            calls.append(a)

        def __call__(self, *a):
            raise AssertionError("the wrapper is skipped")

    monkeypatch.setattr(triton, "__version__", "3.6.0")
    k = _Kernel()
    k.compiled = type("C", (), dict(run=CudaLauncher(), function=FUNCTION,
                                    packed_metadata=PACKED))()
    _common.bind(k, (2,), (0x10, 5), dict(BLOCK=32))(0x20, 6)
    assert calls == [(2, 1, 1, STREAM, FUNCTION, False, True, None, None, PACKED, None, None,
                      None, 0x20, 6, 32, True)]
    with_scratch = CudaLauncher()
    with_scratch.global_scratch_size = 64
    assert _common._c_launcher(with_scratch) is None
    monkeypatch.setattr(triton, "__version__", "3.7.0")
    assert _common._c_launcher(CudaLauncher()) is None
    assert _common._version("3.6.0+git1234") == (3, 6) and _common._version("3.10.1") == (3, 10)


# --------------------------------------------------- bound quantizers against quantize()
class _Recorder:
    """A kernel whose launches (bound or Triton's own) are recorded; bind() is replaced by
    one that records the binding and the direct launches of that kernel."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        return lambda *a, **kw: self.log.append(("generic", self.name, grid, a, kw))


def _fake_bind(log):
    def bind(kernel, grid, args, consts):
        log.append(("bind", kernel.name, grid, args, consts))

        def direct(*a):
            log.append(("direct", kernel.name, grid, a, consts))
            return True

        def launch(*a):
            raise AssertionError("the quantizers launch directly")

        launch.direct = direct
        return launch
    return bind


def _roles(x, q, s, z, scale, zero) -> dict:
    """{address: role} of a quantizer call's tensors; any other pointer is a workspace."""
    named = ((x, "x"), (q, "q"), (s, "scale"), (z, "zero"), (scale, "scale_in"),
             (zero, "zero_in"))
    return {t.data_ptr(): role for t, role in named if t is not None}


def _x_case(layout, dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 256, generator=g).to(dtype)
    if layout == "strided":
        x = torch.randn(6, 400, generator=g).to(dtype)[:, 40:296]
    elif layout == "3d":
        x = x.reshape(2, 3, 256)
    return x


CODECS = {"int8": (torch.int8, _common.int8_codec(True)),
          "int8_asym": (torch.int8, _common.int8_codec(False)),
          "fp8": (torch.float8_e4m3fn, None)}


def _fp8_encoder():
    fc = fmt_constants("e4m3fn")
    return dict(CODEC=_common.FP8, QMAX=fc["QMAX"], MBITS=fc["MBITS"], BIAS=fc["BIAS"],
                MAX_CODE=fc["MAX_CODE"], NAN_CODE=fc["NAN_CODE"], INF_CODE=fc["INF_CODE"],
                NEG_ZERO=fc["NEG_ZERO"], SATURATE=True, HW_CAST=False)


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("tile", [(1, 0), (1, 64), (0, 0)], ids=["row", "group", "tensor"])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("layout,dtype", [("dense", torch.bfloat16), ("strided", torch.float16),
                                          ("3d", torch.float32)], ids=["bf16", "f16-strided",
                                                                       "f32-3d"])
def test_a_bound_quantizer_launches_what_quantize_launches(monkeypatch, codec, tile, static,
                                                           layout, dtype):
    if static and tile != (0, 0):
        pytest.skip("static scales are per tensor")
    q_dtype, enc = CODECS[codec]
    enc = enc if enc is not None else _fp8_encoder()
    asym = codec == "int8_asym"
    x = _x_case(layout, dtype)
    sshape = () if tile == (0, 0) else (*x.shape[:-1], x.shape[-1] // (tile[1] or x.shape[-1]))
    scale = torch.tensor(0.05) if static else None
    zero = torch.tensor(3, dtype=torch.int32) if static and asym else None
    log = []
    monkeypatch.setattr(_common, "interpreting", lambda: False)
    monkeypatch.setattr(_common, "bind", _fake_bind(log))
    for name in ("_quant_segment_kernel", "_quant_tensor_kernel", "_extent_kernel"):
        monkeypatch.setattr(_common, name, _Recorder(name, log))

    codes = torch.uint8 if q_dtype != torch.int8 else torch.int8
    q = torch.empty(x.shape, dtype=q_dtype)
    s, z = _common.quantize(x, scale, zero, q if codes == q_dtype else q.view(codes), enc, tile,
                            sshape)
    generic = [e for e in log if e[0] == "generic"]
    roles = _roles(x, q, s, z, scale, zero)
    want = [(e[1], e[2], tuple(roles.get(v.data_ptr(), "workspace")
                               if isinstance(v, torch.Tensor) else v for v in e[3]), e[4])
            for e in generic]

    log.clear()
    launch = _common.quantize_launcher(x, scale, zero, q_dtype, enc, tile, sshape)
    binds = [e for e in log if e[0] == "bind"]
    log.clear()
    q2, s2, z2 = launch(x, scale, zero)
    assert q2.dtype == q_dtype and q2.shape == x.shape and tuple(s2.shape) == sshape
    assert (z2 is None) == (not asym)
    roles2 = _roles(x, q2, s2, z2, scale, zero)
    got = [(e[1], e[2], tuple(roles2.get(v, "workspace") if i < _pointers(e[1]) else v
                              for i, v in enumerate(e[3])), e[4])
           for e in log if e[0] == "direct"]
    # Same kernels, grids, constexprs and integers, each pointer in the same role.
    assert got == want
    # Bound on pointers of the dtypes (and alignment) the generic path passes.
    for (_, name, grid, args, consts), g in zip(binds, generic):
        assert (name, grid, consts) == g[1:3] + (g[4],)
        for b, v in zip(args, g[3]):
            if isinstance(v, torch.Tensor):
                assert b.dtype == v.dtype and (b.data_ptr() % 16 == 0) == (v.data_ptr() % 16 == 0)
            else:
                assert b == v


def _pointers(kernel: str) -> int:
    """How many of a quantizer kernel's leading parameters are pointers."""
    return {"_extent_kernel": 2, "_quant_tensor_kernel": 7, "_quant_segment_kernel": 6}[kernel]


# ---------------------------------------------------- the GEMMs' two launch paths agree
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_the_gemms_direct_and_own_launches_pass_the_same_arguments(monkeypatch, bias):
    """Each Triton GEMM launch gives the direct launch the data pointers of the tensors that
    Triton's own path (taken when the direct one declines, as here) gets, in the same order."""
    log = []

    def bind(kernel, grid, args, consts):
        def launch(*a):
            log.append(("own", a))

        def direct(*a):
            log.append(("direct", a))
            return False

        launch.direct = direct
        return launch

    for mod in (fp8_gemm, int8_gemm):
        monkeypatch.setattr(mod, "_interpreting", lambda: False)
        monkeypatch.setattr(mod, "bind", bind)
        monkeypatch.setattr(mod, "smem_per_block", lambda i: 232448)
        monkeypatch.setattr(mod, "device_index", lambda d: 0)
    m, n, k = 4, 48, 64
    b16 = torch.randn(n).to(torch.bfloat16) if bias else None
    a8, w8 = (torch.zeros(r, k, dtype=torch.float8_e4m3fn) for r in (m, n))
    i8a, i8b = (torch.zeros(r, k, dtype=torch.int8) for r in (m, n))
    sa, sb, za = torch.ones(m, 1), torch.ones(n, 1), torch.zeros(m, 1, dtype=torch.int32)
    cases = [
        (fp8_gemm.fp8_scaled_mm_launcher(a8, w8, sa, sb, b16, torch.bfloat16, False,
                                         a_tile=(1, 0), b_tile=(1, 0)),
         (a8, w8, sa, sb, b16, torch.bfloat16, False)),
        (int8_gemm.int8_gemm_launcher(i8a, i8b, sa, sb, b16, torch.float16, None),
         (i8a, i8b, sa, sb, b16, torch.float16, None)),
        (int8_gemm.int8_gemm_launcher(i8a, i8b, sa, sb, b16, torch.float32, za),
         (i8a, i8b, sa, sb, b16, torch.float32, za)),
        (int8_gemm.int8_mm_launcher(i8a, i8b), (i8a, i8b)),
    ]
    for launch, args in cases:
        log.clear()
        out = launch(*args)
        (kd, direct), (ko, own) = log
        assert (kd, ko) == ("direct", "own") and len(direct) == len(own)
        assert own[2].data_ptr() == out.data_ptr()
        for d, o in zip(direct, own):
            assert d == (o.data_ptr() if isinstance(o, torch.Tensor) else o)


# ------------------------------------------ the weight-only GEMMs' two launch paths agree
def _wxa16_cases():
    """Int4 with zero points, bias and a split; int4 in act order; int8 per channel (split)
    and per group with bias, tiled (no split)."""
    from lowbit.triton_kernels import wxa16_gemm as wx
    g = torch.Generator().manual_seed(5)
    n, k = 48, 256
    x = torch.randn(3, k, generator=g).to(torch.bfloat16)
    xt = torch.randn(40, k, generator=g).to(torch.float16)
    q4 = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8)
    s4 = torch.rand(n, k // 64, generator=g).to(torch.bfloat16)
    z4 = torch.randint(0, 16, (n, k // 64), generator=g, dtype=torch.uint8)
    perm = torch.randperm(k, generator=g)
    w8 = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    s8c, s8g = torch.rand(n, 1, generator=g), torch.rand(n, k // 128, generator=g)
    b16 = torch.randn(n, generator=g).to(torch.bfloat16)
    bh = torch.randn(n, generator=g).to(torch.float16)
    four = (x, q4, s4, z4, 64, None, b16)
    act = (x, q4, s4, None, 64, perm, None)
    # (name, the launcher's binding, the call's arguments)
    return [
        ("w4-zeros-bias", lambda: wx.w4a16_gemm_launcher(*four, split_k=4), four),
        ("w4-act-order", lambda: wx.w4a16_gemm_launcher(*act, split_k=2), act),
        ("w8-channel", lambda: wx.w8a16_gemm_launcher(x, w8, s8c, None, split_k=4),
         (x, w8, s8c, None)),
        ("w8-group-tiled", lambda: wx.w8a16_gemm_launcher(xt, w8, s8g, bh), (xt, w8, s8g, bh)),
    ]


_WX_POINTERS = 8  # the weight-only kernel's leading pointer parameters


def test_the_weight_only_gemms_direct_and_own_launches_agree(monkeypatch):
    """A weight-only GEMM call (one launch, the split's sum in the same kernel) gives the
    direct launch the data pointers of the tensors Triton's own path gets, in the same order
    and roles, and the kernel was bound on tensors of the dtypes and alignment those have;
    a split launch gets the stream's counters and workspace, not the stand-ins it was
    bound with."""
    from lowbit.triton_kernels import wxa16_gemm as wx
    log = []

    def bind(kernel, grid, args, consts):
        name = kernel.fn.__name__
        log.append(("bind", name, args, consts))

        def launch(*a):
            log.append(("own", name, a))

        def direct(*a):  # declined: the call goes on to Triton's own path
            log.append(("direct", name, a))
            return False

        launch.direct = direct
        return launch

    monkeypatch.setattr(wx, "_interpreting", lambda: False)
    monkeypatch.setattr(wx, "bind", bind)
    monkeypatch.setattr(wx, "sm_count", lambda i: 132)
    monkeypatch.setattr(wx, "smem_per_block", lambda i: 232448)  # an H100's
    monkeypatch.setattr(wx, "device_index", lambda d: 0)
    ptr = lambda v: v.data_ptr() if isinstance(v, torch.Tensor) else v  # noqa: E731
    seen = set()
    for name, make, args in _wxa16_cases():
        log.clear()
        launch = make()
        binds = [e for e in log if e[0] == "bind"]
        assert [e[1] for e in binds] == ["_wxa16_kernel"], (name, log)
        bound_args, split = binds[0][2], binds[0][3]["PARTIAL"]
        log.clear()
        # A later call of the signature: other tensors of the same shapes and dtypes.
        call = tuple(v.clone() if isinstance(v, torch.Tensor) else v for v in args)
        out = launch(*call)
        direct = [e[2] for e in log if e[0] == "direct"]
        own = [e[2] for e in log if e[0] == "own"]
        assert len(direct) == 1 and len(own) == 1, (name, log)
        assert direct[0] == tuple(ptr(v) for v in own[0]), name
        # Nothing bound is reused: every pointer is this call's (its tensors, its output,
        # the stream's workspace and counters), none a tensor the launcher was bound with.
        bound = {v.data_ptr() for v in bound_args if isinstance(v, torch.Tensor)}
        assert not bound & set(direct[0][:_WX_POINTERS]), name
        for b, o in zip(bound_args, own[0]):
            if isinstance(o, torch.Tensor):
                assert b.dtype == o.dtype, name
                assert (b.data_ptr() % 16 == 0) == (o.data_ptr() % 16 == 0), name
            else:
                assert b == o, name
        # The result lands in the output; a split's partials and counters are the
        # stream's scratch (fp32, int32), the same again on the next call.
        assert own[0][5].data_ptr() == out.data_ptr(), name
        if split:
            ws, cnt = own[0][6], own[0][7]
            assert ws.dtype == torch.float32 and cnt.dtype == torch.int32, name
            log.clear()
            launch(*call)
            again = [e[2] for e in log if e[0] == "own"][0]
            assert (again[6].data_ptr(), again[7].data_ptr()) == (ws.data_ptr(),
                                                                  cnt.data_ptr()), name
        seen.add(split)
    assert seen == {True, False}
