"""auto's kernel order: the measured table of lowbit/heuristics.py, then priority."""
import os

import pytest
import torch

from lowbit import _backend, heuristics


@pytest.fixture
def h100(monkeypatch):
    monkeypatch.setattr(heuristics, "_capability", lambda index: (9, 0))


def _args(m, n=64):
    return (torch.empty(m, 64, device="meta"), torch.empty(n, 64, device="meta"))


@pytest.mark.parametrize("m,first", [(1, "sm90_fp8_gemm_swapab"), (64, "sm90_fp8_gemm_swapab"),
                                     (65, "sm90_fp8_gemm_wgmma"),
                                     (4096, "sm90_fp8_gemm_wgmma")])
def test_table_on_sm90(h100, m, first):
    order = heuristics.preferred("fp8_scaled_mm", torch.device("cuda", 0), _args(m))
    assert order[0] == first


@pytest.mark.parametrize("op", ["int8_mm", "int8_gemm"])
@pytest.mark.parametrize("m,first", [(1, "sm90_int8_gemm_swapab"), (64, "sm90_int8_gemm_swapab"),
                                     (65, "sm90_int8_gemm_wgmma")])
def test_int8_table_on_sm90(h100, op, m, first):
    order = heuristics.preferred(op, torch.device("cuda", 0), _args(m))
    assert order[0] == first
    # every name in the table is a registered kernel of the op
    from lowbit._backend import kernels
    names = {k.name for k in kernels(op)}
    assert set(order) <= names, set(order) - names


@pytest.mark.parametrize("m,n,first", [
    (1, 28672, "cuda_w8a16_gemm_decode"), (16, 28672, "cuda_w8a16_gemm_decode"),
    (17, 4096, "cuda_w8a16_gemm_decode"), (32, 4096, "cuda_w8a16_gemm_decode"),
    (33, 4096, "sm90_w8a16_gemm_wgmma"), (17, 4097, "sm90_w8a16_gemm_wgmma"),
    (64, 14336, "sm90_w8a16_gemm_wgmma"),
    (128, 4096, "sm90_w8a16_gemm_wgmma"), (128, 14336, "sm90_w8a16_gemm_wgmma"),
    (129, 4096, "sm90_w8a16_gemm_wgmma"), (256, 14336, "sm90_w8a16_gemm_wgmma"),
    (257, 14336, "sm90_w8a16_gemm_wgmma"), (4096, 4096, "sm90_w8a16_gemm_wgmma")])
def test_w8a16_table_on_sm90(h100, m, n, first):
    """Decode to M = 16 on every weight and to 32 on weights of N <= 4096, else the wgmma
    kernel (which takes int8 groups to M = 256 only; dequantize-then-cuBLAS after it)."""
    order = heuristics.preferred("w8a16_gemm", torch.device("cuda", 0), _args(m, n))
    assert order[0] == first
    from lowbit._backend import kernels
    assert set(order) <= {k.name for k in kernels("w8a16_gemm")}


@pytest.mark.parametrize("m,n,first", [
    (1, 28672, "cuda_w4a16_gemm_decode"), (32, 28672, "cuda_w4a16_gemm_decode"),
    (33, 4096, "sm90_w4a16_gemm_wgmma"), (64, 14336, "sm90_w4a16_gemm_wgmma"),
    (256, 14336, "sm90_w4a16_gemm_wgmma"), (257, 14336, "sm90_w4a16_gemm_wgmma"),
    (8192, 8192, "sm90_w4a16_gemm_wgmma")])
def test_w4a16_table_on_sm90(h100, m, n, first):
    """Decode to M = 32, the wgmma kernel above (dequantize-then-cuBLAS behind it). N is the
    scales' first dimension: a prepacked qweight is 4-D, its first dimension is not N."""
    meta = dict(device="meta")
    args = (torch.empty(m, 64, **meta), torch.empty(2, 2, 32, 4, dtype=torch.int32, **meta),
            torch.empty(n, 1, **meta), None, 0, None, None)
    order = heuristics.preferred("w4a16_gemm", torch.device("cuda", 0), args)
    assert (order[0] if order else None) == first
    if order:
        from lowbit._backend import kernels
        assert set(order) <= {k.name for k in kernels("w4a16_gemm")}


def test_no_table_elsewhere(monkeypatch):
    monkeypatch.setattr(heuristics, "_capability", lambda index: (8, 0))
    assert heuristics.preferred("fp8_scaled_mm", torch.device("cuda", 0), _args(1)) is None
    assert heuristics.preferred("quantize_fp8", torch.device("cuda", 0), _args(1)) is None
    assert heuristics.preferred("fp8_scaled_mm", torch.device("cpu"), _args(1)) is None


def test_choose_follows_table_then_skips_unsupported(h100, monkeypatch):
    def kernel(name, backend, priority, supports=None):
        return _backend.Kernel("fp8_scaled_mm", backend, name, lambda *a: name, supports,
                               None, priority)

    fake = [
        kernel("sm90_fp8_gemm_wgmma", "cuda", 30,
               supports=lambda a, *_: None if a.shape[0] > 64 else "M too small"),
        kernel("sm90_fp8_gemm_swapab", "cuda", 25,
               supports=lambda a, *_: "not in this build"),
        kernel("sm89_fp8_gemm_smallm", "cuda", 20,
               supports=lambda a, *_: None if a.shape[0] <= 64 else "M too large"),
        kernel("triton_fp8_scaled_mm", "triton", -10),
        kernel("reference", "reference", 0),
    ]
    monkeypatch.setitem(_backend._KERNELS, "fp8_scaled_mm", fake)
    dev = torch.device("cuda", 0)
    # swapab declines: the next name of the row runs.
    assert _backend.choose("fp8_scaled_mm", dev, "auto", _args(8)).kernel == "sm89_fp8_gemm_smallm"
    assert _backend.choose("fp8_scaled_mm", dev, "auto", _args(512)).kernel == "sm90_fp8_gemm_wgmma"
    # Pinned to CUDA, the CUDA kernels in the same order; pinned to Triton, by priority.
    monkeypatch.setattr(_backend, "_gpu_unavailable_reason", lambda: None)
    assert _backend.choose("fp8_scaled_mm", dev, "triton", _args(512)).kernel == "triton_fp8_scaled_mm"
    assert _backend.choose("fp8_scaled_mm", dev, "cuda", _args(8)).kernel == "sm89_fp8_gemm_smallm"


def test_pinned_backend_follows_the_table_not_registration(h100, monkeypatch):
    """backend="cuda" runs the kernel the table puts first among the CUDA ones, even where
    registration priority would put another first; without a table row (here: LOWBIT_ARCH=89
    on the H100) it is registration priority, the portable order. backend="triton" keeps
    priority: a second Triton kernel the table does not name still comes first."""
    monkeypatch.delenv("LOWBIT_ARCH", raising=False)
    def kernel(name, backend, priority):
        return _backend.Kernel("fp8_scaled_mm", backend, name, lambda *a: name, None, None,
                               priority)

    fake = [kernel("sm89_fp8_gemm_mma", "cuda", 40), kernel("sm90_fp8_gemm_wgmma", "cuda", 30),
            kernel("triton_fp8_scaled_mm_decoded", "triton", -5),
            kernel("triton_fp8_scaled_mm", "triton", -10), kernel("reference", "reference", 0)]
    monkeypatch.setitem(_backend._KERNELS, "fp8_scaled_mm", fake)
    monkeypatch.setattr(_backend, "_gpu_unavailable_reason", lambda: None)
    dev = torch.device("cuda", 0)
    for backend in ("cuda", "auto"):
        choice = _backend.choose("fp8_scaled_mm", dev, backend, _args(512))
        assert choice.kernel == "sm90_fp8_gemm_wgmma", (backend, choice)
    assert _backend.choose("fp8_scaled_mm", dev, "triton", _args(512)).kernel == \
        "triton_fp8_scaled_mm_decoded"
    monkeypatch.setenv("LOWBIT_ARCH", "89")
    assert _backend.choose("fp8_scaled_mm", dev, "cuda", _args(512)).kernel == "sm89_fp8_gemm_mma"


def test_choice_is_remembered_per_signature(h100, monkeypatch):
    # The GPU choice is computed once per call signature; anything supports() reads (shape,
    # stride, dtype, alignment, LOWBIT_ARCH) or a change of the registrations makes a new one.
    calls = []

    def supports(a):
        calls.append(tuple(a.shape))
        return None

    kern = _backend.Kernel("fp8_scaled_mm", "cuda", "k", lambda *a: "k", supports, None, 30)
    monkeypatch.setitem(_backend._KERNELS, "fp8_scaled_mm", [kern])
    monkeypatch.delenv("LOWBIT_ARCH", raising=False)
    dev = torch.device("cuda", 0)
    a = torch.empty(8, 64, device="meta")
    first = _backend.choose("fp8_scaled_mm", dev, "auto", (a,), remember=True)
    assert _backend.choose("fp8_scaled_mm", dev, "auto", (torch.empty(8, 64, device="meta"),)) \
        is first
    assert len(calls) == 1
    for other in (torch.empty(9, 64, device="meta"), torch.empty(64, 8, device="meta").t(),
                  torch.empty(8, 64, device="meta").half()):
        _backend.choose("fp8_scaled_mm", dev, "auto", (other,), remember=True)
    monkeypatch.setenv("LOWBIT_ARCH", "89")
    _backend.choose("fp8_scaled_mm", dev, "auto", (a,), remember=True)
    assert len(calls) == 5
    # Same list object, new member: the registry forgets what it chose.
    _backend.register_kernel("fp8_scaled_mm", "cuda", "k2", priority=-1)(lambda *a: "k2")
    _backend.choose("fp8_scaled_mm", dev, "auto", (a,), remember=True)
    assert len(calls) == 6


def test_choice_signature_sees_alignment():
    dev = torch.device("cuda", 0)
    x = torch.zeros(64, dtype=torch.uint8)
    sig = lambda t: _backend._signature("op", dev, "auto", (t, [1, 2], None))
    assert sig(x[16:32]) == sig(x[32:48])
    assert sig(x[16:32]) != sig(x[8:24])  # same shape and stride, data 8 bytes off


def _run_checked(op, backend, args, check, values=None):
    """One call of the op's eager implementation (``_backend.checked``) with checks that take
    no arguments."""
    eager = _backend.checked(op, lambda *_: check(), values and (lambda *_: values()))
    return eager(*args, backend)


def test_checks_skipped_only_for_a_signature_that_passed_them(monkeypatch):
    # checked: the argument checks run until a call with this signature has passed them
    # and chosen a kernel; the value checks run on every call. (Meta tensors stand in for
    # CUDA ones here.)
    monkeypatch.setattr(_backend, "_REMEMBER_ON", ("meta",))
    runs = []
    kern = _backend.Kernel("fp8_scaled_mm", "cuda", "k", lambda *a: runs.append(a) or "out",
                           None, None, 30)
    monkeypatch.setitem(_backend._KERNELS, "fp8_scaled_mm", [kern])
    checks, values = [], []

    def call(t, flag=False):
        return _run_checked("fp8_scaled_mm", "auto", (t, flag),
                                    lambda: checks.append(1), lambda: values.append(1))

    a = torch.empty(4, 64, device="meta")
    assert call(a) == "out" and call(a) == "out"
    assert (len(checks), len(values), len(runs)) == (1, 2, 2)
    call(torch.empty(4, 64, device="meta", dtype=torch.float16))  # a new signature
    call(a, True)                                                  # a new argument value
    assert len(checks) == 3

    def refuse():
        raise ValueError("bad")

    with pytest.raises(ValueError):  # a failing check never lets its signature through
        _run_checked("fp8_scaled_mm", "auto", (torch.empty(5, 64, device="meta"),),
                             refuse)
    with pytest.raises(ValueError):
        _run_checked("fp8_scaled_mm", "auto", (torch.empty(5, 64, device="meta"),),
                             refuse)


def test_only_checked_calls_let_checks_be_skipped(monkeypatch):
    # A choice made for arguments nobody checked (a direct choose()) is not remembered, so it
    # cannot let a checked call skip the checks of a later call with the same signature.
    monkeypatch.setattr(_backend, "_REMEMBER_ON", ("meta",))
    kern = _backend.Kernel("fp8_scaled_mm", "cuda", "k", lambda *a: "out", None, None, 30)
    monkeypatch.setitem(_backend._KERNELS, "fp8_scaled_mm", [kern])
    args = (torch.empty(4, 64, device="meta"), "not a tensor")
    _backend.choose("fp8_scaled_mm", torch.device("meta"), "auto", args)

    def refuse():
        raise TypeError("b must be a torch.Tensor")

    with pytest.raises(TypeError):
        _run_checked("fp8_scaled_mm", "auto", args, refuse)


def test_arch_override_drops_the_newer_arch_table(h100, monkeypatch):
    # LOWBIT_ARCH=89 on an H100: auto orders kernels as an sm_89 card would (by priority).
    monkeypatch.setenv("LOWBIT_ARCH", "89")
    assert heuristics.preferred("fp8_scaled_mm", torch.device("cuda", 0), _args(4096)) is None
    monkeypatch.setenv("LOWBIT_ARCH", "90")
    assert heuristics.preferred("fp8_scaled_mm", torch.device("cuda", 0), _args(4096))[0] == \
        "sm90_fp8_gemm_wgmma"


def test_getenv_follows_os_environ(monkeypatch):
    # The hot path's environment reads see what os.environ.get sees, through every change
    # made through os.environ (monkeypatch uses it), non-ASCII values included.
    from lowbit._env import getenv
    name = "LOWBIT_TEST_ENV_SWITCH"
    monkeypatch.delenv(name, raising=False)
    assert getenv(name) is None
    for value in ("1", "", "89", "\u00e9t\u00e9"):
        monkeypatch.setenv(name, value)
        assert getenv(name) == os.environ.get(name) == value
    monkeypatch.delenv(name)
    assert getenv(name) is None


def test_unhashable_argument_is_not_remembered(monkeypatch):
    # A signature that cannot be hashed is neither looked up nor stored: the call runs its
    # checks and choice every time instead of failing.
    monkeypatch.setattr(_backend, "_REMEMBER_ON", ("meta",))
    kern = _backend.Kernel("fp8_scaled_mm", "cuda", "k", lambda *a: "out", None, None, 30)
    monkeypatch.setitem(_backend._KERNELS, "fp8_scaled_mm", [kern])
    checks = []
    args = (torch.empty(4, 64, device="meta"), {"not": "hashable"})
    for _ in range(2):
        assert _run_checked("fp8_scaled_mm", "auto", args,
                                    lambda: checks.append(1)) == "out"
    assert len(checks) == 2 and not _backend._choices


def test_remembered_choice_runs_the_prepared_launcher(monkeypatch):
    # A kernel with prepare(): the choice stored for a signature runs the launcher prepared
    # for it (made once per signature); a choice nobody stored runs the general function.
    monkeypatch.setattr(_backend, "_REMEMBER_ON", ("meta",))
    made = []

    def prepare(t, flag):
        shape = tuple(t.shape)
        made.append(shape)
        return lambda t, flag: ("prepared for", shape, tuple(t.shape))

    kern = _backend.Kernel("fp8_scaled_mm", "cuda", "k", lambda t, flag: "general", None, None,
                           30, prepare)
    monkeypatch.setitem(_backend._KERNELS, "fp8_scaled_mm", [kern])
    call = lambda t: _run_checked("fp8_scaled_mm", "auto", (t, False), lambda: None)
    a = torch.empty(4, 64, device="meta")
    assert call(a) == call(torch.empty(4, 64, device="meta")) == \
        ("prepared for", (4, 64), (4, 64))
    assert call(torch.empty(5, 64, device="meta")) == ("prepared for", (5, 64), (5, 64))
    assert made == [(4, 64), (5, 64)]
    c = torch.empty(6, 64, device="meta")
    assert _backend.choose("fp8_scaled_mm", torch.device("meta"), "auto", (c, False)).fn(
        c, False) == "general"
    assert made == [(4, 64), (5, 64)]
