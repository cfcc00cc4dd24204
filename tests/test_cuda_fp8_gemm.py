"""fp8_scaled_mm CUDA kernels against the float64 reference (SPEC tolerances)."""
import pytest
import torch

import lowbit

gpu = pytest.mark.gpu
TOL = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 2e-3}


def _rel_fro(out, ref):
    out, ref = out.double().cpu(), ref.double().cpu()
    assert torch.isfinite(out).all()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _operands(m, n, k, mode, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(m, k, generator=g) * 2).to(torch.float8_e4m3fn)
    b = (torch.randn(n, k, generator=g) * 2).to(torch.float8_e4m3fn)
    kb = -(-k // 128)
    if mode == "tensor":
        sa, sb = torch.tensor(0.7), torch.tensor(1.3)
    elif mode == "row":
        sa = torch.rand(m, 1, generator=g) + 0.5
        sb = torch.rand(n, 1, generator=g) + 0.5
    else:
        sa = torch.rand(m, kb, generator=g) + 0.5
        sb = torch.rand(-(-n // 128), kb, generator=g) + 0.5
    return [t.to(device) for t in (a, b, sa.float(), sb.float())]


def _check(m, n, k, mode, out_dtype=torch.bfloat16, bias=False, fast_accum=False):
    a, b, sa, sb = _operands(m, n, k, mode, "cuda")
    bias_t = torch.randn(n, device="cuda").to(torch.bfloat16) if bias else None
    out = lowbit.fp8_scaled_mm(a, b, sa, sb, bias_t, out_dtype=out_dtype,
                               fast_accum=fast_accum, backend="cuda")
    ref = lowbit.fp8_scaled_mm(a.cpu(), b.cpu(), sa.cpu(), sb.cpu(),
                               None if bias_t is None else bias_t.cpu(), out_dtype=torch.float32,
                               backend="reference")
    assert out.shape == (m, n) and out.dtype == out_dtype
    if m:
        assert _rel_fro(out, ref) <= TOL[out_dtype]
    return out


@gpu
@pytest.mark.parametrize("arch", [None, "80"])
@pytest.mark.parametrize("m", [0, 1, 7, 16, 17, 33, 64])
@pytest.mark.parametrize("n,k", [(1, 256), (3, 128), (4096, 4096), (3000, 1024), (136, 4112)])
@pytest.mark.parametrize("mode", ["tensor", "row", "block"])
def test_smallm_matches_reference(monkeypatch, arch, m, n, k, mode):
    if arch:
        monkeypatch.setenv("LOWBIT_ARCH", arch)
    a, b, sa, sb = _operands(max(m, 1), n, k, mode, "cuda")
    choice = lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb, backend="cuda")
    assert choice.kernel == ("sm80_fp8_gemm_smallm" if arch else "sm89_fp8_gemm_smallm")
    _check(m, n, k, mode)


@gpu
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("fast_accum", [False, True])
def test_smallm_out_dtypes_bias(out_dtype, fast_accum):
    _check(16, 4096, 4096, "row", out_dtype=out_dtype, bias=True, fast_accum=fast_accum)
    _check(5, 1000, 512, "block", out_dtype=out_dtype, bias=True, fast_accum=fast_accum)


@gpu
def test_smallm_deterministic():
    a, b, sa, sb = _operands(32, 4096, 8192, "row", "cuda")
    outs = [lowbit.fp8_scaled_mm(a, b, sa, sb, backend="cuda") for _ in range(3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@gpu
def test_smallm_strided_rows():
    # Rows padded to a 16-byte multiple: a view with stride(0) > K must still be right.
    a, b, sa, sb = _operands(9, 256, 512, "row", "cuda")
    big = torch.zeros(9, 640, dtype=torch.float8_e4m3fn, device="cuda")
    big[:, :512] = a
    out = lowbit.fp8_scaled_mm(big[:, :512], b, sa, sb, backend="cuda")
    ref = lowbit.fp8_scaled_mm(a, b, sa, sb, backend="cuda")
    assert torch.equal(out, ref)


@gpu
def test_smallm_rejects_what_it_cannot_run(monkeypatch):
    # Without the sm_90a kernel (LOWBIT_ARCH=89), nothing in the CUDA backend takes M > 64,
    # and the error says why for each kernel instead of running something slower.
    monkeypatch.setenv("LOWBIT_ARCH", "89")
    a, b, sa, sb = _operands(65, 128, 128, "row", "cuda")
    with pytest.raises(NotImplementedError, match="M = 65"):
        lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb, backend="cuda")


def test_cpu_tensors_never_pick_cuda():
    a, b, sa, sb = _operands(4, 8, 64, "row", "cpu")
    assert lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb).backend == "reference"


@gpu
@pytest.mark.parametrize("m", [65, 100, 128, 257, 1024])
@pytest.mark.parametrize("n,k", [(1, 256), (3000, 1040), (4096, 4096), (200, 16)])
@pytest.mark.parametrize("mode", ["tensor", "row", "block"])
def test_wgmma_matches_reference(m, n, k, mode):
    a, b, sa, sb = _operands(m, n, k, mode, "cuda")
    choice = lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb, backend="cuda")
    assert choice.kernel == "sm90_fp8_gemm_wgmma", str(choice)
    _check(m, n, k, mode)


@gpu
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("fast_accum", [False, True])
def test_wgmma_out_dtypes_bias(out_dtype, fast_accum):
    _check(300, 4096, 4096, "row", out_dtype=out_dtype, bias=True, fast_accum=fast_accum)
    _check(129, 1000, 512, "block", out_dtype=out_dtype, bias=True, fast_accum=fast_accum)


@gpu
def test_wgmma_benchmark_shapes():
    for m, n, k in [(4096, 14336, 4096), (512, 4096, 14336), (2048, 28672, 8192)]:
        _check(m, n, k, "row")


@gpu
def test_accurate_mode_beats_fast_accum_at_large_k():
    # A large common offset makes the sum grow far beyond each term: the tensor core's
    # limited-precision accumulator then loses low bits that fp32 promotion keeps.
    m, n, k = 256, 256, 16384
    g = torch.Generator().manual_seed(1)
    a = (torch.rand(m, k, generator=g) + 1.0).to(torch.float8_e4m3fn).cuda()
    b = (torch.rand(n, k, generator=g) + 1.0).to(torch.float8_e4m3fn).cuda()
    one = torch.tensor(1.0, device="cuda")
    ref = lowbit.fp8_scaled_mm(a.cpu(), b.cpu(), one.cpu(), one.cpu(), out_dtype=torch.float32,
                               backend="reference")
    acc = lowbit.fp8_scaled_mm(a, b, one, one, out_dtype=torch.float32, backend="cuda")
    fast = lowbit.fp8_scaled_mm(a, b, one, one, out_dtype=torch.float32, fast_accum=True,
                                backend="cuda")
    e_acc, e_fast = _rel_fro(acc, ref), _rel_fro(fast, ref)
    assert e_acc < e_fast, (e_acc, e_fast)
    assert e_acc <= 2e-3


@gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_strided_scales_and_bias(backend):
    # Per-row scales and a bias that are views with non-unit strides must be read as such.
    a, b, sa, sb = _operands(100, 384, 512, "row", "cuda")
    sa2 = torch.stack([sa, sa + 1], dim=1)[:, 0]   # [M, 1] with stride (2, 1)
    sb2 = torch.stack([sb, sb + 1], dim=1)[:, 0]
    bias = torch.randn(2 * 384, device="cuda")[::2]
    for m in (8, 100):
        out = lowbit.fp8_scaled_mm(a[:m], b, sa2[:m], sb2, bias, backend=backend)
        ref = lowbit.fp8_scaled_mm(a[:m], b, sa2[:m].contiguous(), sb2.contiguous(),
                                   bias.contiguous(), backend=backend)
        assert torch.equal(out, ref)
