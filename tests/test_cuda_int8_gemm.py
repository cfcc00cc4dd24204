"""int8_mm and int8_gemm on the CUDA kernels: int8_mm exactly equal to an int64 product,
int8_gemm within the SPEC's tolerance of the float64 reference from the same int8 operands.
Each kernel is pinned through ``LOWBIT_ARCH`` and the M range: on a Hopper card the sm_90a
wgmma kernel takes M > 64 and the sm_90a swap-AB kernel 1 <= M <= 64; ``LOWBIT_ARCH=80``
gives the A100 path, the IMMA small-M kernel for M <= 64 and the tiled IMMA kernel above (the
small-M kernel also takes M = 0 natively)."""
import functools

import numpy as np
import pytest
import torch

import lowbit
from lowbit_testing import gemm_tol, rel_fro

gpu = pytest.mark.gpu


def _int8(shape, seed, lo=-128, hi=128):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int8)


def _exact(a, b) -> torch.Tensor:
    """a @ b.T in int64 (exact), as int32 when it fits."""
    out = a.long() @ b.long().T
    assert out.abs().max() < 2 ** 31 if out.numel() else True
    return out.int()


SWAPAB = "sm90_int8_gemm_swapab"


def _expected_kernel(m: int, arch):
    if arch is None and 1 <= m <= 64:
        return SWAPAB
    if m <= 64:
        return "sm80_int8_gemm_smallm"
    return "sm80_int8_gemm_mma" if arch == "80" else "sm90_int8_gemm_wgmma"


def _pin(monkeypatch, arch):
    if arch is not None:
        monkeypatch.setenv("LOWBIT_ARCH", arch)


SHAPES = [(1, 1, 256), (1, 3000, 4096), (17, 33, 128), (64, 4096, 4096), (65, 136, 4112),
          (100, 3000, 4112), (128, 128, 128), (300, 1, 512), (1000, 4096, 1024),
          (2048, 4096, 4096)]


@gpu
@pytest.mark.parametrize("arch", [None, "80"], ids=["native", "sm80"])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_int8_mm_exact(monkeypatch, arch, m, n, k):
    _pin(monkeypatch, arch)
    a, b = _int8((m, k), 1), _int8((n, k), 2)
    ac, bc = a.cuda(), b.cuda()
    choice = lowbit.explain(lowbit.int8_mm, ac, bc)
    assert choice.backend == "cuda" and choice.kernel == _expected_kernel(m, arch), str(choice)
    out = lowbit.int8_mm(ac, bc)
    assert out.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out.cpu(), _exact(a, b))


@gpu
@pytest.mark.parametrize("arch", [None, "80"], ids=["native", "sm80"])
@pytest.mark.parametrize("m", [1, 64, 256])
@pytest.mark.parametrize("sign", [-1, 1])
def test_int8_mm_int32_worst_case(monkeypatch, arch, m, sign):
    """All -127 x (-127 or 127) at K = 65536: |sum| = 127^2 * 65536, near 2^30."""
    _pin(monkeypatch, arch)
    k, n = 65536, 256
    a = torch.full((m, k), -127, dtype=torch.int8, device="cuda")
    b = torch.full((n, k), -127 * sign, dtype=torch.int8, device="cuda")
    out = lowbit.int8_mm(a, b)
    assert torch.equal(out, torch.full((m, n), sign * 127 * 127 * k, dtype=torch.int32,
                                       device="cuda"))
    # and -128 activations with 127 weights, the largest magnitude int8 gives
    a = torch.full((m, k), -128, dtype=torch.int8, device="cuda")
    b = torch.full((n, k), 127, dtype=torch.int8, device="cuda")
    assert torch.equal(lowbit.int8_mm(a, b).cpu(),
                       torch.full((m, n), -128 * 127 * k, dtype=torch.int32))


@gpu
def test_int8_mm_empty_and_strided():
    a, b = _int8((0, 64), 1).cuda(), _int8((8, 64), 2).cuda()
    assert lowbit.int8_mm(a, b).shape == (0, 8)
    # a K-contiguous slice of a wider matrix: row stride 256, 16-byte aligned
    big = _int8((200, 256), 3).cuda()
    a = big[:, 64:192]
    b = _int8((96, 128), 4).cuda()
    assert lowbit.explain(lowbit.int8_mm, a, b).backend == "cuda"
    assert torch.equal(lowbit.int8_mm(a, b).cpu(), _exact(a.cpu(), b.cpu()))


def _gemm_case(m, n, k, a_row, b_row, zero, bias, out_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = _int8((m, k), seed + 1), _int8((n, k), seed + 2, -127, 128)
    sa = torch.rand((m, 1) if a_row else (), generator=g) * 0.02 + 1e-3
    sb = torch.rand((n, 1) if b_row else (), generator=g) * 0.02 + 1e-3
    z = None
    if zero == "tensor":
        z = torch.tensor(-7, dtype=torch.int32)
    elif zero == "row":
        z = torch.randint(-128, 128, (m, 1), generator=g, dtype=torch.int32)
    bt = torch.randn(n, generator=g).to(torch.bfloat16) if bias else None
    return a, b, sa, sb, bt, z


def _f64_reference(a, b, sa, sb, bias, z, acc=None):
    """The epilogue in float64 on a's device; ``acc``: a @ b.T in float64, when known."""
    if acc is None:
        acc = a.double() @ b.double().T
    if z is not None:
        acc = acc - z.double().reshape(-1, 1) * b.sum(1, dtype=torch.int64).double().reshape(1, -1)
    out = acc * sa.double().reshape(-1, 1) * sb.double().reshape(1, -1)
    if bias is not None:
        out = out + bias.double().reshape(1, -1)
    return out


@gpu
@pytest.mark.parametrize("arch", [None, "80"], ids=["native", "sm80"])
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (17, 3000, 1024), (100, 33, 4112),
                                   (256, 4096, 4096), (1000, 1, 512)])
@pytest.mark.parametrize("a_row,b_row", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("zero", [None, "tensor", "row"])
def test_int8_gemm_epilogues(monkeypatch, arch, m, n, k, a_row, b_row, zero):
    _pin(monkeypatch, arch)
    for out_dtype, bias in ((torch.bfloat16, True), (torch.float16, False),
                            (torch.float32, True)):
        a, b, sa, sb, bt, z = _gemm_case(m, n, k, a_row, b_row, zero, bias, out_dtype)
        args = [t.cuda() if t is not None else None for t in (a, b, sa, sb, bt)]
        zc = None if z is None else z.cuda()
        choice = lowbit.explain(lowbit.int8_gemm, *args, out_dtype=out_dtype, a_zero=zc)
        assert choice.kernel == _expected_kernel(m, arch), str(choice)
        out = lowbit.int8_gemm(*args, out_dtype=out_dtype, a_zero=zc)
        assert out.dtype == out_dtype and out.shape == (m, n)
        ref = _f64_reference(a, b, sa, sb, bt, z)
        assert rel_fro(out.cpu(), ref) <= gemm_tol(out_dtype), (out_dtype, str(choice))
        # the reference backend computes the same numbers
        want = lowbit.int8_gemm(a, b, sa, sb, bt, out_dtype=torch.float32, a_zero=z,
                                backend="reference")
        assert rel_fro(out.cpu(), want) <= gemm_tol(out_dtype)


@gpu
@pytest.mark.parametrize("arch", [None, "80"], ids=["native", "sm80"])
@pytest.mark.parametrize("m", [5, 512])
def test_int8_gemm_fp32_epilogue_matches_reference_closely(monkeypatch, arch, m):
    """fp32 outputs: the exact integer accumulator, the zero-point correction in 64-bit
    integers and three fp32 operations (two may fuse into one FMA) stay within a few ulps of
    the reference's (which computes the same three operations)."""
    _pin(monkeypatch, arch)
    a, b, sa, sb, bt, z = _gemm_case(m, 384, 2048, True, True, "row", True, torch.float32, 5)
    out = lowbit.int8_gemm(a.cuda(), b.cuda(), sa.cuda(), sb.cuda(), bt.cuda(),
                           out_dtype=torch.float32, a_zero=z.cuda()).cpu().numpy()
    want = lowbit.int8_gemm(a, b, sa, sb, bt, out_dtype=torch.float32, a_zero=z,
                            backend="reference").numpy()
    scale = np.abs(want).max()
    assert np.abs(out - want).max() <= 4 * np.finfo(np.float32).eps * scale


@gpu
def test_int8_gemm_deterministic():
    # On a Hopper card M = 16, N = 4096 runs swapab with K split over clusters (32 tiles).
    a, b, sa, sb, bt, z = _gemm_case(16, 4096, 8192, True, True, "row", True, torch.bfloat16)
    args = [t.cuda() for t in (a, b, sa, sb, bt)]
    outs = [lowbit.int8_gemm(*args, a_zero=z.cuda()) for _ in range(3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@gpu
def test_int8_kernels_step_aside():
    """K not a multiple of 16, K at the int32 limit: the CUDA kernels say why they do not run."""
    a, b = _int8((4, 136), 1).cuda(), _int8((8, 136), 2).cuda()
    with pytest.raises(NotImplementedError, match="multiple of 16"):
        lowbit.int8_mm(a, b, backend="cuda")
    a, b = torch.zeros(2, 131072 - 16, dtype=torch.int8, device="cuda"), torch.zeros(
        3, 131072 - 16, dtype=torch.int8, device="cuda")
    assert lowbit.explain(lowbit.int8_mm, a, b, backend="cuda").backend == "cuda"


# ------------------------------------------------------- sm90_int8_gemm_swapab (1 <= M <= 64)
@pytest.fixture
def sm90():
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip(f"{SWAPAB} runs on sm_90 only")


def _int8_cuda(shape, seed, lo=-128, hi=128):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int8, device="cuda")


@functools.lru_cache(maxsize=1)
def _swapab_operands(m, n, k):
    """a [m, k] in [-128, 127], b [n, k] in [-127, 127] (weights quantized symmetrically) and
    a @ b.T in float64, exact: every partial sum is an integer below 2^14 K < 2^53."""
    a, b = _int8_cuda((m, k), m + k), _int8_cuda((n, k), n + k + 1, -127)
    return a, b, a.double() @ b.double().T


# On a 132-SM H200 (clusters of 2-8 CTAs, as the FP8 swapab tests list) N = 4096 (32 tiles)
# splits K over clusters of 3 or 4, N = 256 (2 tiles) over clusters of 8, and N = 28672
# (224 tiles) does not split: each CTA strides over two tiles. M = 1, 16, 24, 33 and 64 run
# activation tiles of 8, 16, 32, 64 and 64 rows.
SWAPAB_SHAPES = [(4096, 4096), (4096, 8192), (256, 8192), (28672, 8192), (3000, 4112)]
SWAPAB_MS = [1, 16, 24, 33, 64]


# int8_mm stores each thread's own sums when K is not split: an odd N (14337: 128 tiles, no
# split) makes the rows odd-strided, so column pairs go out one int32 at a time, and the
# last column has no pair.
@gpu
@pytest.mark.parametrize("n,k", SWAPAB_SHAPES + [(14337, 4096)])
@pytest.mark.parametrize("m", SWAPAB_MS)
def test_swapab_int8_mm_exact(sm90, m, n, k):
    """The int32 partials of a split K add up exactly: the product bit for bit."""
    a, b, acc = _swapab_operands(m, n, k)
    choice = lowbit.explain(lowbit.int8_mm, a, b)
    assert choice.kernel == SWAPAB, str(choice)
    out = lowbit.int8_mm(a, b)
    assert out.dtype == torch.int32 and out.shape == (m, n)
    assert torch.equal(out.double(), acc)


@gpu
@pytest.mark.parametrize("n,k", SWAPAB_SHAPES)
@pytest.mark.parametrize("m", SWAPAB_MS)
def test_swapab_int8_gemm_epilogues(sm90, m, n, k):
    """Every epilogue (per-tensor / per-row scales of a and b, no, one or per-row zero points,
    bias or none, each output dtype) within the SPEC's tolerance of float64; fp32 outputs
    within a few ulps of it, as one rounding of the exact corrected sum and three fp32
    operations give."""
    a, b, acc = _swapab_operands(m, n, k)
    g = torch.Generator().manual_seed(m + n)
    for a_row, b_row in ((True, True), (False, False), (True, False), (False, True)):
        sa = (torch.rand((m, 1) if a_row else (), generator=g) * 0.02 + 1e-3).cuda()
        sb = (torch.rand((n, 1) if b_row else (), generator=g) * 0.002 + 1e-4).cuda()
        for zero in (None, "tensor", "row"):
            z = None if zero is None else (
                torch.tensor(-7, dtype=torch.int32) if zero == "tensor" else
                torch.randint(-128, 128, (m, 1), generator=g, dtype=torch.int32)).cuda()
            for out_dtype, bias_dtype in ((torch.bfloat16, torch.bfloat16),
                                          (torch.float16, None),
                                          (torch.float32, torch.float32),
                                          (torch.float32, None)):
                bias = None if bias_dtype is None else (
                    torch.randn(n, generator=g).to(bias_dtype).cuda())
                what = (a_row, b_row, zero, out_dtype, bias_dtype)
                choice = lowbit.explain(lowbit.int8_gemm, a, b, sa, sb, bias,
                                        out_dtype=out_dtype, a_zero=z)
                assert choice.kernel == SWAPAB, (str(choice), what)
                out = lowbit.int8_gemm(a, b, sa, sb, bias, out_dtype=out_dtype, a_zero=z)
                assert out.dtype == out_dtype and out.shape == (m, n), what
                ref = _f64_reference(a, b, sa, sb, bias, z, acc)
                assert rel_fro(out, ref) <= gemm_tol(out_dtype), what
                if out_dtype == torch.float32:
                    scaled = ref if bias is None else ref - bias.double()
                    bound = 4 * np.finfo(np.float32).eps * (
                        scaled.abs().max() + (0 if bias is None else bias.double().abs().max()))
                    assert (out.double() - ref).abs().max() <= bound, what


@gpu
@pytest.mark.parametrize("n,k", [(4096, 8192), (256, 8192)])
def test_swapab_int8_deterministic(sm90, n, k):
    """Split K: repeated calls agree bit for bit, int8_mm and int8_gemm alike."""
    a, b, _ = _swapab_operands(16, n, k)
    assert lowbit.explain(lowbit.int8_mm, a, b).kernel == SWAPAB
    mm = lowbit.int8_mm(a, b)
    sa = torch.rand(16, 1, device="cuda") * 0.02 + 1e-3
    sb = torch.rand(n, 1, device="cuda") * 0.002 + 1e-4
    z = torch.randint(-128, 128, (16, 1), dtype=torch.int32, device="cuda")
    gemm = lowbit.int8_gemm(a, b, sa, sb, out_dtype=torch.float32, a_zero=z)
    for _ in range(3):
        assert torch.equal(lowbit.int8_mm(a, b), mm)
        assert torch.equal(lowbit.int8_gemm(a, b, sa, sb, out_dtype=torch.float32, a_zero=z),
                           gemm)
