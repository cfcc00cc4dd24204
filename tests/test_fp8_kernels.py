"""Cases every fp8 GPU kernel must pass, parametrized over the registry's kernels (CUDA and
Triton): each kernel is called directly, on the arguments its op would pass it, and compared
with the reference (quantizers bit for bit, GEMMs within the SPEC's tolerance). A kernel that
cannot run here, or does not take a case's arguments, skips with its own available() or
supports() reason.

Without a GPU the Triton kernels run on CPU tensors under Triton's interpreter (conftest.py
loads them so); the CUDA kernels skip. Kernel-specific behaviour stays in the kernels' own
files (test_cuda_fp8_gemm.py, test_cuda_fp8_quant.py, test_triton_fp8.py).
"""
import contextlib
import itertools
from typing import Optional

import pytest
import torch

import lowbit
from lowbit import _backend
from lowbit_testing import (FP8, GRAN_IDS, GRANS, MIN_SCALE, TINY_ABSMAX, assert_bits_equal,
                            cuda_quantize_module, fp8_gemm_operands, gemm_tol, kernel_params,
                            quantized_gemm_operands, rel_fro, skip_unless_runs, tiny_input)

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
FMTS = ("e4m3fn", "e5m2", "e4m3fnuz")
FLOATS = (torch.float32, torch.bfloat16, torch.float16)

# The interpreter evaluates with NumPy, which warns on the NaN / Inf inputs these tests feed.
pytestmark = [pytest.mark.usefixtures("triton_interpreter"),
              pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")]


def _hw_cvt_settings(kernel):
    """The CUDA quantizers run with both encoders (the integer one and the sm_89+ cvt
    instruction, chosen by HW_CVT); other kernels have one."""
    return (False, True) if kernel.backend == "cuda" else (None,)


@contextlib.contextmanager
def _hw_cvt(hw):
    """HW_CVT = hw inside (None: left alone). Remembered choices are dropped on the way in and
    out: they hold launchers prepared under the setting of their time."""
    if hw is None:
        yield
        return
    mod = cuda_quantize_module()
    old, mod.HW_CVT = mod.HW_CVT, hw
    _backend._choices.clear()
    try:
        yield
    finally:
        mod.HW_CVT = old
        _backend._choices.clear()


def _op_runs(kernel, *args, **kwargs):
    """Whether the op, asked for the kernel's backend, picks this kernel for these arguments
    (then the op's path, with its launcher prepared per signature, is checked too)."""
    fn = getattr(lowbit, kernel.op)
    return lowbit.explain(fn, *args, backend=kernel.backend, **kwargs).kernel == kernel.name


# ----------------------------------------------------------------------- quantize_fp8
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("gran", GRANS, ids=GRAN_IDS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_fp8"))
def test_quantize_tiny_absmax(kernel, gran, fmt):
    """Slices whose absmax / qmax lies under the scale floor 2^-126 (1e-38, 1e-36, fp32
    subnormals), with zeros and an all-zero row: scales, codes and the dequantized values
    are the reference's bit for bit, and nothing is NaN (with absmax / qmax itself, 1 / scale
    was +Inf and 0 * Inf made the zeros NaN)."""
    granularity, group_size, block = gran
    probe = torch.zeros(4, 256, device=DEVICE)
    skip_unless_runs(kernel, probe, None, fmt, granularity, group_size, list(block), True)
    kw = dict(fmt=fmt, granularity=granularity, group_size=group_size, block=block)
    shapes = ((4, 256), (130, 384)) if HAS_CUDA else ((4, 256),)
    for hw in _hw_cvt_settings(kernel):
        with _hw_cvt(hw):
            for absmax in TINY_ABSMAX:
                for shape in shapes:
                    for dtype in (torch.float32, torch.bfloat16):
                        what = f"absmax={absmax:.3g} {shape} {dtype} hw_cvt={hw}"
                        x = torch.from_numpy(tiny_input(absmax, shape)).to(dtype)
                        _check_tiny(kernel, x, kw, what)


def _check_tiny(kernel, x, kw, what):
    xd = x.to(DEVICE)
    q, s = kernel.fn(xd, None, kw["fmt"], kw["granularity"], kw["group_size"],
                     list(kw["block"]), True)
    q0, s0 = lowbit.quantize_fp8(x, backend="reference", **kw)
    assert q.device.type == s.device.type == DEVICE
    assert_bits_equal(q, q0, f"q {what}")
    assert_bits_equal(s, s0, f"scale {what}")
    assert bool((s >= float(MIN_SCALE)).all()), what
    if _op_runs(kernel, xd, None, **kw):
        for _ in range(2):  # the second call runs the launcher prepared for the signature
            q1, s1 = lowbit.quantize_fp8(xd, backend=kernel.backend, **kw)
            assert_bits_equal(q1, q, f"q through the op {what}")
            assert_bits_equal(s1, s, f"scale through the op {what}")
    for od in (torch.float32, torch.bfloat16):
        got = lowbit.dequantize_fp8(q, s, out_dtype=od, backend=kernel.backend)
        want = lowbit.dequantize_fp8(q0, s0, out_dtype=od, backend="reference")
        assert_bits_equal(got, want, f"dequantize {what} -> {od}")
        assert not bool(torch.isnan(got).any()), what


def _quantize_matches_reference(kernel, x, scale, kw, what) -> Optional[str]:
    """The kernel's codes and scale for ``x`` (and the op's, where it picks this kernel) are
    the reference's bit for bit; returns why not run when the kernel does not take them."""
    args = (x, scale, kw["fmt"], kw["granularity"], kw["group_size"], list(kw["block"]), True)
    why = kernel.supports(*args) if kernel.supports is not None else None
    if why:
        return why
    q0, s0 = lowbit.quantize_fp8(x.cpu(), None if scale is None else scale.cpu(),
                                 backend="reference", **kw)
    outs = [kernel.fn(*args)]
    if _op_runs(kernel, x, scale, **kw):
        outs.append(lowbit.quantize_fp8(x, scale, backend=kernel.backend, **kw))
    for q, s in outs:
        assert_bits_equal(q, q0, f"q {what}")
        assert_bits_equal(s, s0, f"scale {what}")
    return None


@pytest.mark.parametrize("gran", GRANS, ids=GRAN_IDS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_fp8"))
def test_quantize_empty(kernel, gran):
    """M = 0, K = 0 and an empty leading dimension, with dynamic and static scales."""
    granularity, group_size, block = gran
    skip_unless_runs(kernel)  # available() only: supports() depends on the scale below
    kw = dict(fmt="e4m3fn", granularity=granularity, group_size=group_size, block=block)
    shapes = [(0, 256), (0, 100), (4, 0), (5, 0)]
    if granularity in ("tensor", "token", "group"):
        shapes.append((2, 0, 256))
    reasons = []
    for shape, dtype in itertools.product(shapes, (torch.float32, torch.bfloat16)):
        if granularity == "group" and shape[-1] % group_size:
            continue
        x = torch.empty(shape, dtype=dtype, device=DEVICE)
        what = f"{shape} {dtype}"
        if granularity in ("group", "block") and shape[-1] == 0:
            # K = 0 leaves zero scale columns, which the reference's expand_scale cannot read
            # (it divides by them): check the shapes alone.
            args = (x, None, "e4m3fn", granularity, group_size, list(block), True)
            if kernel.supports is None or kernel.supports(*args) is None:
                q, s = kernel.fn(*args)
                assert q.shape == x.shape and s.shape[-1] == 0, what
            continue
        reasons.append(_quantize_matches_reference(kernel, x, None, kw, f"dynamic {what}"))
        _, s = lowbit.quantize_fp8(x.cpu(), backend="reference", **kw)
        for static in (s * 2, torch.full(s.shape, 0.25)):
            reasons.append(_quantize_matches_reference(kernel, x, static.to(DEVICE), kw,
                                                       f"static {what}"))
    if reasons and all(reasons):
        pytest.skip(f"{kernel.backend}/{kernel.name}: {reasons[0]}")


# --------------------------------------------------------------------- dequantize_fp8
@pytest.mark.parametrize("out_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("kernel", kernel_params("dequantize_fp8"))
def test_dequantize_all_codes(kernel, fmt, out_dtype):
    """Every code of the format, under each scale granularity, bit for bit."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    q = codes.repeat(4).reshape(4, 256).view(FP8[fmt][0]).to(DEVICE)
    g = torch.Generator().manual_seed(6)
    scales = [
        torch.tensor(0.37),
        torch.tensor(1.0),
        torch.tensor([[1.0], [2.0 ** -30], [3.0e35], [0.1]]),           # per row (+ overflow)
        torch.rand(4, 8, generator=g) + 0.5,                            # per group of 32
        torch.rand(4, 2, generator=g) + 0.5,                            # per 1x128 block
        torch.tensor([[0.25, 3.0]]),                                    # per 128x128 block
    ]
    skip_unless_runs(kernel, q, scales[0].to(DEVICE), out_dtype)
    for s in scales:
        s = s.to(DEVICE)
        want = lowbit.dequantize_fp8(q, s, out_dtype=out_dtype, backend="reference")
        assert_bits_equal(kernel.fn(q, s, out_dtype), want, f"scale shape {tuple(s.shape)}")
        if _op_runs(kernel, q, s, out_dtype=out_dtype):
            got = lowbit.dequantize_fp8(q, s, out_dtype=out_dtype, backend=kernel.backend)
            assert_bits_equal(got, want, f"through the op, scale shape {tuple(s.shape)}")


# ---------------------------------------------------------------------- fp8_scaled_mm
GEMM_MODES = [("tensor", "tensor"), ("row", "row"), ("block", "block"), ("row", "block"),
              ("tensor", "row")]
GEMM_MODE_IDS = [f"{a}-{b}" for a, b in GEMM_MODES]


def _quantize_for_operands(x, **kw):
    # Quantized by the reference on the CPU; on a GPU by the Triton kernels (bit-exact with
    # it, test_quantize_*), where the host reference would be slow.
    return lowbit.quantize_fp8(x, backend="triton" if HAS_CUDA else "reference", **kw)


@pytest.mark.parametrize("modes", GEMM_MODES, ids=GEMM_MODE_IDS)
@pytest.mark.parametrize("mnk", [(1, 3, 136), (17, 3, 136), (17, 40, 300), (17, 40, 256)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kernel", kernel_params("fp8_scaled_mm"))
def test_gemm_small(kernel, mnk, modes):
    """Every output dtype, both accumulation modes, with and without a bf16 bias, at ragged
    M, N and K (K % 16 = 8 and 12 is the Triton kernel's alone)."""
    m, n, k = mnk
    a, b, sa, sb = quantized_gemm_operands(_quantize_for_operands, m, n, k, *modes, DEVICE,
                                           seed=m + n + k)
    skip_unless_runs(kernel, a, b, sa, sb, None, torch.float32, False)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    for use_bias in (False, True):
        bb = bias.to(torch.bfloat16) if use_bias else None
        ref = lowbit.fp8_scaled_mm(a.cpu(), b.cpu(), sa.cpu(), sb.cpu(),
                                   None if bb is None else bb.cpu(), out_dtype=torch.float32,
                                   backend="reference")
        for od in FLOATS:
            for fast in (False, True):
                out = kernel.fn(a, b, sa, sb, bb, od, fast)
                assert out.dtype == od and out.shape == (m, n)
                err = rel_fro(out, ref)
                # A kernel without promotion under fast_accum is held to gemm_tol's 1e-2.
                bound = gemm_tol(od, fast and kernel.backend == "triton")
                assert err <= bound, f"{od} fast={fast} bias={use_bias}: {err:.2e}"


@pytest.mark.parametrize("m", [8, 100])
@pytest.mark.parametrize("kernel", kernel_params("fp8_scaled_mm"))
def test_gemm_strided_scales_and_bias(kernel, m):
    """Per-row scales and a bias that are views with non-unit strides are read as such:
    the same bits as from their dense copies."""
    a, b, sa, sb = fp8_gemm_operands(100, 384, 512, "row", DEVICE)
    sa2 = torch.stack([sa, sa + 1], dim=1)[:, 0]   # [M, 1] with stride (2, 1)
    sb2 = torch.stack([sb, sb + 1], dim=1)[:, 0]
    bias = torch.randn(2 * 384, device=DEVICE)[::2]
    args = (a[:m], b, sa2[:m], sb2, bias, torch.bfloat16, False)
    skip_unless_runs(kernel, *args)
    dense = (a[:m], b, sa2[:m].contiguous(), sb2.contiguous(), bias.contiguous())
    out = kernel.fn(*args)
    assert torch.equal(out, kernel.fn(*dense, torch.bfloat16, False))
    # Through the op too, where it picks this kernel: a remembered signature runs the
    # launcher prepared for it.
    if _op_runs(kernel, *args[:5]):
        for _ in range(2):
            assert torch.equal(lowbit.fp8_scaled_mm(*args[:5], backend=kernel.backend), out)
