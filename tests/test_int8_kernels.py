"""Cases every INT8 GPU kernel must pass, parametrized over the registry's kernels (CUDA and
Triton): each kernel is called directly, on the arguments its op would pass it, and through
the op where the op picks it, and compared with the reference: the quantizers bit for bit
(q, scale and zero point), int8_mm exactly against an int64 product, int8_gemm within the
SPEC's tolerances against float64 from the same int8 operands. A kernel that cannot run
here, or does not take a case's arguments, skips with its own available() or supports()
reason.

Without a GPU the Triton kernels run on CPU tensors under Triton's interpreter, at small
sizes; the large shapes (K = 65536, N = 3000, K = 4104) run only on CUDA. Kernel-specific
behaviour stays in the kernels' own files (test_triton_int8.py).
"""
import itertools
from typing import Optional

import pytest
import torch

import lowbit
from lowbit_testing import (DEQUANT_SCALE_KINDS, GEMM_TOL, GRAN_IDS, GRANS, LAYOUTS,
                            TINY_ABSMAX, all_bf16, all_fp16, assert_bits_equal, dequant_scales,
                            empty_quant_inputs,
                            int8_gemm_ref_f64, int8_mm_ref, kernel_params, rel_fro,
                            skip_unless_runs, special_data, special_scales, tiny_input,
                            with_layout)

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
FLOATS = (torch.float32, torch.bfloat16, torch.float16)
SYM = [True, False]
SYM_IDS = ["sym", "asym"]

# The interpreter evaluates with NumPy, which warns on the NaN / Inf inputs these tests feed.
# The static scales and zero points they feed include values the ops refuse where they read
# values (unchecked_values).
pytestmark = [pytest.mark.usefixtures("triton_interpreter", "unchecked_values"),
              pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")]


def _op_runs(kernel, *args, **kwargs):
    """Whether the op, asked for the kernel's backend, picks this kernel for these arguments
    (then the op's path, with its launcher prepared per signature, is checked too)."""
    fn = getattr(lowbit, kernel.op)
    return lowbit.explain(fn, *args, backend=kernel.backend, **kwargs).kernel == kernel.name


def _kw(gran, symmetric):
    granularity, group_size, block = gran
    return dict(granularity=granularity, group_size=group_size, block=block,
                symmetric=symmetric)


def _kernel_args(x, scale, zero, kw):
    return (x, scale, zero, kw["granularity"], kw["group_size"], list(kw["block"]),
            kw["symmetric"])


def _cpu(t):
    return None if t is None else t.cpu()


# ----------------------------------------------------------------------- quantize_int8
def _quantize_matches_reference(kernel, x, scale, zero, kw, what, via_op=True) -> Optional[str]:
    """The kernel's q, scale and zero point for ``x`` (and the op's, where it picks this
    kernel) are the reference's bit for bit, on x's device; a static scale and zero come
    back as new tensors. Returns why not run when the kernel does not take the case."""
    args = _kernel_args(x, scale, zero, kw)
    why = kernel.supports(*args) if kernel.supports is not None else None
    if why:
        return why
    q0, s0, z0 = lowbit.quantize_int8(x.cpu(), _cpu(scale), zero=_cpu(zero),
                                      backend="reference", **kw)
    outs = [kernel.fn(*args)]
    if via_op and _op_runs(kernel, x, scale, zero=zero, **kw):
        outs.append(lowbit.quantize_int8(x, scale, zero=zero, backend=kernel.backend, **kw))
    for q, s, z in outs:
        assert q.device == s.device == x.device, what
        assert_bits_equal(q, q0, f"q {what}")
        assert_bits_equal(s, s0, f"scale {what}")
        if kw["symmetric"]:
            assert z is None or z.numel() == 0, f"{what}: a symmetric zero point"
        else:
            assert z.device == x.device, what
            assert_bits_equal(z, z0, f"zero {what}")
        if scale is not None and scale.numel():
            assert s.data_ptr() != scale.data_ptr(), f"{what}: the scale is returned as given"
    return None


def _quantize_cases(kernel, cases):
    """Each ``(x, scale, zero, kw, what)`` case the kernel takes matches the reference; skips
    with the kernel's reason when it takes none of them."""
    reasons = [_quantize_matches_reference(kernel, *case) for case in cases]
    if reasons and all(reasons):
        pytest.skip(f"{kernel.backend}/{kernel.name}: {reasons[0]}")


def _static(x, kw, factor=0.75):
    """A finite static scale (the reference's dynamic one times ``factor``; NaN -> 1) and,
    when asymmetric, the reference's zero point, on x's device."""
    _, s, z = lowbit.quantize_int8(x.cpu(), backend="reference", **kw)
    s = torch.where(torch.isfinite(s), s * factor, torch.ones_like(s)).to(x.device)
    return s, None if z is None else z.to(x.device)


def _shape(gran, rows):
    # A ragged K (not a multiple of 128) except where the group must divide it.
    return (rows, 256) if gran[0] == "group" else (rows, 264)


@pytest.mark.parametrize("symmetric", SYM, ids=SYM_IDS)
@pytest.mark.parametrize("gran", GRANS, ids=GRAN_IDS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_int8"))
def test_quantize_special_values(kernel, gran, symmetric):
    """Random data over many binades with NaN, +-Inf, subnormals, -0, +-3e38, an all-zero and
    a tiny row, in every input dtype, with dynamic and static scales (and zero points)."""
    skip_unless_runs(kernel)
    kw = _kw(gran, symmetric)
    rows = (37, 130) if HAS_CUDA else (37,)
    cases = []
    for dtype, m in itertools.product(FLOATS, rows):
        x = special_data(_shape(gran, m), dtype, seed=m, device=DEVICE)
        s, z = _static(x, kw)
        # The op's path once per dtype (it shares the kernel's launcher).
        cases += [(x, None, None, kw, f"dynamic {dtype} {m}", m == rows[0]),
                  (x, s, z, kw, f"static {dtype} {m}", False)]
    _quantize_cases(kernel, cases)


def _extreme_rows(k, dtype):
    """Rows: constant, all zero, +-3e38 (the asymmetric range overflows to Inf), huge and
    ordinary values mixed, NaN, +Inf, -Inf, a constant negative row, a single nonzero."""
    big = 6e4 if dtype == torch.float16 else 3e38
    g = torch.Generator().manual_seed(9)
    x = torch.randn(10, k, generator=g)
    x[0] = 1.5
    x[1] = 0.0
    x[2] = big
    x[2, ::2] = -big
    x[3, :7] = big
    x[4, 5] = float("nan")
    x[5, 3] = float("inf")
    x[6, 1] = -float("inf")
    x[7] = -2.5
    x[8] = 0.0
    x[8, k - 1] = 1e-3
    x[9] = -big
    return x.to(dtype)


@pytest.mark.parametrize("symmetric", SYM, ids=SYM_IDS)
@pytest.mark.parametrize("gran", GRANS, ids=GRAN_IDS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_int8"))
def test_quantize_extremes(kernel, gran, symmetric):
    """Constant, all-zero, near +-3e38, NaN and +-Inf rows (each its own scale slice
    except per tensor), and slices whose extent / qmax is under the scale floor (1e-38,
    fp32 subnormals): dynamic, and static scales that the data overflows."""
    skip_unless_runs(kernel)
    kw = _kw(gran, symmetric)
    k = _shape(gran, 1)[1]
    cases = []
    for dtype in FLOATS:
        x = _extreme_rows(k, dtype).to(DEVICE)
        s, z = _static(x, kw, factor=0.01)
        cases += [(x, None, None, kw, f"extreme {dtype}"), (x, s, z, kw, f"extreme static {dtype}")]
    for absmax in TINY_ABSMAX:
        x = torch.from_numpy(tiny_input(absmax, (4, k))).to(DEVICE)
        cases.append((x, None, None, kw, f"tiny absmax={absmax:.3g}"))
    _quantize_cases(kernel, cases)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_int8"))
def test_quantize_layouts(kernel, layout):
    """Transposed, strided, misaligned-row and offset inputs, every granularity the kernel
    takes, symmetric and asymmetric, dynamic and static, a non-contiguous static scale: the
    same q, scales and zero points as from the contiguous copy."""
    skip_unless_runs(kernel)
    cases = []
    for gran, symmetric in itertools.product(GRANS, SYM):
        kw = _kw(gran, symmetric)
        x = with_layout(special_data(_shape(gran, 37), torch.bfloat16, seed=7, device=DEVICE),
                        layout)
        s, z = _static(x, kw)
        cases += [(x, None, None, kw, layout), (x, s, z, kw, f"{layout} static")]
        if s.dim() == 2 and s.shape[1] > 1:
            zt = None if z is None else z.t().contiguous().t()
            cases.append((x, s.t().contiguous().t(), zt, kw, f"{layout} static strided scale"))
    _quantize_cases(kernel, cases)


@pytest.mark.parametrize("symmetric", SYM, ids=SYM_IDS)
@pytest.mark.parametrize("gran", GRANS, ids=GRAN_IDS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_int8"))
def test_quantize_static_scales(kernel, gran, symmetric):
    """Given scales with 0, negative and subnormal entries (IEEE arithmetic decides what they
    do, in the kernel as in the reference) and zero points over the whole int32 range."""
    skip_unless_runs(kernel)
    kw = _kw(gran, symmetric)
    x = special_data(_shape(gran, 130 if HAS_CUDA else 37), torch.float32, seed=5,
                     device=DEVICE)
    s_ref, _ = _static(x, kw)
    s = (special_scales(tuple(s_ref.shape), seed=6, device=DEVICE) if s_ref.dim()
         else torch.tensor(0.7, device=DEVICE))
    z = None
    if not symmetric:
        g = torch.Generator().manual_seed(8)
        z = torch.randint(-300, 300, tuple(s.shape), generator=g, dtype=torch.int32)
        z.view(-1)[:2] = torch.tensor([2 ** 31 - 1, -2 ** 31], dtype=torch.int32)[:z.numel()]
        z = z.to(DEVICE)
    _quantize_cases(kernel, [(x, s, z, kw, "static")])


@pytest.mark.parametrize("symmetric", SYM, ids=SYM_IDS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_int8"))
def test_quantize_all_16bit_patterns(kernel, symmetric):
    """Every bf16 and fp16 bit pattern under static per-tensor scales (1: the bare rounding;
    odd values; a small power of two), as themselves and as the same values in fp32, and
    with dynamic per-token scales."""
    skip_unless_runs(kernel)
    tensor, token = _kw(GRANS[0], symmetric), _kw(GRANS[1], symmetric)
    zero = None if symmetric else torch.tensor(-3, dtype=torch.int32, device=DEVICE)
    cases = []
    for x in (all_bf16(DEVICE), all_fp16(DEVICE)):
        for v in (1.0, 0.3, 2.0 ** -12):
            scale = torch.tensor(v, device=DEVICE)
            cases += [(x, scale, zero, tensor, f"{x.dtype} scale={v}", False),
                      (x.float(), scale, zero, tensor, f"fp32 of {x.dtype} scale={v}", False)]
        cases.append((x, None, None, token, f"{x.dtype} dynamic", False))
    _quantize_cases(kernel, cases)


@pytest.mark.parametrize("symmetric", SYM, ids=SYM_IDS)
@pytest.mark.parametrize("gran", GRANS, ids=GRAN_IDS)
@pytest.mark.parametrize("kernel", kernel_params("quantize_int8"))
def test_quantize_empty(kernel, gran, symmetric):
    """M = 0, K = 0 and an empty leading dimension, with dynamic and static scales."""
    skip_unless_runs(kernel)  # available() only: supports() depends on the scale below
    kw = _kw(gran, symmetric)
    cases = []
    for x, k_empty in empty_quant_inputs(gran[0], gran[1], DEVICE):
        shape, dtype = tuple(x.shape), x.dtype
        if k_empty:
            args = _kernel_args(x, None, None, kw)
            if kernel.supports is None or kernel.supports(*args) is None:
                q, s, _ = kernel.fn(*args)
                assert q.shape == x.shape and s.shape[-1] == 0, shape
            continue
        cases.append((x, None, None, kw, f"dynamic {shape} {dtype}"))
        s, z = _static(x, kw, factor=2.0)
        cases.append((x, s, z, kw, f"static {shape} {dtype}"))
    _quantize_cases(kernel, cases)


# --------------------------------------------------------------------- dequantize_int8
@pytest.mark.parametrize("layout", ["contiguous", "sliced", "offset"])
@pytest.mark.parametrize("with_zero", [False, True], ids=["nozero", "zero"])
@pytest.mark.parametrize("kind", DEQUANT_SCALE_KINDS)
@pytest.mark.parametrize("kernel", kernel_params("dequantize_int8"))
def test_dequantize(kernel, kind, with_zero, layout):
    """Every int8 value, every scale layout (with Inf, 0, negative scales and products that
    are subnormal or overflow in the output dtype), zero points or none, every output
    dtype, q in several memory layouts: bit for bit."""
    shape = (130, 384) if kind.startswith("group") else (130, 392)
    if not HAS_CUDA:
        shape = (3, shape[1]) if kind != "block128" else (130, shape[1])
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
    codes.view(-1)[:256] = torch.arange(-128, 128, dtype=torch.int32).to(torch.int8)
    q = with_layout(codes.to(DEVICE), layout)
    s = dequant_scales(shape, kind, seed=2, device=DEVICE)
    if kind != "tensor":
        special = [float("inf"), 1e-40, 1e-6, 1e5, 7.595e35, 0.0, -2.5]
        flat = s.view(-1)
        for j, v in enumerate(special[: flat.numel()]):
            flat[j] = v
    z = None
    if with_zero:
        z = torch.randint(-128, 128, tuple(s.shape), generator=g, dtype=torch.int32).to(DEVICE)
    skip_unless_runs(kernel, q, s, z, torch.float32)
    for od in FLOATS:
        want = lowbit.dequantize_int8(q.cpu(), s.cpu(), _cpu(z), out_dtype=od,
                                      backend="reference")
        what = f"{kind} {layout} zero={with_zero} -> {od}"
        outs = [kernel.fn(q, s, z, od)]
        if _op_runs(kernel, q, s, z, out_dtype=od):
            outs.append(lowbit.dequantize_int8(q, s, z, out_dtype=od, backend=kernel.backend))
        for out in outs:
            assert out.device == q.device, what
            assert_bits_equal(out, want, what)


# --------------------------------------------------------------------------- int8_mm
def _int8(shape, seed, lo=-128, hi=128):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int8).to(DEVICE)


def _check_mm(kernel, a, b, what):
    want = int8_mm_ref(a, b)
    outs = [kernel.fn(a, b)]
    if _op_runs(kernel, a, b):
        outs.append(lowbit.int8_mm(a, b, backend=kernel.backend))
    for out in outs:
        assert out.dtype == torch.int32 and out.shape == want.shape, what
        assert out.device == a.device, what
        assert torch.equal(out.long().cpu(), want.cpu()), what


MM_SHAPES = [(1, 1, 16), (1, 3, 136), (17, 40, 136), (5, 7, 300), (100, 1, 72)]
MM_SHAPES_CUDA = [(1, 3000, 4104), (17, 3000, 4104), (100, 3000, 136), (100, 1, 4104),
                  (17, 1, 136), (100, 3000, 4104), (256, 512, 8192)]


@pytest.mark.parametrize("mnk", MM_SHAPES + (MM_SHAPES_CUDA if HAS_CUDA else []),
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kernel", kernel_params("int8_mm"))
def test_int8_mm_exact(kernel, mnk):
    """Awkward M (1, 17, 100), N (1, 3000) and K (136, 4104): exactly the int64 product."""
    m, n, k = mnk
    a, b = _int8((m, k), seed=m + k), _int8((n, k), seed=n + k + 1)
    skip_unless_runs(kernel, a, b)
    _check_mm(kernel, a, b, f"{mnk}")


@pytest.mark.parametrize("kernel", kernel_params("int8_mm"))
def test_int8_mm_worst_case(kernel):
    """The int32 worst cases: all -127 x -127 (and -128 x -128, 2^30) at K = 65536 on a GPU
    (a small K under the interpreter), and sums that cancel to 0 from both extremes."""
    k = 65536 if HAS_CUDA else 1024
    shapes = [(16, 8), (3, 33)] if HAS_CUDA else [(3, 5)]
    a0 = torch.full((1, k), -127, dtype=torch.int8, device=DEVICE)
    skip_unless_runs(kernel, a0, a0)
    for (m, n), v in itertools.product(shapes, (-127, -128)):
        a = torch.full((m, k), v, dtype=torch.int8, device=DEVICE)
        b = torch.full((n, k), v, dtype=torch.int8, device=DEVICE)
        _check_mm(kernel, a, b, f"all {v}, K = {k}")
        want = v * v * k
        assert int(kernel.fn(a, b)[0, 0]) == want
    alt = torch.tensor([127, -127], dtype=torch.int8, device=DEVICE).repeat(4, k // 2)
    _check_mm(kernel, alt, a0.expand(3, k).contiguous(), "alternating signs")


@pytest.mark.parametrize("layout", ["transposed", "sliced", "offset", "row_strided"])
@pytest.mark.parametrize("kernel", kernel_params("int8_mm"))
def test_int8_mm_layouts(kernel, layout):
    """Operands that are strided, column-major or offset views: the same exact product."""
    a = with_layout(_int8((17, 200), seed=3), layout)
    b = with_layout(_int8((40, 200), seed=4), layout)
    skip_unless_runs(kernel, a, b)
    _check_mm(kernel, a, b, layout)


# ------------------------------------------------------------------------- int8_gemm
GEMM_SHAPES = [(17, 40, 136)] + ([(1, 3000, 4104), (100, 3000, 4104)] if HAS_CUDA else [])


@pytest.mark.parametrize("a_zero", ["none", "tensor", "row"])
@pytest.mark.parametrize("b_row", [False, True], ids=["b_tensor", "b_row"])
@pytest.mark.parametrize("a_row", [False, True], ids=["a_tensor", "a_row"])
@pytest.mark.parametrize("mnk", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kernel", kernel_params("int8_gemm"))
def test_int8_gemm_epilogues(kernel, mnk, a_row, b_row, a_zero):
    """Every epilogue: a_scale () or [M, 1], b_scale () or [N, 1], a_zero none, () or
    [M, 1], bias none or in each float dtype, every output dtype; within the SPEC's
    tolerance of float64 from the same int8 operands."""
    m, n, k = mnk
    g = torch.Generator().manual_seed(m + n + k)
    # Activations quantized asymmetrically sit in [-128, 127]; weights symmetrically.
    a = _int8((m, k), seed=m)
    b = _int8((n, k), seed=n, lo=-127)
    sa = (torch.rand(m, 1, generator=g) * 0.02 + 0.001) if a_row else torch.tensor(0.013)
    sb = (torch.rand(n, 1, generator=g) * 0.002 + 1e-4) if b_row else torch.tensor(7e-4)
    za = {"none": None, "tensor": torch.tensor(-17, dtype=torch.int32),
          "row": torch.randint(-128, 128, (m, 1), generator=g, dtype=torch.int32)}[a_zero]
    sa, sb = sa.to(DEVICE), sb.to(DEVICE)
    za = None if za is None else za.to(DEVICE)
    bias = (torch.randn(n, generator=g) * 3).to(DEVICE)
    skip_unless_runs(kernel, a, b, sa, sb, None, torch.float32, za)
    for bias_dtype, od in itertools.product((None,) + FLOATS, FLOATS):
        bb = None if bias_dtype is None else bias.to(bias_dtype)
        ref = int8_gemm_ref_f64(a, b, sa, sb, bb, za)
        what = f"bias {bias_dtype} -> {od}"
        outs = [kernel.fn(a, b, sa, sb, bb, od, za)]
        if _op_runs(kernel, a, b, sa, sb, bb, out_dtype=od, a_zero=za):
            outs.append(lowbit.int8_gemm(a, b, sa, sb, bb, out_dtype=od, a_zero=za,
                                         backend=kernel.backend))
        for out in outs:
            assert out.dtype == od and out.shape == (m, n) and out.device == a.device, what
            err = rel_fro(out, ref)
            assert err <= GEMM_TOL[od], f"{what}: {err:.2e}"


@pytest.mark.parametrize("kernel", kernel_params("int8_gemm"))
def test_int8_gemm_empty_and_strided(kernel):
    """M = 0 gives an empty result; strided operands, scales and bias give the same bits as
    their dense copies."""
    a, b = _int8((20, 264), seed=1), _int8((48, 264), seed=2)
    sa = torch.rand(20, 2, device=DEVICE)[:, :1] + 0.01  # [M, 1] with stride (2, 1)
    sb = torch.rand(48, 2, device=DEVICE)[:, :1] + 0.01
    bias = torch.randn(96, device=DEVICE)[::2]
    za = torch.randint(-128, 128, (20, 2), dtype=torch.int32, device=DEVICE)[:, :1]
    skip_unless_runs(kernel, a, b, sa, sb, bias, torch.bfloat16, za)
    out = kernel.fn(a[:0], b, sa[:0], sb, bias, torch.bfloat16, za[:0])
    assert out.shape == (0, 48) and out.dtype == torch.bfloat16
    a2 = with_layout(a, "sliced")
    got = kernel.fn(a2, b.t().contiguous().t(), sa, sb, bias, torch.float32, za)
    want = kernel.fn(a, b, sa.contiguous(), sb.contiguous(), bias.contiguous(),
                     torch.float32, za.contiguous())
    assert torch.equal(got, want)
