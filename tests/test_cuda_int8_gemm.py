"""int8_mm and int8_gemm on the CUDA kernels: int8_mm exactly equal to an int64 product,
int8_gemm within the SPEC's tolerance of the float64 reference from the same int8 operands.
Each kernel is pinned through ``LOWBIT_ARCH`` and the M range: on a Hopper card the sm_90a
wgmma kernel takes M > 64, the IMMA small-M kernel M <= 64, and ``LOWBIT_ARCH=80`` gives the
tiled IMMA kernel (the A100 path) every M above 64."""
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


def _expected_kernel(m: int, arch):
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


def _f64_reference(a, b, sa, sb, bias, z):
    acc = a.double() @ b.double().T
    if z is not None:
        acc = acc - z.double().reshape(-1, 1) * b.double().sum(1).reshape(1, -1)
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
