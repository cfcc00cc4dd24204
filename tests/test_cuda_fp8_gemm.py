"""fp8_scaled_mm CUDA kernels against the float64 reference (SPEC tolerances)."""
import functools

import pytest
import torch

import lowbit
from lowbit_testing import GEMM_TOL as TOL, cuda_gemm_module, fp8_gemm_operands as _operands
from lowbit_testing import rel_fro as _rel_fro

gpu = pytest.mark.gpu


def _check(m, n, k, mode, out_dtype=torch.bfloat16, bias=False, fast_accum=False, b_mode=None):
    a, b, sa, sb = _operands(m, n, k, mode, "cuda", b_mode=b_mode)
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


# LOWBIT_ARCH=89 pins the sm_89 small-M kernel on a Hopper card, where backend="cuda" would
# otherwise run sm90_fp8_gemm_swapab (tested below) for 1 <= M <= 64.
@gpu
@pytest.mark.parametrize("arch", ["89", "80"])
@pytest.mark.parametrize("m", [0, 1, 7, 16, 17, 33, 64])
@pytest.mark.parametrize("n,k", [(1, 256), (3, 128), (4096, 4096), (3000, 1024), (136, 4112)])
@pytest.mark.parametrize("mode", ["tensor", "row", "block"])
def test_smallm_matches_reference(monkeypatch, arch, m, n, k, mode):
    monkeypatch.setenv("LOWBIT_ARCH", arch)
    a, b, sa, sb = _operands(max(m, 1), n, k, mode, "cuda")
    choice = lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb, backend="cuda")
    assert choice.kernel == ("sm80_fp8_gemm_smallm" if arch == "80" else "sm89_fp8_gemm_smallm")
    _check(m, n, k, mode)


@gpu
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("fast_accum", [False, True])
def test_smallm_out_dtypes_bias(monkeypatch, out_dtype, fast_accum):
    monkeypatch.setenv("LOWBIT_ARCH", "89")
    _check(16, 4096, 4096, "row", out_dtype=out_dtype, bias=True, fast_accum=fast_accum)
    _check(5, 1000, 512, "block", out_dtype=out_dtype, bias=True, fast_accum=fast_accum)


@gpu
def test_smallm_deterministic(monkeypatch):
    monkeypatch.setenv("LOWBIT_ARCH", "89")
    a, b, sa, sb = _operands(32, 4096, 8192, "row", "cuda")
    outs = [lowbit.fp8_scaled_mm(a, b, sa, sb, backend="cuda") for _ in range(3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@gpu
def test_smallm_strided_rows(monkeypatch):
    monkeypatch.setenv("LOWBIT_ARCH", "89")
    # Rows padded to a 16-byte multiple: a view with stride(0) > K must still be right.
    a, b, sa, sb = _operands(9, 256, 512, "row", "cuda")
    big = torch.zeros(9, 640, dtype=torch.float8_e4m3fn, device="cuda")
    big[:, :512] = a
    out = lowbit.fp8_scaled_mm(big[:, :512], b, sa, sb, backend="cuda")
    ref = lowbit.fp8_scaled_mm(a, b, sa, sb, backend="cuda")
    assert torch.equal(out, ref)


# -------------------------------------- tiled mma.sync kernels (any M; sm_89 and sm_80 paths)
# LOWBIT_ARCH=89 / 80 makes the sm_90a kernels step aside: above M = 64 the tiled kernel of
# that arch runs; at M <= 64 the small-M kernels come first, so the tiled ones are called by
# name there.
MMA_TILED = {"89": "sm89_fp8_gemm_mma", "80": "sm80_fp8_gemm_mma"}


def _force_arch(monkeypatch, arch):
    if arch == "89" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 mma.sync needs sm_89 or newer")
    monkeypatch.setenv("LOWBIT_ARCH", arch)


def _registered(name):
    from lowbit._backend import kernels
    (kern,) = [k for k in kernels("fp8_scaled_mm") if k.name == name]
    return kern


@gpu
@pytest.mark.parametrize("arch", ["89", "80"])
@pytest.mark.parametrize("m", [65, 257, 1100])
@pytest.mark.parametrize("n,k", [(1, 256), (3, 128), (3000, 1040), (136, 4112), (200, 16)])
@pytest.mark.parametrize("mode", ["tensor", "row", "block"])
def test_mma_tiled_matches_reference(monkeypatch, arch, m, n, k, mode):
    # M and N end in partial 128-row tiles (and 1100 x 3000 is 9 x 24 tiles, more than one
    # wave); K = 16, 128, 256, 1040 and 4112 give 1, 1, 2, 9 and 33 steps of 128, ragged or not.
    _force_arch(monkeypatch, arch)
    a, b, sa, sb = _operands(m, n, k, mode, "cuda")
    choice = lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb, backend="cuda")
    assert choice.kernel == MMA_TILED[arch], str(choice)
    _check(m, n, k, mode)


@gpu
@pytest.mark.parametrize("arch", ["89", "80"])
@pytest.mark.parametrize("m", [1, 17, 64])
@pytest.mark.parametrize("mode", ["tensor", "row", "block"])
def test_mma_tiled_small_m(monkeypatch, arch, m, mode):
    _force_arch(monkeypatch, arch)
    a, b, sa, sb = _operands(m, 300, 512, mode, "cuda")
    kern = _registered(MMA_TILED[arch])
    args = (a, b, sa, sb, None, torch.float32, False)
    assert kern.supports(*args) is None
    ref = lowbit.fp8_scaled_mm(a.cpu(), b.cpu(), sa.cpu(), sb.cpu(), out_dtype=torch.float32,
                               backend="reference")
    assert _rel_fro(kern.fn(*args), ref) <= TOL[torch.float32]


@gpu
@pytest.mark.parametrize("arch", ["89", "80"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("fast_accum", [False, True])
def test_mma_tiled_out_dtypes_bias(monkeypatch, arch, out_dtype, fast_accum):
    _force_arch(monkeypatch, arch)
    _check(300, 4096, 4096, "row", out_dtype=out_dtype, bias=True, fast_accum=fast_accum)
    _check(129, 1000, 512, "block", out_dtype=out_dtype, bias=True, fast_accum=fast_accum)


@gpu
@pytest.mark.parametrize("arch", ["89", "80"])
def test_mma_tiled_strided_rows_and_benchmark_shape(monkeypatch, arch):
    _force_arch(monkeypatch, arch)
    # Rows padded to a 16-byte multiple: a view with stride(0) > K must still be right.
    a, b, sa, sb = _operands(100, 256, 512, "row", "cuda")
    big = torch.zeros(100, 640, dtype=torch.float8_e4m3fn, device="cuda")
    big[:, :512] = a
    out = lowbit.fp8_scaled_mm(big[:, :512], b, sa, sb, backend="cuda")
    assert torch.equal(out, lowbit.fp8_scaled_mm(a, b, sa, sb, backend="cuda"))
    _check(2048, 4096, 4096, "row")


def test_cpu_tensors_never_pick_cuda():
    a, b, sa, sb = _operands(4, 8, 64, "row", "cpu")
    assert lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb).backend == "reference"


def test_operand_layouts_the_cuda_kernels_take():
    from lowbit.backends.cuda.gemm import _aligned, row_stride
    x = torch.zeros(64, 256, dtype=torch.uint8)
    assert _aligned(x) and row_stride(x) == 256
    assert not _aligned(x.t())                            # not K-contiguous
    assert not _aligned(x[:, 8:])                         # 8-byte-aligned start
    assert not _aligned(torch.zeros(64, 264, dtype=torch.uint8)[:, :256])  # stride 264
    assert not _aligned(x[:1].expand(64, 256))            # broadcast rows (stride 0)
    one = x[:1].expand(1, 256)                            # a single row: its stride is not used
    assert _aligned(one) and row_stride(one) == 256


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
@pytest.mark.parametrize("k", [16, 128, 256, 384, 1040, 2048])
@pytest.mark.parametrize("mode", ["tensor", "row", "block"])
@pytest.mark.parametrize("fast_accum", [False, True])
@pytest.mark.parametrize("n", [2100, 2048])
def test_wgmma_persistent_tiles_and_k_steps(k, mode, fast_accum, n):
    # 1100 x 2100 is 9 x 17 = 153 tiles of 128 x 128 (1100 x 2048: 144): more than a 132-SM
    # H100 runs at once, so CTAs take a second tile (in grouped order, with a short last row
    # group); k gives 1, 2, 3 and 9 steps of 128 (odd, even, ragged), which take different
    # mainloop paths; when k is a multiple of 512 the block scales come by TMA with the
    # stages (16-byte rows), else by loads. n = 2100 rows are 4200 bytes (not a multiple of
    # 16, so the direct-store epilogue runs, with a ragged last column tile); n = 2048 takes
    # TMA stores, whose staging tile a CTA's second tile reuses.
    _check(1100, n, k, mode, fast_accum=fast_accum)


@gpu
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("mode", ["tensor", "row", "block"])
@pytest.mark.parametrize("m,fast_accum", [(300, False), (2100, False), (2100, True)])
def test_wgmma_staged_and_direct_epilogues_agree(out_dtype, mode, m, fast_accum):
    # Output rows of N = 2048 are whole 16-byte units: the epilogue stages each tile in shared
    # memory (stmatrix for 16-bit outputs) and stores it by TMA. Rows of N = 2050 are not, so
    # the same kernel stores from registers. Columns 0..2047 come from the same tiles, K steps
    # and arithmetic in both, so they must agree bit for bit: a misplaced fragment, a wrong
    # swizzle or a different rounding in either path shows here. M = 300 is 48 tiles (one per
    # CTA); M = 2100 is 272-289, so a CTA stages its second and third tile in a staging tile
    # whose previous stores may still be in flight; fast_accum takes the other mainloop.
    n, k, nb = 2050, 1024, 2048
    a, b, sa, sb = _operands(m, n, k, mode, "cuda")
    bias = torch.randn(n, device="cuda").to(torch.bfloat16)
    sb_even = sb if mode == "tensor" else sb[: nb if mode == "row" else nb // 128]
    for args in ((a, b, sa, sb), (a, b[:nb], sa, sb_even)):
        assert lowbit.explain(lowbit.fp8_scaled_mm, *args, backend="cuda").kernel == \
            "sm90_fp8_gemm_wgmma"
    direct = lowbit.fp8_scaled_mm(a, b, sa, sb, bias, out_dtype=out_dtype,
                                  fast_accum=fast_accum, backend="cuda")
    staged = lowbit.fp8_scaled_mm(a, b[:nb], sa, sb_even, bias[:nb], out_dtype=out_dtype,
                                  fast_accum=fast_accum, backend="cuda")
    assert torch.equal(staged, direct[:, :nb])


@gpu
@pytest.mark.parametrize("m", [16, 300])  # sm90_fp8_gemm_swapab / _wgmma on an H100
def test_prepared_and_general_launchers_agree(m):
    # A remembered signature runs a launcher prepared for it (strides, scale modes and
    # codes worked out once); scales or a bias that are not dense take the general path,
    # which makes them dense first. Both must give the same bits, call after call.
    n, k = 512, 1024
    a, b, sa, sb = _operands(m, n, k, "row", "cuda")
    bias = torch.randn(n, device="cuda").to(torch.bfloat16)
    wide = lambda t: torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]  # strided copy
    sa_s, sb_s, bias_s = wide(sa), wide(sb), wide(bias)
    assert not (sa_s.is_contiguous() or sb_s.is_contiguous() or bias_s.is_contiguous())
    dense = [lowbit.fp8_scaled_mm(a, b, sa, sb, bias, backend="cuda") for _ in range(3)]
    strided = lowbit.fp8_scaled_mm(a, b, sa_s, sb_s, bias_s, backend="cuda")
    for out in dense[1:] + [strided]:
        assert torch.equal(out, dense[0])
    ref = lowbit.fp8_scaled_mm(a.cpu(), b.cpu(), sa.cpu(), sb.cpu(), bias.cpu(),
                               out_dtype=torch.float32, backend="reference")
    assert _rel_fro(dense[0], ref) <= TOL[torch.bfloat16]


@gpu
def test_wgmma_benchmark_shapes():
    for m, n, k in [(4096, 14336, 4096), (512, 4096, 14336), (2048, 28672, 8192)]:
        _check(m, n, k, "row")


@gpu
@pytest.mark.parametrize("m", [64, 256])  # sm90_fp8_gemm_swapab, sm90_fp8_gemm_wgmma on H100
def test_accurate_mode_beats_fast_accum_at_large_k(m):
    # A large common offset makes the sum grow far beyond each term: the tensor core's
    # limited-precision accumulator then loses low bits that fp32 promotion keeps.
    n, k = 256, 16384
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


# The kernel each (arch switch, M) runs on an sm_90 card.
MIXED_KERNELS = {
    (None, 17): "sm90_fp8_gemm_swapab", (None, 300): "sm90_fp8_gemm_wgmma",
    ("89", 17): "sm89_fp8_gemm_smallm", ("89", 300): "sm89_fp8_gemm_mma",
    ("80", 17): "sm80_fp8_gemm_smallm", ("80", 300): "sm80_fp8_gemm_mma",
}
MIXED_MODES = [("row", "block"), ("block", "row"), ("tensor", "block"), ("block", "tensor")]


@gpu
@pytest.mark.parametrize("arch", [None, "89", "80"])
@pytest.mark.parametrize("m", [17, 300])
@pytest.mark.parametrize("k", [1040, 2048])
@pytest.mark.parametrize("modes", MIXED_MODES, ids=[f"{a}-{b}" for a, b in MIXED_MODES])
def test_mixed_scale_modes(monkeypatch, arch, m, k, modes):
    # One operand block-scaled and the other per row or per tensor: the block factors are
    # applied at each 128-K promotion and the other operand's in the epilogue, by every
    # kernel. k = 2048 lets the wgmma kernel TMA-load the block scales (16-byte rows);
    # k = 1040 (9 steps, the last ragged) makes it load them one by one.
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the kernel choices below are an sm_90 card's")
    if arch is not None:
        _force_arch(monkeypatch, arch)
    a_mode, b_mode = modes
    a, b, sa, sb = _operands(m, 1000, k, a_mode, "cuda", b_mode=b_mode)
    choice = lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb, backend="cuda")
    assert choice.kernel == MIXED_KERNELS[(arch, m)], str(choice)
    _check(m, 1000, k, a_mode, b_mode=b_mode)


# ------------------------------------------------------------ sm90_fp8_gemm_swapab (M <= 64)
SWAPAB = "sm90_fp8_gemm_swapab"


@pytest.fixture
def sm90():
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip(f"{SWAPAB} runs on sm_90 only")


@functools.lru_cache(maxsize=4)
def _swapab_case(m, n, k, mode, bias):
    """Operands, bf16 bias (or None) and the float64 reference, shared by the tests that only
    change the output dtype or fast_accum (they vary fastest in the parametrization)."""
    a, b, sa, sb = _operands(m, n, k, mode, "cuda")
    bias_t = None
    if bias:
        g = torch.Generator().manual_seed(1)
        bias_t = torch.randn(n, generator=g).to(torch.bfloat16).cuda()
    ref = lowbit.fp8_scaled_mm(a.cpu(), b.cpu(), sa.cpu(), sb.cpu(),
                               None if bias_t is None else bias_t.cpu(), out_dtype=torch.float32,
                               backend="reference")
    return a, b, sa, sb, bias_t, ref


def _swapab_check(m, n, k, mode, bias=False, out_dtype=torch.bfloat16, fast_accum=False):
    a, b, sa, sb, bias_t, ref = _swapab_case(m, n, k, mode, bias)
    choice = lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb, bias_t, out_dtype=out_dtype,
                            fast_accum=fast_accum, backend="cuda")
    assert choice.kernel == SWAPAB, str(choice)
    out = lowbit.fp8_scaled_mm(a, b, sa, sb, bias_t, out_dtype=out_dtype, fast_accum=fast_accum,
                               backend="cuda")
    assert out.shape == (m, n) and out.dtype == out_dtype
    assert _rel_fro(out, ref) <= TOL[out_dtype]
    return out


# M: each activation tile width (n = 8, 16, 32, 64) full and partly filled. N = 1, 3000 (a
# ragged last tile) and 4096; K = 144 and 4112 end in a partial 128-K step. On a 132-SM H100
# (which runs 66 clusters of 2 CTAs at once, 39 of 3, 30 of 4, 22 of 5, 17 of 6, 15 of 7 or 8)
# these shapes run K split over clusters of 8 (N = 1), 4 (N = 3000), 3 (N = 4096) and unsplit
# (K = 144).
@gpu
@pytest.mark.parametrize("fast_accum", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("mode", ["tensor", "row", "block"])
@pytest.mark.parametrize("k", [144, 4112, 4096])
@pytest.mark.parametrize("n", [1, 3000, 4096])
@pytest.mark.parametrize("m", [1, 7, 8, 16, 17, 33, 64])
def test_swapab_matches_reference(sm90, m, n, k, mode, bias, out_dtype, fast_accum):
    _swapab_check(m, n, k, mode, bias, out_dtype, fast_accum)


@gpu
@pytest.mark.parametrize("mode", ["row", "block"])
@pytest.mark.parametrize("m,n,k", [
    (5, 8192, 2048),    # K split over clusters of 2
    (1, 256, 8192),     # two tiles, clusters of 8
    (17, 2048, 4096),   # clusters of 6, 7, 5: each CTA reduces 21-22, 18-19 or 25-26 of the
    (9, 1024, 3584),    # tile's 128 rows
    (3, 2560, 4096),
    (33, 17000, 512),   # 133 tiles: one CTA takes a second tile
    (64, 28672, 1024),  # 224 tiles: CTAs stride over tiles, the ring runs on across them
    (8, 4096, 128),     # one step per CTA: the promotion loop's shortest path
    (64, 28672, 1152),  # an odd step count on every tile, so the ring's phase flips per tile
    (16, 14336, 4096), (64, 4096, 14336), (1, 28672, 8192),  # benchmark shapes
])
def test_swapab_splits_and_persistent_tiles(sm90, m, n, k, mode):
    _swapab_check(m, n, k, mode)


@gpu
@pytest.mark.parametrize("mode", ["row", "block"])
def test_swapab_deterministic(sm90, mode):
    # N = 4096 has 32 tiles: K is split over clusters, and the partials are summed in a fixed
    # order, so repeated runs agree bit for bit.
    out = _swapab_check(16, 4096, 14336, mode)
    a, b, sa, sb, _, _ = _swapab_case(16, 4096, 14336, mode, False)
    for _ in range(3):
        assert torch.equal(lowbit.fp8_scaled_mm(a, b, sa, sb, backend="cuda"), out)


@gpu
@pytest.mark.parametrize("bias_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_swapab_bias_dtypes(sm90, bias_dtype):
    a, b, sa, sb = _operands(9, 640, 1024, "row", "cuda")
    bias = torch.randn(640, device="cuda").to(bias_dtype)
    out = lowbit.fp8_scaled_mm(a, b, sa, sb, bias, out_dtype=torch.float32, backend="cuda")
    ref = lowbit.fp8_scaled_mm(a.cpu(), b.cpu(), sa.cpu(), sb.cpu(), bias.cpu(),
                               out_dtype=torch.float32, backend="reference")
    assert _rel_fro(out, ref) <= TOL[torch.float32]


@gpu
def test_swapab_strided_rows(sm90):
    # Rows of a and b padded to a 16-byte multiple: views with stride(0) > K (TMA strides).
    a, b, sa, sb = _operands(9, 300, 512, "row", "cuda")
    big_a = torch.zeros(9, 640, dtype=torch.float8_e4m3fn, device="cuda")
    big_b = torch.zeros(300, 528, dtype=torch.float8_e4m3fn, device="cuda")
    big_a[:, :512] = a
    big_b[:, :512] = b
    choice = lowbit.explain(lowbit.fp8_scaled_mm, big_a[:, :512], big_b[:, :512], sa, sb,
                            backend="cuda")
    assert choice.kernel == SWAPAB, str(choice)
    out = lowbit.fp8_scaled_mm(big_a[:, :512], big_b[:, :512], sa, sb, backend="cuda")
    assert torch.equal(out, lowbit.fp8_scaled_mm(a, b, sa, sb, backend="cuda"))


@gpu
def test_swapab_cuda_graph(sm90):
    # No host synchronization and no allocation in the launch: it captures and replays.
    a, b, sa, sb = _operands(16, 4096, 4096, "block", "cuda")
    want = lowbit.fp8_scaled_mm(a, b, sa, sb, backend="cuda")  # warm-up, outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    static_a = a.clone()
    with torch.cuda.graph(graph):
        got = lowbit.fp8_scaled_mm(static_a, b, sa, sb, backend="cuda")
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, want)
    a2, _, _, _ = _operands(16, 4096, 4096, "block", "cuda", seed=5)
    static_a.copy_(a2)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, lowbit.fp8_scaled_mm(a2, b, sa, sb, backend="cuda"))


@gpu
def test_swapab_declines_k_not_multiple_of_16(sm90):
    # K = 136 or 4104 (K % 16 = 8) cannot be a TMA row stride; the CUDA kernels decline
    # and say why (auto runs the Triton kernel for such shapes).
    a, b, sa, sb = _operands(4, 256, 136, "row", "cuda")
    with pytest.raises(NotImplementedError, match="not a multiple of 16"):
        lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb, backend="cuda")


@gpu
def test_non_finite_scales_checked_on_gpu_only_when_asked(monkeypatch):
    a, b, sa, sb = _operands(16, 256, 256, "tensor", "cuda")
    bad = torch.tensor(float("nan"), device="cuda")
    monkeypatch.delenv("LOWBIT_CHECK_SCALES", raising=False)
    assert torch.isnan(lowbit.fp8_scaled_mm(a, b, bad, sb, backend="cuda")).all()
    monkeypatch.setenv("LOWBIT_CHECK_SCALES", "1")
    with pytest.raises(ValueError, match=r"fp8_scaled_mm: a_scale must be finite"):
        lowbit.fp8_scaled_mm(a, b, bad, sb, backend="cuda")


# ------------------------------------------------- programmatic dependent launch (sm_90a)
@pytest.fixture
def pdl_switch(sm90):
    from lowbit.backends.cuda import gemm as cuda_gemm
    was = cuda_gemm.programmatic_launch()
    yield cuda_gemm.set_programmatic_launch
    cuda_gemm.set_programmatic_launch(was)


def _chain_inputs(m, seed):
    """Operands of three GEMMs: one giving a positive [m, 1] fp32 column, one a [1, 4096] row,
    and the last, whose per-row a scale is that column and whose bias is that row."""
    g = torch.Generator().manual_seed(seed)
    pos = lambda *s: (torch.rand(*s, generator=g) + 0.25).to(torch.float8_e4m3fn).cuda()
    a1, b1 = pos(m, 4096), pos(1, 4096)
    a2, b2 = pos(1, 8192), (torch.randn(4096, 8192, generator=g)).to(torch.float8_e4m3fn).cuda()
    a3, _, _, sb3 = _operands(m, 4096, 2048, "row", "cuda", seed=seed)
    b3 = (torch.randn(4096, 2048, generator=g)).to(torch.float8_e4m3fn).cuda()
    return a1, b1, a2, b2, a3, b3, sb3


def _chain(a1, b1, a2, b2, a3, b3, sb3, sync=False):
    one = torch.ones((), device="cuda")
    f32, bf16 = torch.float32, torch.bfloat16
    col = lowbit.fp8_scaled_mm(a1, b1, one, one / 4096, out_dtype=f32, backend="cuda")
    if sync:
        torch.cuda.synchronize()
    row = lowbit.fp8_scaled_mm(a2, b2, one, one / 64, out_dtype=bf16, backend="cuda")
    if sync:
        torch.cuda.synchronize()
    return lowbit.fp8_scaled_mm(a3, b3, col, sb3, row[0], out_dtype=bf16, backend="cuda")


# The sm_90a GEMMs start while the kernel before them finishes (programmatic dependent launch)
# and each lets the next one start once it is past its mainloop. Here each GEMM reads what the
# two before it wrote a moment earlier, in the same stream, with new inputs every time: a read
# before griddepcontrol.wait would see the last round's scales or bias. The calls queue up
# behind a sleeping kernel, so that they run back to back as in a CUDA graph rather than at
# the pace of the host. m = 16 runs swapab throughout; m = 300 runs wgmma first and last.
@gpu
@pytest.mark.parametrize("m", [16, 300])
def test_programmatic_launch_reads_what_the_kernel_before_wrote(pdl_switch, m):
    rounds = [_chain_inputs(m, seed) for seed in range(6)]
    pdl_switch(False)
    want = [_chain(*r, sync=True) for r in rounds]
    torch.cuda.synchronize()
    pdl_switch(True)
    for _ in range(3):
        torch.cuda._sleep(50_000_000)  # tens of ms: the host queues every call meanwhile
        got = [_chain(*r) for r in rounds]
        torch.cuda.synchronize()
        for w, o in zip(want, got):
            assert torch.equal(o, w)


@gpu
def test_programmatic_launch_in_a_cuda_graph(pdl_switch):
    pdl_switch(True)
    r = _chain_inputs(16, 0)
    want = _chain(*r, sync=True)  # warm-up, outside capture
    static = [t.clone() for t in r]
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = _chain(*static)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, want)
    r2 = _chain_inputs(16, 1)
    for t, src in zip(static, r2):
        t.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, _chain(*r2, sync=True))


def test_programmatic_launch_switch_without_gpu():
    from lowbit.backends.cuda import gemm as cuda_gemm
    assert cuda_gemm.PDL_ENV == "LOWBIT_PDL"
    was = cuda_gemm.programmatic_launch()
    cuda_gemm.set_programmatic_launch(False)
    assert cuda_gemm.programmatic_launch() is False
    cuda_gemm.set_programmatic_launch(True)
    assert cuda_gemm.programmatic_launch() is lowbit.backends.cuda.has_cuda_kernels()
    cuda_gemm.set_programmatic_launch(was)
