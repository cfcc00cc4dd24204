"""The Triton FP8 kernels (quantize_fp8, dequantize_fp8, fp8_scaled_mm) against the reference:
what is theirs alone. The cases every fp8 kernel must pass are in test_fp8_kernels.py.

Without a GPU the kernels run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1,
set while conftest.py loads the kernels and while this module's tests run, so other modules
see the environment they expect); with a GPU the same cases run compiled on CUDA, and the
tests marked ``gpu`` add the exhaustive and full-size checks.

Quantization and dequantization are compared bit for bit (NaN against NaN); the GEMM by
relative Frobenius error against a float64 product of the same quantized operands, within
the SPEC's tolerances (1e-2 for bf16/fp16 outputs, 2e-3 for fp32).
"""

import pytest
import torch

from lowbit_testing import (GPU_TARGETS, GRAN_IDS, GRANS, SMEM_LIMIT, all_bf16, all_fp16,
                            assert_bits_equal, compile_checks_in_fresh_process,
                            compile_kernel, gemm_tol as tol, quantized_gemm_operands,
                            ref_mm_f64, rel_fro, with_launch_hook)

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"

triton = pytest.importorskip("triton", reason="triton is not installed")
import lowbit  # noqa: E402
from lowbit import _backend  # noqa: E402
from lowbit.triton_kernels import fp8_gemm, fp8_quant, heuristics  # noqa: E402
from lowbit.scale_layout import scale_tile  # noqa: E402


def _tiles(a, b, sa, sb):
    """The scale tiles lowbit's Triton backend passes the GEMM kernel (direct calls here)."""
    return dict(a_tile=scale_tile(sa.shape, a.shape), b_tile=scale_tile(sb.shape, b.shape))


def _interpreted() -> bool:
    # _common.jit kernels pick the interpreter when launched (TRITON_INTERPRET=1 then).
    return all(type(k).__name__ in ("InterpretedFunction", "_Kernel")
               for k in (fp8_quant._fp8_dequant_kernel, fp8_gemm._fp8_scaled_mm_kernel))


# conftest.py loads the kernels under TRITON_INTERPRET=1 before any test module imports:
# if they are compiled-only here, something imported them before the conftest ran, and the
# run must say so rather than skip the module.
if not HAS_CUDA and not _interpreted():
    raise RuntimeError("lowbit.triton_kernels was imported before tests/conftest.py could set "
                       "TRITON_INTERPRET=1: the interpreter tests cannot run")


# The interpreter evaluates with NumPy, which warns on the NaN / Inf inputs these tests feed.
pytestmark = [pytest.mark.usefixtures("triton_interpreter"),
              pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")]


FMTS = ("e4m3fn", "e5m2", "e4m3fnuz")
FLOATS = (torch.float32, torch.bfloat16, torch.float16)
NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------ helpers
def quant_both(x, scale=None, **kw):
    got = lowbit.quantize_fp8(x, scale, backend="triton", **kw)
    want = lowbit.quantize_fp8(x, scale, backend="reference", **kw)
    return got, want


def check_quant(x, scale=None, what="", **kw):
    (q, s), (q0, s0) = quant_both(x, scale, **kw)
    assert_bits_equal(q, q0, f"q {what} {kw}")
    assert_bits_equal(s, s0, f"scale {what} {kw}")
    return q0, s0


def special_values(dtype) -> torch.Tensor:
    """NaN, +-Inf, +-0, fp32 / bf16 / fp16 subnormals, each format's max and the rounding
    boundaries around it, fp8 subnormal ties, then random values over many binades."""
    fin = torch.finfo(dtype)
    vals = [NAN, -NAN, INF, -INF, 0.0, -0.0, fin.tiny, -fin.tiny, fin.tiny / 4, 1e-40, -1e-45,
            fin.max, -fin.max, 448.0, 464.0, 464.0001, 480.0, -500.0, 240.0, 248.0, 256.0,
            57344.0, 61440.0, 61439.0, 65504.0, 2.0 ** -9, 2.0 ** -10, 3 * 2.0 ** -10,
            2.0 ** -16, 2.0 ** -17, 3 * 2.0 ** -17, 2.0 ** -6 * 1.0625, 0.5, 1.5, 1.0625,
            1.1875, -1.1875, 17.0, 18.0, 19.0]
    g = torch.Generator().manual_seed(1)
    rnd = torch.randn(256 - len(vals), generator=g) * torch.exp2(
        torch.randint(-24, 20, (256 - len(vals),), generator=g).float())
    x = torch.cat([torch.tensor(vals, dtype=torch.float32), rnd]).reshape(8, 32)
    return x.to(dtype)


# ------------------------------------------------------------------- quantize: bit-exact
@pytest.mark.parametrize("saturate", [True, False], ids=["sat", "nosat"])
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_special_values_static(dtype, fmt, saturate):
    """Specials through static scales: 1 (the bare encoder), a power of two, an odd value,
    and per-token scales that overflow some rows and push others into subnormals."""
    x = special_values(dtype).to(DEVICE)
    for s in (1.0, 0.125, 0.3712):
        check_quant(x, torch.tensor(s, device=DEVICE), f"scale={s}", fmt=fmt, saturate=saturate)
    rows = torch.tensor([[1.0], [1e-3], [3.0e4], [0.37], [2.0 ** -20], [1e30], [1e-30], [7.0]],
                        device=DEVICE)
    check_quant(x, rows, "per-row", fmt=fmt, saturate=saturate, granularity="token")


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_strided_offset_and_rank(dynamic):
    """Non-contiguous, offset and 3-D / 1-D / 0-D inputs: the kernels take strides."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(70, 300, generator=g).to(DEVICE)
    cases = [
        (base.t(), "tensor", {}),                           # transposed
        (base[3:50, 7:263], "tensor", {}),                  # offset + row stride 300
        (base[3:50, 7:263].to(torch.bfloat16), "token", {}),
        (base[::2, 10:266], "group", dict(group_size=64)),
        (base.t()[:, :64], "token", {}),                   # column stride 300
        (base[1:, 1:].t(), "channel", {}),
        (base[2:, 5:].to(torch.float16), "block", dict(block=(128, 128))),
        (base[2:, 5:], "block", dict(block=(1, 128))),
        (base[:60].reshape(3, 20, 300)[:, ::2, 4:260], "token", {}),   # 3-D, strided
        (base[:60].reshape(3, 20, 300)[:, :, 44:], "group", dict(group_size=128)),
        (base[0, 3:], "token", {}),                       # 1-D
        (base[1, 2], "tensor", {}),                       # 0-D
        (base.reshape(2, 35, 300).permute(2, 0, 1), "tensor", {}),  # 3-D, no row view
    ]
    for i, (x, granularity, kw) in enumerate(cases):
        scale = None
        if not dynamic:
            _, scale = lowbit.quantize_fp8(x, granularity=granularity, backend="reference", **kw)
        check_quant(x, scale, f"case {i}", granularity=granularity, **kw)


# ------------------------------------------------------------------ dequantize: bit-exact
def test_dequantize_strided_ranks_and_empty():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 40, 300, generator=g).to(DEVICE)
    q, s = lowbit.quantize_fp8(x, granularity="token", backend="reference")
    cases = [
        (q, s),                                                  # 3-D per row
        (q[:, ::3, 10:], s[:, ::3]),                             # strided q, strided scale
        (q[0].t(), torch.tensor(0.5, device=DEVICE)),            # transposed, per tensor
    ]
    q2, s2 = lowbit.quantize_fp8(x[0, :, :256], granularity="group", group_size=64,
                                 backend="reference")
    cases.append((q2, s2))
    q3, s3 = lowbit.quantize_fp8(x.reshape(120, 300)[:, 4:], granularity="block",
                                 backend="reference")
    cases.append((q3, s3))
    cases.append((q[:, :0], s[:, :0]))
    cases.append((q[:0], s[:0]))
    for qq, ss in cases:
        for od in FLOATS:
            got = lowbit.dequantize_fp8(qq, ss, out_dtype=od, backend="triton")
            want = lowbit.dequantize_fp8(qq, ss, out_dtype=od, backend="reference")
            assert_bits_equal(got, want, f"q {tuple(qq.shape)} scale {tuple(ss.shape)}")


# --------------------------------------------------------------------------- GEMM
def make_gemm(m, n, k, a_mode, b_mode, seed=0, fmt_a="e4m3fn", fmt_b="e4m3fn", offset=0.0):
    """Quantized operands and their scales (quantized by the reference on the CPU, by the
    bit-exact Triton kernels on a GPU, where the host reference would be slow)."""
    qb = "triton" if DEVICE == "cuda" else "reference"
    return quantized_gemm_operands(lambda x, **kw: lowbit.quantize_fp8(x, backend=qb, **kw),
                                   m, n, k, a_mode, b_mode, DEVICE, seed, fmt_a, fmt_b, offset)


GEMM_MODES = [("tensor", "tensor"), ("row", "row"), ("block", "block"), ("row", "block"),
              ("tensor", "row")]
GEMM_MODE_IDS = [f"{a}-{b}" for a, b in GEMM_MODES]


def test_gemm_strided_e5m2_and_empty():
    m, n, k = 9, 20, 160
    a, b, sa, sb = make_gemm(m, n, k, "row", "row", seed=7)
    # a with a row stride beyond K and an offset; b stored transposed ([K, N] memory).
    a_big = torch.zeros(m, k + 37, dtype=torch.uint8, device=DEVICE)
    a_big[:, 5:5 + k] = a.view(torch.uint8)
    a_s = a_big.view(a.dtype)[:, 5:5 + k]
    b_t = b.t().contiguous().t()
    ref = lowbit.fp8_scaled_mm(a, b, sa, sb, out_dtype=torch.float32, backend="reference")
    out = lowbit.fp8_scaled_mm(a_s, b_t, sa, sb, out_dtype=torch.float32, backend="triton")
    assert rel_fro(out, ref) <= 2e-3
    # e5m2 operands, alone and mixed with e4m3fn.
    for fa, fb in (("e5m2", "e5m2"), ("e4m3fn", "e5m2")):
        a, b, sa, sb = make_gemm(m, n, k, "tensor", "row", seed=8, fmt_a=fa, fmt_b=fb)
        ref = lowbit.fp8_scaled_mm(a, b, sa, sb, out_dtype=torch.float32, backend="reference")
        out = lowbit.fp8_scaled_mm(a, b, sa, sb, out_dtype=torch.float32, backend="triton")
        assert rel_fro(out, ref) <= 2e-3, (fa, fb)
    # M = 0
    a, b, sa, sb = make_gemm(0, n, k, "row", "block")
    out = lowbit.fp8_scaled_mm(a, b, sa, sb, out_dtype=torch.bfloat16, backend="triton")
    assert out.shape == (0, n) and out.dtype == torch.bfloat16


def nan_padded_scale(s: torch.Tensor) -> torch.Tensor:
    """s as a view into a buffer one column wider whose extra column is NaN: a kernel that
    reads past the last scale block turns its output NaN."""
    buf = torch.full((s.shape[0], s.shape[1] + 1), NAN, device=s.device)
    buf[:, :s.shape[1]] = s
    return buf[:, :s.shape[1]]


K_UNROLL_MODES = [("row", "row"), ("block", "block"), ("row", "block")]


@pytest.mark.parametrize("modes", K_UNROLL_MODES, ids=[f"{a}-{b}" for a, b in K_UNROLL_MODES])
# K-steps of 128: 2 with a ragged tail; 2; 3 (odd: the last iteration's second step is
# empty); 9 with a ragged tail (K = 4104's shape of tail at an interpreter-friendly size).
@pytest.mark.parametrize("k", [136, 256, 384, 1032])
def test_gemm_k_unroll(k, modes):
    """k_unroll = 2 (two K-steps per loop iteration) within the SPEC's tolerances of the
    reference in every accumulation mode, and, in the accurate mode, equal bit for bit to
    k_unroll = 1: it changes the schedule, not the order of the fp32 additions. Block
    scales sit in NaN-padded buffers, so a read of the column past ceil(K/128) shows."""
    m, n = 17, 40  # ragged M and N tiles too
    a, b, sa, sb = make_gemm(m, n, k, *modes, seed=k)
    if modes[0] == "block":
        sa = nan_padded_scale(sa)
    if modes[1] == "block":
        sb = nan_padded_scale(sb)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    cfg = heuristics.GemmConfig(16, 32, 128, 1, 4, 2)
    for od, bb in ((torch.bfloat16, bias.to(DEVICE)), (torch.float32, None)):
        ref = lowbit.fp8_scaled_mm(a, b, sa, sb, bb, out_dtype=torch.float32,
                                   backend="reference")
        for fast, in_dot in ((False, False), (True, False), (False, True)):
            out = {ku: fp8_gemm.fp8_scaled_mm(a, b, sa, sb, bb, out_dtype=od, fast_accum=fast,
                                              config=cfg._replace(k_unroll=ku),
                                              promote_in_dot=in_dot, **_tiles(a, b, sa, sb))
                   for ku in (1, 2)}
            what = f"{od} fast={fast} promote_in_dot={in_dot} bias={bb is not None}"
            err = rel_fro(out[2], ref)
            assert err <= tol(od, fast), f"{what}: {err:.2e}"
            if not fast:
                assert_bits_equal(out[2], out[1], what)


@pytest.mark.gpu
@pytest.mark.parametrize("modes", [("row", "row"), ("block", "block")], ids=["row", "block"])
@pytest.mark.parametrize("k", [1152, 1160])  # 9 steps (odd), and 10 with a ragged tail
def test_gemm_k_unroll_wgmma_tiles(k, modes):
    """The table's large-M config (128 x 128 tiles, wgmma, k_unroll 2) equals k_unroll 1 bit
    for bit in the accurate mode and is within the SPEC's tolerance of the reference."""
    m, n = 300, 384
    a, b, sa, sb = make_gemm(m, n, k, *modes, seed=k)
    cfg = heuristics.GemmConfig(128, 128, 128, 16, 8, 3, k_unroll=2)
    out = {ku: fp8_gemm.fp8_scaled_mm(a, b, sa, sb, out_dtype=torch.float32,
                                      config=cfg._replace(k_unroll=ku), **_tiles(a, b, sa, sb))
           for ku in (1, 2)}
    ref = lowbit.fp8_scaled_mm(a.cpu(), b.cpu(), sa.cpu(), sb.cpu(), out_dtype=torch.float32,
                               backend="reference")
    assert rel_fro(out[2].cpu(), ref) <= tol(torch.float32, False)
    assert_bits_equal(out[2], out[1], f"k={k} {modes}")


FNUZ = torch.float8_e4m3fnuz


@pytest.mark.parametrize("modes", GEMM_MODES, ids=GEMM_MODE_IDS)
@pytest.mark.parametrize("mnk", [(1, 17, 129), (37, 50, 300), (64, 40, 256)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gemm_e4m3fnuz(mnk, modes):
    """e4m3fnuz operands (AMD MI300's format): off CDNA3 the kernel decodes them to fp16
    before its dots. Within the SPEC's tolerances of the reference in every mode, output
    dtype and accumulation, with a bias; on a GPU, ``auto`` runs them on this kernel."""
    m, n, k = mnk
    a, b, sa, sb = make_gemm(m, n, k, *modes, seed=m + k, fmt_a="e4m3fnuz", fmt_b="e4m3fnuz")
    assert a.dtype == b.dtype == FNUZ
    assert fp8_gemm.decodes(FNUZ, a.device) == (not fp8_gemm.fnuz_native(a.device))
    bias = torch.randn(n, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    ref = lowbit.fp8_scaled_mm(a.cpu(), b.cpu(), sa.cpu(), sb.cpu(), bias.cpu(),
                               out_dtype=torch.float32, backend="reference")
    for od in (torch.float32, torch.bfloat16):
        for fast in (False, True):
            out = lowbit.fp8_scaled_mm(a, b, sa, sb, bias.to(od), out_dtype=od,
                                       fast_accum=fast, backend="triton")
            assert out.dtype == od and out.shape == (m, n)
            err = rel_fro(out.float().cpu(), ref)
            assert err <= tol(od, fast), f"{od} fast={fast}: {err:.2e}"
    if DEVICE == "cuda":  # the CUDA kernels take e4m3fn only: auto picks the decoding one
        assert lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb).kernel == \
            "triton_fp8_scaled_mm_decoded"


def test_gemm_e4m3fnuz_nan_and_layout():
    """e4m3fnuz's NaN code (0x80) turns its row of the product NaN, as in the reference, and
    strided operands decode as contiguous ones do."""
    m, n, k = 5, 24, 160
    a, b, sa, sb = make_gemm(m, n, k, "row", "row", seed=4, fmt_a="e4m3fnuz",
                             fmt_b="e4m3fnuz")
    codes = a.view(torch.uint8).clone()
    codes[2, 7] = 0x80
    a = codes.view(FNUZ)
    ref = lowbit.fp8_scaled_mm(a.cpu(), b.cpu(), sa.cpu(), sb.cpu(), out_dtype=torch.float32,
                               backend="reference")
    out = lowbit.fp8_scaled_mm(a, b, sa, sb, out_dtype=torch.float32, backend="triton").cpu()
    assert torch.isnan(ref[2]).all() and torch.isnan(out[2]).all()
    keep = torch.arange(m) != 2
    assert rel_fro(out[keep], ref[keep]) <= 2e-3
    a_big = torch.zeros(m, k + 21, dtype=torch.uint8, device=DEVICE)
    a_big[:, 3:3 + k] = a.view(torch.uint8)
    b_t = b.t().contiguous().t()
    out_s = lowbit.fp8_scaled_mm(a_big.view(FNUZ)[:, 3:3 + k], b_t, sa, sb,
                                 out_dtype=torch.float32, backend="triton").cpu()
    assert_bits_equal(out_s, out, "strided e4m3fnuz")


def test_gemm_e4m3fnuz_does_not_mix():
    a, b, sa, sb = make_gemm(4, 16, 32, "row", "row", fmt_a="e4m3fnuz", fmt_b="e4m3fnuz")
    b_fn = b.float().to(torch.float8_e4m3fn)
    for x, y in ((a, b_fn), (b_fn[:4], b)):
        with pytest.raises(TypeError, match=r"fp8_scaled_mm: a and b must both be "
                                             r"float8_e4m3fnuz or both OCP formats"):
            lowbit.fp8_scaled_mm(x, y, sa, sb, backend="triton")


# ------------------------------------------------------- compiled for GPUs, without one
def _compile(target, decode: bool, fast: bool, mnk):
    """The GEMM kernel compiled for ``target`` (no device needed) as a launch of e4m3fnuz
    operands of shape ``mnk`` would specialize it (the table's config, rowwise scales, bf16
    out with a bias; at M <= 16 transposed, as the launcher passes it): ``decode`` reads
    uint8 codes, else e4m3fnuz itself."""
    kern = fp8_gemm._fp8_scaled_mm_kernel
    smem = SMEM_LIMIT[{t: name for name, t in GPU_TARGETS.items()}[tuple(target)]]
    cfg = heuristics.fp8_gemm_config(*mnk, fast_accum=fast, smem_limit=smem, decoded=decode)
    swapped = mnk[0] <= fp8_gemm.SWAP_AB_MAX_M
    if swapped:
        cfg = cfg._replace(block_m=cfg.block_n, block_n=cfg.block_m)
    const = dict(A_MODE=1, B_MODE=1, BLOCKWISE=False, HAS_BIAS=True, FAST_ACCUM=fast,
                 PROMOTE_IN_DOT=False, BF16_BITS=False, BLOCK_M=cfg.block_m,
                 BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
                 K_UNROLL=cfg.k_unroll, DECODE=decode, MBITS=3, BIAS=8, FMT_ID=2,
                 SUB_UNIT=2.0 ** -10, SWAPPED=swapped, stride_ak=1, stride_bk=1)
    const["stride_cm" if swapped else "stride_cn"] = 1  # the output's unit stride
    op = "*u8" if decode else "*fp8e4b8"
    ptrs = dict(a_ptr=op, b_ptr=op, c_ptr="*bf16", sa_ptr="*fp32", sb_ptr="*fp32",
                bias_ptr="*bf16")
    sig = {a: "constexpr" if a in const else ptrs.get(a, "i32") for a in kern.arg_names}
    aligned = [a for a in kern.arg_names if a in ptrs or a in (
        "K", "stride_am", "stride_bn", "stride_cn" if swapped else "stride_cm")]
    c = compile_kernel(kern, target, sig, const, aligned,
                       dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    assert c.metadata.shared <= smem, (target, mnk, cfg, c.metadata.shared)
    return c


def compile_checks(target) -> None:
    """e4m3fnuz at decode, mid and large M in both accumulation modes: on NVIDIA decoded to
    fp16, on tensor cores (wgmma on sm_90 where the tile allows: at M = 64 and, transposed,
    at M = 1, whose dot's M is the weight's 64 rows; mma.sync on sm_80), within
    the shared memory; on MI300 (gfx942) multiplied natively by its fp8 MFMA."""
    decode = target[0] == "cuda"
    for mnk in ((1, 4096, 4096), (64, 4096, 4096), (4096, 4096, 4096)):
        for fast in (False, True):
            c = _compile(target, decode, fast, mnk)
            if target[0] == "cuda":
                want = "wgmma" if target[1] == 90 else "mma.sync"
                assert want in c.asm["ptx"], (target, mnk, fast)
            else:
                assert "_fp8_fp8" in c.asm["amdgcn"], (target, mnk, fast)


@pytest.mark.parametrize("target", [GPU_TARGETS[t] for t in ("sm90", "sm80", "gfx942")],
                         ids=["sm90", "sm80", "gfx942"])
def test_gemm_e4m3fnuz_compiles_for_gpu_targets(target):
    """In a fresh process: this one may hold triton imported for the interpreter, which
    cannot compile."""
    compile_checks_in_fresh_process(__file__, target)


def test_reference_helper_matches_reference():
    """ref_mm_f64 (used at sizes where NumPy would be slow) is the reference's definition."""
    for modes in GEMM_MODES:
        a, b, sa, sb = make_gemm(5, 130, 300, *modes, seed=9)
        bias = torch.randn(130).to(DEVICE)
        want = lowbit.fp8_scaled_mm(a, b, sa, sb, bias, out_dtype=torch.float32,
                                    backend="reference")
        got = ref_mm_f64(a, b, sa, sb, bias)
        assert rel_fro(got, want) < 1e-6, modes


# ------------------------------------------------------------------ registry and dispatch
def test_registered_kernels_and_choice():
    names = {op: [k.name for k in _backend.kernels(op) if k.backend == "triton"]
             for op in ("quantize_fp8", "dequantize_fp8", "fp8_scaled_mm")}
    assert names["quantize_fp8"] == ["triton_fp8_quant_per_tensor", "triton_fp8_quant_per_token",
                                     "triton_fp8_quant_per_group", "triton_fp8_quant_per_block"]
    assert names["dequantize_fp8"] == ["triton_fp8_dequant"]
    assert names["fp8_scaled_mm"] == ["triton_fp8_scaled_mm", "triton_fp8_scaled_mm_decoded"]
    for op in names:
        for k in _backend.kernels(op):
            if k.backend == "triton":
                assert k.priority < 0 and k.available() is None
    x = torch.randn(4, 256, device=DEVICE)
    for gran, kernel in (("tensor", "triton_fp8_quant_per_tensor"),
                         ("token", "triton_fp8_quant_per_token"),
                         ("channel", "triton_fp8_quant_per_token"),
                         ("group", "triton_fp8_quant_per_group"),
                         ("block", "triton_fp8_quant_per_block")):
        c = lowbit.explain(lowbit.quantize_fp8, x, granularity=gran, backend="triton")
        assert (c.backend, c.kernel) == ("triton", kernel)
    a, b, sa, sb = make_gemm(2, 16, 64, "row", "row")
    c = lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb, backend="triton")
    assert c.kernel == "triton_fp8_scaled_mm"
    # e4m3fnuz off MI300 (here: the interpreter) runs decoded, and explain says so.
    a, b, sa, sb = make_gemm(2, 16, 64, "row", "row", fmt_a="e4m3fnuz", fmt_b="e4m3fnuz")
    c = lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb, backend="triton")
    assert c.kernel == "triton_fp8_scaled_mm_decoded", str(c)
    assert any("not native here" in r for r in c.rejected), str(c)


def test_heuristic_table():
    for m in (1, 16, 17, 64, 65, 256, 257, 8192):
        for fast in (False, True):
            cfg = heuristics.fp8_gemm_config(m, 4096, 4096, fast)
            assert 128 % cfg.block_k == 0 and cfg.block_m >= 16 and cfg.block_n >= 16
    assert heuristics.fp8_gemm_config(1, 3, 136).block_n == 16
    # The promoted mode's two accumulators must not spill: no 128 x 256 tile.
    assert heuristics.fp8_gemm_config(8192, 8192, 8192).block_n == 128
    assert all(128 % c.block_k == 0 for c in heuristics.fp8_gemm_configs())
    # Block scales never unroll (they would spill); unrolled configs step 128 K and fit in
    # shared memory, in the table as in the search space.
    assert all(blk.k_unroll == 1 for _, _, blk, _ in heuristics.FP8_GEMM_TABLE)
    for _, *configs in heuristics.FP8_GEMM_TABLE:
        for c in configs:
            assert c.k_unroll == 1 or c.block_k == 128
            assert heuristics.gemm_smem_bytes(c) <= heuristics.GEMM_SMEM_LIMIT
    assert heuristics.fp8_gemm_config(8192, 8192, 8192, blockwise=True).k_unroll == 1
    # A K below one 128-wide step never unrolls; a 99 KB card (sm_86, sm_89) gets a pipeline
    # that fits, the H100's 227 KB the table as written.
    assert heuristics.fp8_gemm_config(8192, 8192, 64).k_unroll == 1
    big = heuristics.fp8_gemm_config(8192, 8192, 8192, smem_limit=227 * 1024)
    assert big == heuristics.fp8_gemm_config(8192, 8192, 8192)
    for fast, blockwise in ((False, False), (True, False), (False, True)):
        for m in (1, 64, 256, 8192):
            cfg = heuristics.fp8_gemm_config(m, 8192, 8192, fast, blockwise, smem_limit=99 * 1024)
            assert heuristics.gemm_smem_bytes(cfg) + heuristics.SMEM_MARGIN <= 99 * 1024, cfg
    space = heuristics.fp8_gemm_configs()
    assert {c.k_unroll for c in space} == {1, 2}
    for c in space:
        assert c.k_unroll == 1 or c.block_k == 128
        assert heuristics.gemm_smem_bytes(c) <= heuristics.GEMM_SMEM_LIMIT


def test_hw_cast_never_on_amd(monkeypatch):
    """The hardware e4m3fn cast is proven on NVIDIA sm_90 only: an AMD GPU (a "cuda" device
    under ROCm's torch) keeps the integer encoder even when asked for the cast."""
    monkeypatch.setattr(fp8_quant, "_interpreting", lambda: False)
    monkeypatch.setattr(fp8_quant, "capability", lambda index: (9, 0))
    monkeypatch.setattr(fp8_quant, "device_index", lambda device: 0)
    dev = torch.device("cuda", 0)
    for hip, want in ((None, True), ("6.4", False)):
        monkeypatch.setattr(torch.version, "hip", hip)
        monkeypatch.delenv("LOWBIT_TRITON_FP8_HWCAST", raising=False)
        assert fp8_quant._hw_cast_wanted("e4m3fn", True, dev, None) == want
        assert fp8_quant._hw_cast_wanted("e4m3fn", True, dev, True) == want
        monkeypatch.setenv("LOWBIT_TRITON_FP8_HWCAST", "1")
        assert fp8_quant._hw_cast_wanted("e4m3fn", True, dev, None) == want


def test_smem_per_block_without_an_opt_in_figure(monkeypatch):
    """The tile fit's shared-memory budget: the opt-in limit where torch reports one, else
    the per-block limit (a ROCm build may report 0)."""
    from types import SimpleNamespace

    from lowbit.triton_kernels import _common
    for props, want in ((dict(shared_memory_per_block_optin=232448,
                              shared_memory_per_block=49152), 232448),
                        (dict(shared_memory_per_block_optin=0,
                              shared_memory_per_block=65536), 65536),
                        (dict(shared_memory_per_block=65536), 65536)):
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda index, p=props: SimpleNamespace(**p))
        assert _common.smem_per_block.__wrapped__(0) == want  # past the per-device cache


def test_decoded_configs_fit():
    """The decoding kernel's configs (e4m3fnuz off CDNA3) take one K-step per iteration and
    leave room for the fp16 copy of a step's tiles beside the fp8 pipeline."""
    for limit in (227 * 1024, 163 * 1024, 99 * 1024, 64 * 1024):
        for m in (1, 16, 64, 256, 8192):
            for fast, blockwise in ((False, False), (True, False), (False, True)):
                cfg = heuristics.fp8_gemm_config(m, 8192, 8192, fast, blockwise,
                                                 smem_limit=limit, decoded=True)
                assert cfg.k_unroll == 1
                assert heuristics.gemm_smem_bytes(cfg, 2) + heuristics.SMEM_MARGIN <= limit, \
                    (limit, m, cfg)


# ======================================================================= GPU-only tests
gpu = pytest.mark.gpu


@gpu
@pytest.mark.parametrize("saturate", [True, False], ids=["sat", "nosat"])
@pytest.mark.parametrize("fmt", FMTS)
def test_gpu_all_patterns_bit_exact(fmt, saturate):
    """All 65,536 bf16 and fp16 patterns, several static scales and dynamic per tensor."""
    for x in (all_bf16(), all_fp16()):
        x = x.cuda()
        for s in (1.0, 0.7071, 2.0 ** -12, 3.0e4, 1.0e-30):
            check_quant(x, torch.tensor(s, device="cuda"), f"{x.dtype} scale={s}", fmt=fmt,
                        saturate=saturate)
        # Dynamic per tensor on the finite patterns only (a NaN makes every code NaN).
        fin = x[torch.isfinite(x)]
        check_quant(fin, None, f"{x.dtype} dynamic", fmt=fmt, saturate=saturate)
        check_quant(x.float() * 1.0000001, torch.tensor(0.37, device="cuda"), "fp32",
                    fmt=fmt, saturate=saturate)


@gpu
def test_gpu_hw_cast_path_bit_exact():
    """The opt-in hardware cast (LOWBIT_TRITON_FP8_HWCAST=1; e4m3fn, saturate) must give the
    reference's bits on every bf16 / fp16 pattern before it may be turned on by default."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs sm_89+")
    for x in (all_bf16(), all_fp16()):
        x = x.cuda()
        for s in (1.0, 0.7071, 2.0 ** -12):
            scale = torch.tensor(s, device="cuda")
            q0, _ = lowbit.quantize_fp8(x, scale, backend="reference")
            for hw in (True, False):
                q, _ = fp8_quant.quantize_fp8(x, scale, "e4m3fn", saturate=True,
                                              hw_cast=hw)
                assert_bits_equal(q, q0, f"hw_cast={hw} {x.dtype} scale={s}")


@gpu
def test_gpu_hw_cast_matches_integer_encoder_on_all_fp32():
    """All 2^32 fp32 inputs (scale 1): the hardware cast and the integer encoder (itself
    checked against the reference above) agree bit for bit. About 3 s and 1.6 GB."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs sm_89+")
    one = torch.tensor(1.0, device="cuda")
    chunk = 1 << 28
    for c in range(16):
        lo = c * chunk - (1 << 31)
        x = torch.arange(lo, lo + chunk, device="cuda", dtype=torch.int32).view(torch.float32)
        q_hw, _ = fp8_quant.quantize_fp8(x, one, hw_cast=True)
        q_int, _ = fp8_quant.quantize_fp8(x, one, hw_cast=False)
        bad = (q_hw.view(torch.uint8) != q_int.view(torch.uint8)).sum().item()
        assert bad == 0, f"chunk {c}: {bad} inputs differ"


@gpu
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("gran", GRANS, ids=GRAN_IDS)
def test_gpu_granularities_large(gran, fmt):
    """Per-granularity dynamic (and static) quantization at serving sizes, incl. rows longer
    than the one-tile limit (two-pass path) and a ragged K."""
    granularity, group_size, block = gran
    kw = dict(group_size=group_size, block=block)
    g = torch.Generator().manual_seed(11)
    shapes = [(1000, 4096), (7, 20480)] if granularity == "group" else [(1000, 4104), (7, 20000)]
    for shape in shapes:
        x = torch.randn(shape, generator=g) * torch.exp2(
            torch.randint(-10, 10, (shape[0], 1), generator=g).float())
        for dtype in (torch.bfloat16, torch.float32):
            xd = x.to(dtype).cuda()
            q0, s0 = check_quant(xd, None, f"{shape} {dtype}", fmt=fmt, granularity=granularity,
                                 **kw)
            check_quant(xd, s0 * 0.9, f"static {shape} {dtype}", fmt=fmt,
                        granularity=granularity, **kw)
            got = lowbit.dequantize_fp8(q0, s0, backend="triton")
            want = lowbit.dequantize_fp8(q0, s0, backend="reference")
            assert_bits_equal(got, want, f"dequant {shape}")


@gpu
@pytest.mark.parametrize("modes", GEMM_MODES, ids=GEMM_MODE_IDS)
@pytest.mark.parametrize("mnk", [(1, 4096, 4096), (16, 4096, 4096), (128, 14336, 4096),
                                 (512, 4096, 14336), (4096, 4096, 4096), (16, 28672, 8192),
                                 (1, 1, 136), (17, 3000, 4104), (100, 3, 136),
                                 (100, 3000, 4104)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gpu_gemm_tolerance(mnk, modes):
    m, n, k = mnk
    a, b, sa, sb = make_gemm(m, n, k, *modes, seed=m + n)
    bias = torch.randn(n, device="cuda").to(torch.bfloat16)
    ref = ref_mm_f64(a, b, sa, sb)
    ref_b = ref + bias.double()
    # Each out dtype, both accumulation modes, with and without bias (four variants rather
    # than all twelve: each is a separate compilation).
    for od, fast, bb in ((torch.bfloat16, False, bias), (torch.float16, True, None),
                         (torch.float32, False, None), (torch.float32, True, bias)):
        out = lowbit.fp8_scaled_mm(a, b, sa, sb, bb, out_dtype=od, fast_accum=fast,
                                   backend="triton")
        err = rel_fro(out, ref if bb is None else ref_b)
        assert err <= tol(od, fast), f"{od} fast={fast} bias={bb is not None}: {err:.2e}"


@gpu
@pytest.mark.parametrize("modes", [("row", "row"), ("block", "block"), ("tensor", "row")],
                         ids=["row", "block", "tensor-row"])
@pytest.mark.parametrize("mnk", [(1, 4096, 4096), (64, 4096, 4096), (300, 384, 1160),
                                 (4096, 4096, 4096), (17, 3000, 4104)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gpu_gemm_e4m3fnuz_tolerance(mnk, modes):
    """e4m3fnuz on an NVIDIA GPU: the decoding kernel at the table's tiles (mma.sync at small
    M, wgmma above), within the SPEC's tolerances."""
    m, n, k = mnk
    a, b, sa, sb = make_gemm(m, n, k, *modes, seed=m + n, fmt_a="e4m3fnuz", fmt_b="e4m3fnuz")
    assert fp8_gemm.decodes(a.dtype, a.device)
    bias = torch.randn(n, device="cuda").to(torch.bfloat16)
    ref = ref_mm_f64(a, b, sa, sb)
    for od, fast, bb in ((torch.bfloat16, False, bias), (torch.float32, True, None),
                         (torch.float32, False, None)):
        out = lowbit.fp8_scaled_mm(a, b, sa, sb, bb, out_dtype=od, fast_accum=fast)
        err = rel_fro(out, ref if bb is None else ref + bias.double())
        assert err <= tol(od, fast), f"{od} fast={fast} bias={bb is not None}: {err:.2e}"


@gpu
@pytest.mark.parametrize("m", [16, 128, 1024])
def test_gpu_accurate_mode_beats_fast_accum(m):
    """Data with a large common offset: every partial sum grows the same way, so fp8 wgmma's
    limited-precision accumulator loses bits at K = 16384 unless promoted every 128 K.
    (Measured on an H100 at M = 128: 1.0e-4 promoted, 0.32 with fast_accum. The promoted
    error is that of 128-element wgmma partial sums; the small-M tiles run mma.sync.)"""
    n, k = 256, 16384
    g = torch.Generator().manual_seed(12)
    a32 = (torch.rand(m, k, generator=g) + 1.0).cuda()
    b32 = (torch.rand(n, k, generator=g) + 1.0).cuda()
    a, sa = lowbit.quantize_fp8(a32, backend="reference")
    b, sb = lowbit.quantize_fp8(b32, backend="reference")
    ref = ref_mm_f64(a, b, sa, sb)
    err = {}
    for fast in (False, True):
        out = lowbit.fp8_scaled_mm(a, b, sa, sb, out_dtype=torch.float32, fast_accum=fast,
                                   backend="triton")
        err[fast] = rel_fro(out, ref)
    assert err[False] < 1e-3, err
    if m >= 64:  # wgmma tiles: the unpromoted accumulator must show its loss
        assert err[False] * 10 < err[True], err


@gpu
def test_gpu_bound_launch_matches_the_jit_launch_and_keeps_launch_hooks():
    """A prepared Triton GEMM calls its compiled kernel's launcher directly: its output
    equals, bit for bit, that of the launch through ``kernel[grid]`` (taken while a launch
    hook is set, as a profiler sets one), and the hook still sees that launch."""
    a, b, sa, sb = make_gemm(16, 384, 1032, "row", "row", seed=21)
    bias = torch.randn(384, device="cuda").to(torch.bfloat16)
    first = lowbit.fp8_scaled_mm(a, b, sa, sb, bias, backend="triton")  # prepares, binds
    bound = lowbit.fp8_scaled_mm(a, b, sa, sb, bias, backend="triton")
    from lowbit import _native
    entry = _native.ENTRY.get("fp8_scaled_mm")
    if entry is not None:  # lowbit._torch_ops keeps the prepared launcher as the plan's step
        step = entry(a, b, sa, sb, bias, torch.bfloat16, False, "triton")
        assert type(step) is list and step[0].__name__ == "triton_fp8_scaled_mm"
    hooked, seen = with_launch_hook(
        lambda: lowbit.fp8_scaled_mm(a, b, sa, sb, bias, backend="triton"))
    torch.cuda.synchronize()
    assert len(seen) == 1
    assert_bits_equal(bound, first, "bound launch, twice")
    assert_bits_equal(bound, hooked, "bound launch vs kernel[grid]")
