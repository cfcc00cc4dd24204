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
from lowbit import _backend, _native
from lowbit_testing import (DEQUANT_SCALE_KINDS, FP8, GRAN_IDS, GRANS, LAYOUTS, MIN_SCALE,
                            TINY_ABSMAX, all_bf16, all_fp16, assert_bits_equal,
                            cuda_quantize_module, dequant_scales, fp8_gemm_operands, gemm_tol,
                            kernel_params, quantized_gemm_operands, rel_fro, skip_unless_runs,
                            special_data, special_scales, tiny_input, with_layout)

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
FMTS = ("e4m3fn", "e5m2", "e4m3fnuz")
FLOATS = (torch.float32, torch.bfloat16, torch.float16)

# The interpreter evaluates with NumPy, which warns on the NaN / Inf inputs these tests feed;
# the static scales they feed include values the ops refuse where they read values
# (unchecked_values).
pytestmark = [pytest.mark.usefixtures("triton_interpreter", "unchecked_values"),
              pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")]


def _hw_cvt_settings(kernel):
    """The CUDA quantizers run with both encoders (the integer one and the sm_89+ cvt
    instruction, chosen by HW_CVT); other kernels have one."""
    return (False, True) if kernel.backend == "cuda" else (None,)


@contextlib.contextmanager
def _hw_cvt(hw):
    """HW_CVT = hw inside (None: left alone). Remembered choices and the C++ plans are dropped
    on the way in and out: they hold launchers prepared under the setting of their time."""
    if hw is None:
        yield
        return
    mod = cuda_quantize_module()
    old, mod.HW_CVT = mod.HW_CVT, hw
    _backend._choices.clear()
    _native.reset()
    try:
        yield
    finally:
        mod.HW_CVT = old
        _backend._choices.clear()
        _native.reset()


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
    the reference's bit for bit, on x's device, and a static scale comes back as a new
    tensor; returns why not run when the kernel does not take them."""
    args = (x, scale, kw["fmt"], kw["granularity"], kw["group_size"], list(kw["block"]),
            kw.get("saturate", True))
    why = kernel.supports(*args) if kernel.supports is not None else None
    if why:
        return why
    q0, s0 = lowbit.quantize_fp8(x.cpu(), None if scale is None else scale.cpu(),
                                 backend="reference", **kw)
    outs = [kernel.fn(*args)]
    if _op_runs(kernel, x, scale, **kw):
        outs.append(lowbit.quantize_fp8(x, scale, backend=kernel.backend, **kw))
    for q, s in outs:
        assert q.device == s.device == x.device, what
        assert_bits_equal(q, q0, f"q {what}")
        assert_bits_equal(s, s0, f"scale {what}")
        if scale is not None and scale.numel():
            assert s.data_ptr() != scale.data_ptr(), f"{what}: the scale is returned as given"
    return None


def _quantize_cases(kernel, cases, both_encoders=True):
    """Each ``(x, scale, kw, what)`` case the kernel takes matches the reference
    (_quantize_matches_reference), under both encoders of a CUDA kernel where
    ``both_encoders``; skips with the kernel's reason when it takes none of them."""
    reasons = []
    for hw in _hw_cvt_settings(kernel) if both_encoders else (None,):
        with _hw_cvt(hw):
            for x, scale, kw, what in cases:
                reasons.append(_quantize_matches_reference(kernel, x, scale, kw,
                                                           f"{what} {kw} hw_cvt={hw}"))
    if reasons and all(reasons):
        pytest.skip(f"{kernel.backend}/{kernel.name}: {reasons[0]}")


def _kw(gran, fmt="e4m3fn", **extra):
    granularity, group_size, block = gran
    return dict(fmt=fmt, granularity=granularity, group_size=group_size, block=block, **extra)


def _dynamic_shapes(granularity, group_size):
    if granularity == "group":
        g = group_size
        shapes = [(1, g), (17, 3 * g), (7, 4096 + g), (130, 8 * g)]
    else:
        shapes = [(1, 1), (1, 200), (17, 4104), (130, 200), (3, 8192), (257, 128), (5, 40000)]
    # Under Triton's interpreter (no GPU) the smaller ones: it runs one program at a time.
    return shapes if HAS_CUDA else [s for s in shapes if s[0] * s[1] <= 30000]


@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2"])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("gran", GRANS, ids=GRAN_IDS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_fp8"))
def test_quantize_dynamic_special_values(kernel, gran, dtype, fmt):
    """Dynamic scales of every granularity over data with NaN, +-Inf, subnormals, -0, an
    all-zero and a tiny row, at ragged and long rows."""
    skip_unless_runs(kernel)
    kw = _kw(gran, fmt)
    cases = [(special_data(shape, dtype, seed=i, device=DEVICE), None, kw, f"{shape}")
             for i, shape in enumerate(_dynamic_shapes(gran[0], gran[1]))]
    _quantize_cases(kernel, cases)


@pytest.mark.parametrize("saturate", [True, False], ids=["sat", "nosat"])
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("gran", GRANS, ids=GRAN_IDS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_fp8"))
def test_quantize_dynamic_all_modes(kernel, gran, fmt, saturate):
    """Every format, saturating or not, under each granularity's dynamic scale."""
    skip_unless_runs(kernel)
    shape = (33, 384) if gran[0] == "group" else (33, 392)
    x = special_data(shape, torch.bfloat16, seed=3, device=DEVICE)
    _quantize_cases(kernel, [(x, None, _kw(gran, fmt, saturate=saturate), "")],
                    both_encoders=False)


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("gran", GRANS, ids=GRAN_IDS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_fp8"))
def test_quantize_granularities(kernel, gran, fmt, dynamic):
    """Rows of very different magnitude, a ragged K (except where the group must divide
    it), an all-zero row (scale 1) and a row with a NaN (scale NaN), in every input dtype;
    static scales that the data overflows in places."""
    skip_unless_runs(kernel)
    kw = _kw(gran, fmt)
    g = torch.Generator().manual_seed(2)
    k = 256 if gran[0] == "group" else 200
    mag = torch.exp2(torch.randint(-12, 12, (131, 1), generator=g).float())
    x = torch.randn(131, k, generator=g) * mag
    x[5] = 0.0
    x[7, 3] = float("nan")
    cases = []
    for dtype in FLOATS:
        xd = x.to(dtype).to(DEVICE)
        scale = None
        if not dynamic:
            _, scale = lowbit.quantize_fp8(xd.cpu(), backend="reference", **kw)
            # Finite, as static scales must be (the NaN row's dynamic scale is NaN).
            scale = torch.nan_to_num(scale * 0.75, nan=1.0).to(DEVICE)
        cases.append((xd, scale, kw, str(dtype)))
    _quantize_cases(kernel, cases)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gran", GRANS, ids=GRAN_IDS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_fp8"))
def test_quantize_layouts(kernel, gran, layout, dtype):
    """Transposed, strided, misaligned-row and offset inputs, with dynamic and static
    scales: the same codes and scales as from the contiguous copy."""
    skip_unless_runs(kernel)
    kw = _kw(gran)
    shape = (37, 512) if gran[0] == "group" else (37, 520)
    x = with_layout(special_data(shape, dtype, seed=7, device=DEVICE), layout)
    _, s = lowbit.quantize_fp8(x.cpu(), backend="reference", **kw)
    # The data holds NaN and Inf, so some dynamic scales do too; a static scale must be
    # finite (a non-finite one is a ValueError, tested in test_errors.py).
    s = torch.where(torch.isfinite(s), s, torch.ones_like(s)).to(DEVICE)
    _quantize_cases(kernel, [(x, None, kw, layout), (x, s, kw, f"{layout} static")],
                    both_encoders=False)


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("gran", GRANS, ids=GRAN_IDS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_fp8"))
def test_quantize_static_scales(kernel, gran, dtype, fmt):
    """Given scales of every granularity, including 0, negative and subnormal entries (IEEE
    arithmetic decides what they do, in the kernel as in the reference), and a scale tensor
    that is not contiguous."""
    skip_unless_runs(kernel)
    kw = _kw(gran, fmt)
    shape = (130, 384) if gran[0] == "group" else (130, 392)
    x = special_data(shape, dtype, seed=5, device=DEVICE)
    _, s_ref = lowbit.quantize_fp8(x.cpu(), backend="reference", **kw)
    s = (special_scales(tuple(s_ref.shape), seed=6, device=DEVICE) if s_ref.dim()
         else torch.tensor(0.7, device=DEVICE))
    cases = [(x, s, kw, "static")]
    if s.dim() == 2 and s.shape[1] > 1:
        cases.append((x, s.t().contiguous().t(), kw, "static non-contiguous scale"))
    _quantize_cases(kernel, cases, both_encoders=False)


@pytest.mark.parametrize("saturate", [True, False], ids=["sat", "nosat"])
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_fp8"))
def test_quantize_all_bf16_patterns(kernel, fmt, saturate):
    """Every bf16 bit pattern under static scales (1: the bare encoder; odd values; a small
    power of two), as bf16 and as the same values in fp32, and with dynamic per-token
    scales."""
    skip_unless_runs(kernel)
    x = all_bf16(DEVICE)
    kw = _kw(GRANS[0], fmt, saturate=saturate)
    cases = []
    for v in (1.0, 0.3, 0.7071, 2.0 ** -12):
        scale = torch.tensor(v, device=DEVICE)
        cases += [(x, scale, kw, f"bf16 scale={v}"), (x.float(), scale, kw, f"fp32 scale={v}")]
    cases.append((x, None, _kw(GRANS[1], fmt, saturate=saturate), "bf16 dynamic"))
    _quantize_cases(kernel, cases)


@pytest.mark.parametrize("saturate", [True, False], ids=["sat", "nosat"])
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_fp8"))
def test_quantize_all_fp16_patterns(kernel, fmt, saturate):
    """Every fp16 bit pattern under static scales 1 and 0.3."""
    skip_unless_runs(kernel)
    x = all_fp16(DEVICE)
    kw = _kw(GRANS[0], fmt, saturate=saturate)
    _quantize_cases(kernel, [(x, torch.tensor(v, device=DEVICE), kw, f"fp16 scale={v}")
                             for v in (1.0, 0.3)])


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


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", DEQUANT_SCALE_KINDS)
@pytest.mark.parametrize("out_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("kernel", kernel_params("dequantize_fp8"))
def test_dequantize_layouts(kernel, fmt, out_dtype, kind, layout):
    """Every code of the format in random places, every scale layout (with Inf, 0, negative
    scales and products that are subnormal or overflow in the output dtype), every output
    dtype, q in every memory layout."""
    shape = (130, 384) if kind.startswith("group") else (130, 392)
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 256, shape, generator=g, dtype=torch.int32).to(torch.uint8)
    codes.view(-1)[:256] = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    q = with_layout(codes.view(FP8[fmt][0]).to(DEVICE), layout)
    s = dequant_scales(shape, kind, seed=2, device=DEVICE)
    if kind != "tensor":
        # Inf * 0 = NaN and Inf * x = Inf; products that are subnormal in bf16 (1e-40) or
        # fp16 (1e-6), that overflow fp16 (1e5) or round to Inf in bf16 (7.595e35); 0; < 0.
        special = [float("inf"), 1e-40, 1e-6, 1e5, 7.595e35, 0.0, -2.5]
        flat = s.view(-1)
        for j, v in enumerate(special[: flat.numel()]):
            flat[j] = v
    skip_unless_runs(kernel, q, s, out_dtype)
    want = lowbit.dequantize_fp8(q.cpu(), s.cpu(), out_dtype=out_dtype, backend="reference")
    what = f"{fmt} {kind} {layout}"
    outs = [kernel.fn(q, s, out_dtype)]
    if _op_runs(kernel, q, s, out_dtype=out_dtype):
        outs.append(lowbit.dequantize_fp8(q, s, out_dtype=out_dtype, backend=kernel.backend))
    for out in outs:
        assert out.device == q.device, what
        assert_bits_equal(out, want, what)


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
