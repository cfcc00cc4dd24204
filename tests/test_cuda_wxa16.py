"""The mixed-input CUDA GEMMs (csrc/wxa16): w4a16_gemm on the prepacked int4 layout and
w8a16 on plain int8 weights, against float64 products of the same quantized weights (SPEC:
relative Frobenius error <= 1e-2 for bf16/fp16 outputs). In the portable order M <= 64 runs
the decode kernel (K split over CTAs), larger M dequantize-then-cuBLAS; the decode kernel is
mma.sync code of every arch from sm_80, so ``LOWBIT_ARCH=80`` or ``89`` (the A100 and sm_89
paths) must pick the same kernels on a newer card. On sm_90 ``auto`` and ``backend="cuda"``
take the sm_90a wgmma kernels where heuristics.TABLE puts them first.

The W8A16 kernels are also launched directly through ``_C.WXA16GemmLaunch``, so they are
tested whether or not this build defines the ``w8a16_gemm`` op."""
import functools

import pytest
import torch

import lowbit
from lowbit import Int4Weight
from lowbit_testing import gemm_tol, rel_fro

gpu = pytest.mark.gpu

MS = [0, 1, 3, 16, 17, 40, 65, 256]
NKS = [(8, 128), (8, 4224), (3000, 128), (3000, 4224)]
GROUPS = [32, 64, 128]
DTYPES = [torch.bfloat16, torch.float16]
DTYPE_IDS = ["bf16", "fp16"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@functools.lru_cache(maxsize=None)
def _int4(n, k, group, symmetric):
    """(canonical Int4Weight on the CPU, its float64 dequantized [N, K] on the GPU)."""
    w = torch.randn(n, k, generator=_gen(n + k + group)) * 0.05
    q = lowbit.int4_quantize(w, group_size=group, symmetric=symmetric)
    return q, q.dequantize(torch.float64).cuda()


@functools.lru_cache(maxsize=None)
def _prepacked(n, k, group, symmetric):
    q, _ = _int4(n, k, group, symmetric)
    return q.to("cuda").prepack()


def _x(m, k, dtype, seed=0):
    return torch.randn(m, k, generator=_gen(seed)).to(dtype).cuda()


def _portable_kernel(bits, m):
    """What backend="cuda" runs in the portable order (registration priority: LOWBIT_ARCH=80
    or 89 on a Hopper card, or any card without a row in heuristics.TABLE): decode at
    M <= 64; above, the weight dequantized, then multiplied (cuBLAS)."""
    return f"cuda_w{bits}a16_gemm_" + ("decode" if m <= 64 else "dequant")


def _check(out, ref, dtype):
    assert out.dtype == dtype
    assert out.shape == ref.shape
    if out.numel():
        assert rel_fro(out, ref) <= gemm_tol(dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zeros"])
@pytest.mark.parametrize("group", GROUPS + [-1], ids=["g32", "g64", "g128", "channel"])
@pytest.mark.parametrize("n,k", NKS)
@pytest.mark.parametrize("m", MS)
def test_w4a16(monkeypatch, m, n, k, group, symmetric, dtype):
    """The portable kernels (decode, dequantize-then-cuBLAS) at every group, zero points,
    dtype and bias: LOWBIT_ARCH=89 gives backend="cuda" their order on a Hopper card too
    (natively it takes the wgmma kernel at M = 33-256, tested with `auto` below)."""
    monkeypatch.setenv("LOWBIT_ARCH", "89")
    _, wd = _int4(n, k, group, symmetric)
    w = _prepacked(n, k, group, symmetric)
    x = _x(m, k, dtype, seed=m)
    bias = (torch.randn(n, generator=_gen(3)).to(dtype).cuda() if m % 2 else None)
    choice = lowbit.explain(lowbit.w4a16_gemm, x, w, bias, backend="cuda")
    assert choice.kernel == _portable_kernel(4, m), str(choice)
    out = lowbit.w4a16_gemm(x, w, bias, backend="cuda")
    ref = x.double() @ wd.T
    if bias is not None:
        ref = ref + bias.double()
    _check(out, ref, dtype)


@gpu
@pytest.mark.parametrize("m", [1, 16, 17, 64, 65])
def test_w4a16_sm80_path(monkeypatch, m):
    monkeypatch.setenv("LOWBIT_ARCH", "80")
    _, wd = _int4(3000, 4224, 128, False)
    w = _prepacked(3000, 4224, 128, False)
    x = _x(m, 4224, torch.bfloat16)
    choice = lowbit.explain(lowbit.w4a16_gemm, x, w, backend="cuda")
    assert choice.kernel == _portable_kernel(4, m), str(choice)
    _check(lowbit.w4a16_gemm(x, w, backend="cuda"), x.double() @ wd.T, torch.bfloat16)


@gpu
@pytest.mark.parametrize("bits,m,n,group,expected", [
    (4, 32, 3000, 128, "cuda_w4a16_gemm_decode"), (4, 33, 3000, 128, "sm90_w4a16_gemm_wgmma"),
    (4, 256, 3000, 128, "sm90_w4a16_gemm_wgmma"), (4, 48, 3000, 32, "cuda_w4a16_gemm_decode"),
    (8, 32, 3000, 0, "cuda_w8a16_gemm_decode"), (8, 17, 8192, 0, "sm90_w8a16_gemm_wgmma"),
    (8, 100, 3000, 128, "sm90_w8a16_gemm_wgmma"), (4, 300, 3000, 128, "sm90_w4a16_gemm_wgmma"),
    (8, 300, 3000, 0, "sm90_w8a16_gemm_wgmma"), (8, 300, 3000, 128, "cuda_w8a16_gemm_dequant")])
@pytest.mark.parametrize("backend", ["auto", "cuda"])
def test_auto_and_cuda_take_the_wgmma_kernels_on_sm90(monkeypatch, backend, bits, m, n, group,
                                                      expected):
    """backend="auto", and backend="cuda" among its kernels, on an sm_90 card run what
    heuristics.TABLE names where it supports the inputs (G = 32: the wgmma kernel declines,
    decode runs; int8 groups above M = 256: dequantize-then-cuBLAS runs), and the output is
    right."""
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm_90 table")
    monkeypatch.delenv("LOWBIT_ARCH", raising=False)
    k = 4224
    x = _x(m, k, torch.bfloat16, seed=m)
    if bits == 4:
        _, wd = _int4(n, k, group, True)
        w = _prepacked(n, k, group, True)
        choice = lowbit.explain(lowbit.w4a16_gemm, x, w, backend=backend)
        out, ref = lowbit.w4a16_gemm(x, w, backend=backend), x.double() @ wd.T
    else:
        q, s = _int8_weight(n, k, group)
        choice = lowbit.explain(lowbit.w8a16_gemm, x, q, s, None, backend=backend)
        out, ref = lowbit.w8a16_gemm(x, q, s, None, backend=backend), _int8_ref(x, q, s, None)
    assert choice.kernel == expected, str(choice)
    _check(out, ref, torch.bfloat16)


@gpu
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zeros"])
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("m", [17, 100])
def test_w4a16_tiled_kernel(m, group, symmetric):
    """The int4 tiled kernel, which backend="cuda" does not pick, called
    directly: it stays correct for the sm_80 path and for callers that pin it."""
    from lowbit._backend import kernels

    tiled, = (k for k in kernels("w4a16_gemm") if k.name == "cuda_w4a16_gemm_tiled")
    n, k = 3000, 4224
    _, wd = _int4(n, k, group, symmetric)
    w = _prepacked(n, k, group, symmetric)
    for dtype in DTYPES:
        x = _x(m, k, dtype, seed=m)
        bias = torch.randn(n, generator=_gen(3)).to(dtype).cuda()
        args = (x, w.qweight, w.scales, w.zeros, group, None, bias)
        assert tiled.supports(*args) is None
        _check(tiled.fn(*args), x.double() @ wd.T + bias.double(), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zeros"])
@pytest.mark.parametrize("group", [64, 128, -1], ids=["g64", "g128", "channel"])
@pytest.mark.parametrize("n,k", [(8, 128), (3000, 4224), (4096, 4096)])
@pytest.mark.parametrize("m", [1, 17, 33, 64, 65, 100, 128, 200, 256])
@pytest.mark.parametrize("name", ["sm90_w4a16_gemm_wgmma", "cuda_w4a16_gemm_wide"])
def test_w4a16_pinned_kernel(name, m, n, k, group, symmetric, dtype):
    """Kernels no call picks yet, called directly: the sm_90a wgmma kernel (the decode
    kernel's fragments as wgmma's register operand; 32-, 64- and 128-token tiles) and the wide
    mma.sync kernel (64-token tiles, M <= 128): one row block with rows past N and a K too
    short to split (8 x 128), several token tiles and a K split (4096 x 4096), K = 4224 (the
    wide kernel's last stage two chunks long), rows past M; a prepared launch of the same
    signature twice (its split counters are left zero)."""
    from lowbit._backend import kernels

    if name.startswith("sm90") and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("an sm_90a kernel")
    if name.endswith("wide") and m > 128:
        pytest.skip("the wide kernel takes M <= 128")
    kernel, = (kk for kk in kernels("w4a16_gemm") if kk.name == name)
    _, wd = _int4(n, k, group, symmetric)
    w = _prepacked(n, k, group, symmetric)
    x = _x(m, k, dtype, seed=m)
    bias = torch.randn(n, generator=_gen(3)).to(dtype).cuda() if m % 2 else None
    args = (x, w.qweight, w.scales, w.zeros, w.group_size, None, bias)
    assert kernel.supports(*args) is None
    ref = x.double() @ wd.T
    ref = ref if bias is None else ref + bias.double()
    _check(kernel.fn(*args), ref, dtype)
    run = kernel.prepare(*args)
    for _ in range(2):
        _check(run(*args), ref, dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zeros"])
@pytest.mark.parametrize("group", [64, 128, -1], ids=["g64", "g128", "channel"])
@pytest.mark.parametrize("m", [129, 300, 1024])
def test_w4a16_wgmma_kernel_large_m(m, group, symmetric, dtype):
    """Above M = 128 the wgmma kernel takes 128- or 256-token tiles summed in the tensor core
    (256 at M = 1024 on this weight, 128 at M = 129 and 300): group
    scales of x's dtype applied to the weights in registers ((u - z) * scale rounded once,
    as the dequantize path does), one scale per row (any dtype) applied after the mainloop;
    fp32 group scales keep 64-token tiles with fp32 promotion."""
    from lowbit._backend import kernels

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("an sm_90a kernel")
    wgmma, = (kk for kk in kernels("w4a16_gemm") if kk.name == "sm90_w4a16_gemm_wgmma")
    n, k = 3000, 4224
    w_full = (torch.randn(n, k, generator=_gen(5)) * 0.05).to(dtype)
    for scales_dtype in (dtype, torch.float32):
        q = lowbit.int4_quantize(w_full.to(scales_dtype), group_size=group,
                                 symmetric=symmetric)
        assert q.scales.dtype == scales_dtype
        wd = q.dequantize(torch.float64).cuda()
        w = q.to("cuda").prepack()
        x = _x(m, k, dtype, seed=m)
        args = (x, w.qweight, w.scales, w.zeros, w.group_size, None, None)
        assert wgmma.supports(*args) is None
        _check(wgmma.fn(*args), x.double() @ wd.T, dtype)


def _wgmma_on_a_half_wave_weight(bits, m, k):
    """The sm_90a wgmma kernel of w{bits}a16_gemm, and a weight of N = 64 * SMs + 72 rows
    (half a wave of 128-row blocks and one more, ragged) with its bf16 x of m tokens."""
    from lowbit._backend import kernels

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("an sm_90a kernel")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    n, dtype = 64 * sms + 72, torch.bfloat16
    wgmma, = (kk for kk in kernels(f"w{bits}a16_gemm")
              if kk.name == f"sm90_w{bits}a16_gemm_wgmma")
    return wgmma, n, k, _x(m, k, dtype, seed=m), dtype


@gpu
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("m", [65, 100, 128])
def test_wgmma_kernels_take_128_token_tiles_on_wide_weights_from_m_65(m, bits):
    """At M = 65-128 on a weight whose 64-token tiles would take more than one wave of CTAs,
    the wgmma kernels take 128-token tiles summed in the tensor core (the last one partial
    below M = 128): int4 with group scales of x's dtype and per channel, int8 per channel;
    int8 groups (fp32 scales) keep 64-token tiles. N is ragged past the last 128-row block."""
    wgmma, n, k, x, dtype = _wgmma_on_a_half_wave_weight(bits, m, 512)
    if bits == 4:
        w_full = (torch.randn(n, k, generator=_gen(7)) * 0.05).to(dtype)
        for group in (128, -1):
            q = lowbit.int4_quantize(w_full, group_size=group, symmetric=False)
            w = q.to("cuda").prepack()
            args = (x, w.qweight, w.scales, w.zeros, w.group_size, None, None)
            assert wgmma.supports(*args) is None
            _check(wgmma.fn(*args), x.double() @ q.dequantize(torch.float64).cuda().T, dtype)
        return
    bias = torch.randn(n, generator=_gen(3)).to(dtype).cuda()
    for group in (0, 128):
        q, s = _int8_weight(n, k, group)
        args = (x, q, s, bias)
        assert wgmma.supports(*args) is None
        _check(wgmma.fn(*args), _int8_ref(x, q, s, bias), dtype)


@gpu
def test_wgmma_kernels_split_only_the_last_partial_wave():
    """A grid of more than a wave whose last wave fills at most half the SMs runs its tiles
    whole but for that wave's, which are split over the SMs (`split_from`: the first split
    tile): M = 1024 in 256-token tiles on a ragged weight of 4 x (SMs / 4 + 3) tiles, so
    12-ish tiles in the last wave. Sums match the reference, repeated launches give the same
    bits and leave the split counters zero; int4 runs the same planner (same tiles, same
    stage count) through its op."""
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("an sm_90a kernel")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    m, k, dtype = 1024, 2048, torch.bfloat16
    blocks = -(-sms // 4) + 3
    n = 128 * blocks - 40
    tiles = blocks * 4
    if not (tiles > sms and 0 < tiles % sms <= sms // 2):
        pytest.skip(f"{sms} SMs: no weight of this form leaves a last wave of at most half")
    x = _x(m, k, dtype, seed=3)
    bias = torch.randn(n, generator=_gen(3)).to(dtype).cuda()
    q, s = _int8_weight(n, k, 0)
    name = "sm90_w8a16_gemm_wgmma"
    launch = _plan_w8(name, x, q, s, bias)
    assert launch.split_from == tiles - tiles % sms and launch.splits > 1
    out = _launch_w8_thrice(name, x, q, s, bias, launch.counter_bytes)
    _check(out, _int8_ref(x, q, s, bias), dtype)

    from lowbit._backend import kernels

    wgmma, = (kk for kk in kernels("w4a16_gemm") if kk.name == "sm90_w4a16_gemm_wgmma")
    w_full = (torch.randn(n, k, generator=_gen(13)) * 0.05).to(dtype)
    q4 = lowbit.int4_quantize(w_full, group_size=128, symmetric=False)
    w4 = q4.to("cuda").prepack()
    args = (x, w4.qweight, w4.scales, w4.zeros, w4.group_size, None, bias)
    assert wgmma.supports(*args) is None
    first = wgmma.fn(*args)
    assert torch.equal(wgmma.fn(*args), first)
    _check(first, x.double() @ q4.dequantize(torch.float64).cuda().T + bias.double(), dtype)


@gpu
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("m", [129, 200, 256, 300])
def test_wgmma_kernels_take_256_token_tiles_where_they_make_half_a_wave(m, bits):
    """Above M = 128, where 256-token tiles make at least half a wave of CTAs, the wgmma
    kernels take them (sums in the tensor core; the last tile partial but at M = 256): int4
    with group scales of x's dtype and per channel, int8 per channel; fp32 group scales keep
    64-token tiles, which int8 groups are taken in only to M = 256. N is ragged past the
    last 128-row block."""
    wgmma, n, k, x, dtype = _wgmma_on_a_half_wave_weight(bits, m, 1024)
    if bits == 4:
        w_full = (torch.randn(n, k, generator=_gen(11)) * 0.05).to(dtype)
        bias = torch.randn(n, generator=_gen(3)).to(dtype).cuda()
        for group, scales_dtype in ((128, dtype), (64, torch.float16), (-1, torch.float32)):
            q = lowbit.int4_quantize(w_full.to(scales_dtype), group_size=group,
                                     symmetric=False)
            w = q.to("cuda").prepack()
            ref = x.double() @ q.dequantize(torch.float64).cuda().T
            args = (x, w.qweight, w.scales, w.zeros, w.group_size, None, None)
            assert wgmma.supports(*args) is None
            _check(wgmma.fn(*args), ref, dtype)
            if group == 128:
                # With a bias, and an odd N (out's rows not 16-byte aligned: the epilogue
                # stores thread by thread instead of through TMA).
                args = (x, w.qweight, w.scales, w.zeros, w.group_size, None, bias)
                _check(wgmma.fn(*args), ref + bias.double(), dtype)
                odd = lowbit.int4_quantize(w_full[:n - 3], group_size=group, symmetric=False)
                wo = odd.to("cuda").prepack()
                args = (x, wo.qweight, wo.scales, wo.zeros, wo.group_size, None, None)
                assert wgmma.supports(*args) is None
                _check(wgmma.fn(*args), x.double() @ odd.dequantize(torch.float64).cuda().T,
                       dtype)
        return
    bias = torch.randn(n, generator=_gen(3)).to(dtype).cuda()
    q, s = _int8_weight(n, k, 0)
    args = (x, q, s, bias)
    assert wgmma.supports(*args) is None
    _check(wgmma.fn(*args), _int8_ref(x, q, s, bias), dtype)
    q, s = _int8_weight(n, k, 128)
    why = wgmma.supports(x, q, s, bias)
    if m > 256:
        assert why is not None and "group scales up to M = 256" in why
    else:
        assert why is None
        _check(wgmma.fn(x, q, s, bias), _int8_ref(x, q, s, bias), dtype)


@gpu
@pytest.mark.parametrize("name", ["sm90_w4a16_gemm_wgmma", "cuda_w4a16_gemm_wide"])
@pytest.mark.parametrize("m", [1, 40, 64, 100])
def test_w4a16_kernel_k_ends_mid_chunk(m, name):
    """The wgmma and wide kernels, one scale per row and K = 4128 (per-channel int4 needs K a
    multiple of 32): the last 64-K chunk is half inside K (the activations zero-filled past
    K: TMA's fill for wgmma, cp.async's for wide; the prepacked layout's zero nibbles for
    w); for the wide kernel that chunk is its last stage's only one."""
    from lowbit._backend import kernels

    if name.startswith("sm90") and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("an sm_90a kernel")
    kernel, = (kk for kk in kernels("w4a16_gemm") if kk.name == name)
    _, wd = _int4(3000, 4128, -1, False)
    w = _prepacked(3000, 4128, -1, False)
    x = _x(m, 4128, torch.float16, seed=m)
    args = (x, w.qweight, w.scales, w.zeros, w.group_size, None, None)
    assert kernel.supports(*args) is None
    _check(kernel.fn(*args), x.double() @ wd.T, torch.float16)


@gpu
def test_wgmma_kernels_take_overlapping_x_rows():
    """One row expanded (row stride 0): the wgmma kernels read x through a TMA map, which
    takes no row stride below K, so the launcher copies such an x; an int8 weight whose
    rows overlap is declined with the reason."""
    from lowbit._backend import kernels

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("an sm_90a kernel")
    w4, = (kk for kk in kernels("w4a16_gemm") if kk.name == "sm90_w4a16_gemm_wgmma")
    w8, = (kk for kk in kernels("w8a16_gemm") if kk.name == "sm90_w8a16_gemm_wgmma")
    _, wd = _int4(256, 512, 128, True)
    w = _prepacked(256, 512, 128, True)
    x = _x(1, 512, torch.bfloat16, seed=4).expand(40, 512)
    args = (x, w.qweight, w.scales, w.zeros, w.group_size, None, None)
    assert w4.supports(*args) is None
    _check(w4.fn(*args), x.double() @ wd.T, torch.bfloat16)
    q8 = torch.randint(-127, 128, (1, 512), generator=_gen(6), dtype=torch.int8).cuda()
    why = w8.supports(x, q8.expand(256, 512), torch.ones(256, 1, device="cuda"), None)
    assert why is not None and "rows overlap" in why


@gpu
def test_w4a16_wgmma_kernel_declines_groups_of_32():
    from lowbit._backend import kernels

    wgmma, = (kk for kk in kernels("w4a16_gemm") if kk.name == "sm90_w4a16_gemm_wgmma")
    w = _prepacked(256, 256, 32, True)
    x = _x(40, 256, torch.bfloat16)
    why = wgmma.supports(x, w.qweight, w.scales, w.zeros, 32, None, None)
    assert why is not None and ("groups of 64" in why or "built for [(9, 0)]" in why)


@gpu
def test_wide_kernels_decline_groups_of_32_and_m_past_128():
    from lowbit._backend import kernels

    wide4, = (kk for kk in kernels("w4a16_gemm") if kk.name == "cuda_w4a16_gemm_wide")
    w = _prepacked(256, 256, 32, True)
    why = wide4.supports(_x(40, 256, torch.bfloat16), w.qweight, w.scales, w.zeros, 32, None,
                         None)
    assert why is not None and "groups of 64" in why
    w = _prepacked(256, 256, 128, True)
    why = wide4.supports(_x(129, 256, torch.bfloat16), w.qweight, w.scales, w.zeros, 128,
                         None, None)
    assert why is not None and "M = 129" in why
    if hasattr(lowbit, "w8a16_gemm"):
        wide8, = (kk for kk in kernels("w8a16_gemm") if kk.name == "cuda_w8a16_gemm_wide")
        q, s = _int8_weight(256, 256, 32)
        why = wide8.supports(_x(40, 256, torch.bfloat16), q, s, None)
        assert why is not None and "groups of 64" in why


@gpu
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zeros"])
@pytest.mark.parametrize("m", [1, 9, 16, 17, 64])
def test_w4a16_k_ends_mid_chunk(m, symmetric):
    """K = 4256 with groups of 32: the last 64-wide chunk is half past K (its second group
    does not exist), in the decode kernel's stages and in the dequantizer."""
    n, k = 3000, 4256
    _, wd = _int4(n, k, 32, symmetric)
    w = _prepacked(n, k, 32, symmetric)
    x = _x(m, k, torch.bfloat16, seed=m)
    _check(lowbit.w4a16_gemm(x, w, backend="cuda"), x.double() @ wd.T, torch.bfloat16)


@gpu
@pytest.mark.parametrize("m", [1, 9, 16, 17, 64])
def test_w8a16_k_ends_mid_chunk(m):
    """K = 4240 (a multiple of 16, not of 64), per-channel scales: the last chunk's 16-byte
    pieces past K are zero-filled, on both kernels."""
    q, s = _int8_weight(3000, 4240, 0)
    x = _x(m, 4240, torch.float16, seed=m)
    _check(_launch_w8(_portable_kernel(8, m), x, q, s, None), _int8_ref(x, q, s, None),
           torch.float16)


@gpu
def test_w4a16_dequant_bias_in_fp32(monkeypatch):
    """The dequantize-then-GEMM path adds an fp32 bias after the product (cuBLAS takes a
    bias in x's dtype only). LOWBIT_ARCH=89: the portable order, which dequantizes here."""
    monkeypatch.setenv("LOWBIT_ARCH", "89")
    _, wd = _int4(3000, 4224, 128, False)
    w = _prepacked(3000, 4224, 128, False)
    x = _x(80, 4224, torch.bfloat16, seed=6)
    bias = torch.randn(3000, generator=_gen(7)).cuda()
    choice = lowbit.explain(lowbit.w4a16_gemm, x, w, bias, backend="cuda")
    assert choice.kernel == "cuda_w4a16_gemm_dequant", str(choice)
    _check(lowbit.w4a16_gemm(x, w, bias, backend="cuda"), x.double() @ wd.T + bias.double(),
           torch.bfloat16)


@gpu
@pytest.mark.parametrize("m", [1, 17])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_w4a16_act_order(m, dtype):
    """GPTQ act order: the kernel reads x[:, perm] (gathered once per call)."""
    n, k, group = 3000, 4224, 128
    q, wd = _int4(n, k, group, False)
    perm = torch.randperm(k, generator=_gen(9))
    w = Int4Weight(q.qweight, q.scales, q.zeros, group, perm).to("cuda")
    x = _x(m, k, dtype, seed=5)
    out = lowbit.w4a16_gemm(x, w.prepack(), backend="cuda")
    ref = x.double()[:, perm.cuda()] @ wd.T
    _check(out, ref, dtype)
    # The same through the weight's own dequantize (K in checkpoint order).
    _check(out, x.double() @ w.dequantize(torch.float64).T, dtype)


@gpu
@pytest.mark.parametrize("m", [1, 5, 40, 100])
def test_w4a16_deterministic(m):
    """Split-K partials are added in a fixed order: repeated calls agree bit for bit."""
    w = _prepacked(3000, 4224, 64, False)
    x = _x(m, 4224, torch.bfloat16, seed=2)
    first = lowbit.w4a16_gemm(x, w, backend="cuda")
    for _ in range(5):
        assert torch.equal(lowbit.w4a16_gemm(x, w, backend="cuda"), first)


@gpu
def test_w4a16_strided_x_and_scale_dtypes():
    q, wd = _int4(3000, 4224, 128, True)
    big = _x(7, 4300, torch.float16, seed=4)
    x = big[:, 3:3 + 4224]  # rows not 16-byte aligned: the launcher copies them
    for sdtype in (torch.float32, torch.bfloat16, torch.float16):
        w = Int4Weight(q.qweight, q.scales.to(sdtype), None, 128).to("cuda").prepack()
        ref = x.double() @ w.dequantize(torch.float64).T
        _check(lowbit.w4a16_gemm(x, w, backend="cuda"), ref, torch.float16)


@gpu
def test_w4a16_canonical_weight_is_refused():
    q, _ = _int4(3000, 128, 32, True)
    x = _x(1, 128, torch.bfloat16)
    with pytest.raises(NotImplementedError, match="prepack"):
        lowbit.w4a16_gemm(x, q.to("cuda"), backend="cuda")


@gpu
def test_w4a16_bad_inputs():
    w = _prepacked(3000, 4224, 128, False)
    x = _x(2, 4224, torch.bfloat16)
    with pytest.raises(ValueError, match="scales"):
        lowbit.w4a16_gemm(x, Int4Weight(w.qweight, w.scales[:, :-1], w.zeros, 128),
                          backend="cuda")
    with pytest.raises(ValueError, match="zeros"):
        lowbit.w4a16_gemm(x, Int4Weight(w.qweight, w.scales, w.zeros[:-1], 128),
                          backend="cuda")
    with pytest.raises(ValueError, match="qweight"):
        lowbit.w4a16_gemm(x[:, :4160], w, backend="cuda")  # K of x does not fit the tiles
    with pytest.raises(ValueError, match="qweight"):
        lowbit.w4a16_gemm(x, Int4Weight(w.qweight.cpu(), w.scales, w.zeros, 128),
                          backend="cuda")
    with pytest.raises(NotImplementedError, match="activations"):
        lowbit.w4a16_gemm(x.float(), w, backend="cuda")


# -- W8A16 -------------------------------------------------------------------------------

def _int8_weight(n, k, group):
    """int8 [N, K] and fp32 scales [N, 1] (group 0) or [N, K / group], on the GPU."""
    q = torch.randint(-128, 128, (n, k), generator=_gen(n + k), dtype=torch.int8)
    cols = 1 if group == 0 else k // group
    s = torch.rand(n, cols, generator=_gen(group + 1)) * 1e-3 + 1e-4
    return q.cuda(), s.cuda()


def _int8_ref(x, q, s, bias):
    rep = q.shape[1] // s.shape[1]
    w = q.double() * s.double().repeat_interleave(rep, dim=1)
    out = x.double() @ w.T
    return out if bias is None else out + bias.double()


def _plan_w8(name, x, q, s, bias):
    """W8A16 kernel ``name``'s launch object (its plan) for contiguous operands."""
    from lowbit.backends.cuda import kernel_id
    from lowbit.backends.cuda.wxa16_gemm import wxa16_gemm_launch

    m, k = x.shape
    group = 0 if s.shape[1] == 1 else k // s.shape[1]
    return wxa16_gemm_launch(kernel_id(name), 8, m, q.shape[0], k, group, k, x.dtype, k,
                             s.dtype, s.shape[1], False, 0, None if bias is None else bias.dtype)


def _launch_w8(name, x, q, s, bias, counters=None):
    """Launches W8A16 kernel ``name`` directly (contiguous operands); ``counters``: the
    split counters to use (fresh zeros when None)."""
    m, n = x.shape[0], q.shape[0]
    launch = _plan_w8(name, x, q, s, bias)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if counters is None:
        counters = torch.zeros(max(launch.counter_bytes, 16), dtype=torch.uint8, device=x.device)
    partials = torch.empty(max(launch.partial_bytes, 16), dtype=torch.uint8, device=x.device)
    launch.launch(x.data_ptr(), q.data_ptr(), s.data_ptr(), 0,
                  0 if bias is None else bias.data_ptr(), counters.data_ptr(),
                  partials.data_ptr(), out.data_ptr(), torch.cuda.current_stream().cuda_stream)
    return out


def _launch_w8_thrice(name, x, q, s, bias, counter_bytes):
    """Three launches of W8A16 kernel ``name`` on one set of split counters (zeroed once, as
    the launchers keep them): each must leave them zero, and the sums must be bit-identical.
    Returns the first output."""
    counters = torch.zeros(counter_bytes, dtype=torch.uint8, device="cuda")
    outs = [_launch_w8(name, x, q, s, bias, counters) for _ in range(3)]
    torch.cuda.synchronize()
    assert int(counters.count_nonzero()) == 0
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    return outs[0]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group", [0] + GROUPS, ids=["channel", "g32", "g64", "g128"])
@pytest.mark.parametrize("n,k", NKS)
@pytest.mark.parametrize("m", [1, 3, 16, 17, 64, 100, 256])
def test_w8a16_kernels(m, n, k, group, dtype):
    q, s = _int8_weight(n, k, group)
    x = _x(m, k, dtype, seed=m)
    bias = torch.randn(n, generator=_gen(4)).to(dtype).cuda() if m % 2 else None
    # Above the decode range the fused kernel here is the tiled one (the dequantizer's launch
    # writes a weight, not the product: test_w8a16_dequant).
    out = _launch_w8("cuda_w8a16_gemm_decode" if m <= 64 else "cuda_w8a16_gemm_tiled",
                     x, q, s, bias)
    torch.cuda.synchronize()
    _check(out, _int8_ref(x, q, s, bias), dtype)


def _one_hot_runs(op, forms, k, dtype):
    """For each GPU kernel of ``op`` that runs here, its outputs for one-hot rows of x (row
    r has its 1 at column first + r) covering every column of K, as (kernel name, first
    column, output). ``forms(x)``: the op's arguments for x, one tuple per form of the weight
    (a kernel runs the first its ``supports`` accepts). A kernel takes the largest row count
    of 256, 64 and 16 that it supports."""
    from lowbit._backend import kernels

    eye = torch.eye(k, dtype=dtype, device="cuda")

    def args_for(kernel, x):
        return next((a for a in forms(x)
                     if kernel.supports is None or kernel.supports(*a) is None), None)

    for kernel in kernels(op):
        if kernel.backend not in ("cuda", "triton"):
            continue
        rows = next((r for r in (256, 64, 16) if args_for(kernel, eye[:r]) is not None), None)
        if rows is None:
            continue
        for first in range(0, k, rows):
            x = eye[first:first + rows]
            yield kernel.name, first, kernel.fn(*args_for(kernel, x))


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group", [0, 32, 128], ids=["channel", "g32", "g128"])
def test_w8a16_kernels_dequantize_every_code_exactly(group, dtype):
    """Every W8A16 GPU kernel's dequantization, bit for bit: the rows of x are one-hot, so
    each output is one weight times its scale (fp32, rounded once to x's dtype: the one
    nonzero product is exact in the tensor core and the other terms add zeros), for all 256
    int8 codes in every column."""
    n, k = 256, 256
    codes = (torch.arange(n)[:, None] + torch.arange(k)[None, :]) % 256 - 128
    q = codes.to(torch.int8).cuda()
    s = (torch.rand(n, 1 if group == 0 else k // group, generator=_gen(7)) + 0.5).cuda()
    want = (q.float() * s.repeat_interleave(k // s.shape[1], dim=1)).to(dtype)  # [n, k]
    ran = set()
    for name, first, out in _one_hot_runs("w8a16_gemm", lambda x: [(x, q, s, None)], k, dtype):
        ran.add(name)
        assert torch.equal(out, want[:, first:first + out.shape[0]].T), (name, first)
    assert {"cuda_w8a16_gemm_decode", "cuda_w8a16_gemm_tiled", "triton_w8a16_gemm"} <= ran


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zeros"])
@pytest.mark.parametrize("group", [32, 128, -1], ids=["g32", "g128", "channel"])
def test_w4a16_kernels_dequantize_every_code_exactly(group, symmetric, dtype):
    """The same for W4A16: every nibble under every zero point (asymmetric), one-hot rows,
    each output (u - z) * scale rounded once, bit for bit, on every GPU kernel in the layout
    it takes (the first of canonical and prepacked that its supports accept)."""
    n, k = 256, 256
    g = k if group == -1 else group
    u = (torch.arange(n)[:, None] + torch.arange(k)[None, :]) % 16
    canonical = (u[:, 0::2] | (u[:, 1::2] << 4)).to(torch.uint8)
    zeros = None if symmetric else (
        (torch.arange(n)[:, None] * 3 + torch.arange(k // g)[None, :]) % 16).to(torch.uint8)
    scales = torch.rand(n, k // g, generator=_gen(9)) + 0.5
    w = Int4Weight(canonical, scales, zeros, g).to("cuda")
    want = w.dequantize(torch.float32).to(dtype)  # [n, k]
    layouts = (w, w.prepack())

    def forms(x):
        return [(x, lw.qweight, lw.scales, lw.zeros, lw.group_size, None, None)
                for lw in layouts]

    ran = set()
    for name, first, out in _one_hot_runs("w4a16_gemm", forms, k, dtype):
        ran.add(name)
        assert torch.equal(out, want[:, first:first + out.shape[0]].T), (name, first)
    assert {"cuda_w4a16_gemm_decode", "cuda_w4a16_gemm_tiled", "triton_w4a16_gemm"} <= ran


@gpu
@pytest.mark.parametrize("name,m", [("cuda_w8a16_gemm_decode", 1),
                                    ("cuda_w8a16_gemm_decode", 16),
                                    ("cuda_w8a16_gemm_decode", 40),
                                    ("cuda_w8a16_gemm_wide", 100),
                                    ("cuda_w8a16_gemm_tiled", 64)])
def test_split_launches_leave_their_counters_zero(name, m):
    """The launchers zero their split counters once and reuse them (no memset per call):
    each launch must leave them zero, and repeated launches give bit-identical sums."""
    q, s = _int8_weight(8, 4224, 128)  # one output tile: K is split over many CTAs
    x = _x(m, 4224, torch.bfloat16)
    launch = _plan_w8(name, x, q, s, None)
    assert launch.splits > 1 and launch.counter_bytes > 0
    out = _launch_w8_thrice(name, x, q, s, None, launch.counter_bytes)
    _check(out, _int8_ref(x, q, s, None), torch.bfloat16)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group", [0, 64, 128], ids=["channel", "g64", "g128"])
@pytest.mark.parametrize("n,k", NKS + [(4096, 4096), (3000, 4160), (3000, 4128)])
@pytest.mark.parametrize("m", [1, 3, 17, 64, 100, 128])
def test_w8a16_wide_kernel(m, n, k, group, dtype):
    """The W8A16 wide kernel launched directly (128-K stages: at G = 128 a stage spans one
    group, so half the threads gather no scales; K = 4160 ends one chunk into a stage, 4128
    (per channel) half a chunk into it)."""
    if group and k % group:
        pytest.skip("K is not a multiple of the group")
    q, s = _int8_weight(n, k, group)
    x = _x(m, k, dtype, seed=m)
    bias = torch.randn(n, generator=_gen(4)).to(dtype).cuda() if m % 2 else None
    out = _launch_w8("cuda_w8a16_gemm_wide", x, q, s, bias)
    torch.cuda.synchronize()
    _check(out, _int8_ref(x, q, s, bias), dtype)


@gpu
def test_w8a16_tiled_takes_small_m():
    q, s = _int8_weight(3000, 4224, 128)
    x = _x(5, 4224, torch.float16)
    _check(_launch_w8("cuda_w8a16_gemm_tiled", x, q, s, None), _int8_ref(x, q, s, None),
           torch.float16)


needs_op = pytest.mark.skipif(not hasattr(lowbit, "w8a16_gemm"),
                              reason="this build defines no w8a16_gemm op")


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group", [0] + GROUPS, ids=["channel", "g32", "g64", "g128"])
@pytest.mark.parametrize("n,k", [(8, 128), (3000, 4224), (5, 4112)])
def test_w8a16_dequantized_weight_is_exact(n, k, group, dtype):
    """The large-M path's first half: q * scale in fp32, rounded once to x's dtype, which is
    what torch computes elementwise; bit for bit (K = 4112: per channel and G = 16 divide it
    only, so groups that do not divide K are left out)."""
    from lowbit.backends.cuda import kernel_id
    from lowbit.backends.cuda.wxa16_gemm import wxa16_gemm_launch

    if group and k % group:
        pytest.skip("K is not a multiple of the group")
    q, s = _int8_weight(n, k, group)
    launch = wxa16_gemm_launch(kernel_id("cuda_w8a16_gemm_dequant"), 8, 100, n, k, group, k,
                               dtype, k, s.dtype, s.shape[1], False, 0, None, k)
    w = torch.full((n, k), float("nan"), dtype=dtype, device="cuda")
    launch.launch(0, q.data_ptr(), s.data_ptr(), 0, 0, 0, 0, w.data_ptr(),
                  torch.cuda.current_stream().cuda_stream)
    want = (q.float() * s.repeat_interleave(k // s.shape[1], dim=1)).to(dtype)
    assert torch.equal(w, want)


@gpu
@needs_op
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group", [0, 32, 128], ids=["channel", "g32", "g128"])
@pytest.mark.parametrize("m", [65, 100, 256])
@pytest.mark.parametrize("bias_dtype", [None, "x", torch.float32], ids=["nobias", "xbias", "f32bias"])
def test_w8a16_dequant(monkeypatch, m, group, dtype, bias_dtype):
    """backend="cuda" above M = 64 in the portable order (LOWBIT_ARCH=89): dequantize, then
    cuBLAS (a bias of x's dtype through cuBLAS, an fp32 one after the product)."""
    monkeypatch.setenv("LOWBIT_ARCH", "89")
    q, s = _int8_weight(3000, 4224, group)
    x = _x(m, 4224, dtype, seed=m)
    bias = (None if bias_dtype is None else
            torch.randn(3000, generator=_gen(5)).to(dtype if bias_dtype == "x" else bias_dtype)
            .cuda())
    choice = lowbit.explain(lowbit.w8a16_gemm, x, q, s, bias, backend="cuda")
    assert choice.kernel == "cuda_w8a16_gemm_dequant", str(choice)
    _check(lowbit.w8a16_gemm(x, q, s, bias, backend="cuda"), _int8_ref(x, q, s, bias), dtype)


@gpu
@needs_op
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group", [0, 32, 128], ids=["channel", "g32", "g128"])
@pytest.mark.parametrize("m", [0, 1, 17])
def test_w8a16_op(m, group, dtype):
    """The op at M <= 17 on N = 3000: decode in either order (heuristics.TABLE's and the
    portable one)."""
    q, s = _int8_weight(3000, 4224, group)
    x = _x(m, 4224, dtype)
    choice = lowbit.explain(lowbit.w8a16_gemm, x, q, s, None, backend="cuda")
    assert choice.kernel == _portable_kernel(8, m), str(choice)
    _check(lowbit.w8a16_gemm(x, q, s, None, backend="cuda"), _int8_ref(x, q, s, None), dtype)


@gpu
@needs_op
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group", [0, 64, 128], ids=["channel", "g64", "g128"])
@pytest.mark.parametrize("n,k", [(8, 128), (3000, 4224), (4096, 4096), (3000, 4240)])
@pytest.mark.parametrize("m", [1, 17, 33, 64, 100, 256])
def test_w8a16_wgmma_kernel(m, n, k, group, dtype):
    """The sm_90a W8A16 wgmma kernel called directly, each token tile (32, 64, and 128 per
    channel at M = 256) and each way of summing (K = 4240: per channel only, the last chunk a
    quarter inside K)."""
    from lowbit._backend import kernels

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("an sm_90a kernel")
    if group and k % group:
        pytest.skip("K is not a multiple of the group")
    wgmma, = (kk for kk in kernels("w8a16_gemm") if kk.name == "sm90_w8a16_gemm_wgmma")
    q, s = _int8_weight(n, k, group)
    x = _x(m, k, dtype, seed=m)
    bias = torch.randn(n, generator=_gen(3)).to(dtype).cuda() if m % 2 else None
    args = (x, q, s, bias)
    assert wgmma.supports(*args) is None
    _check(wgmma.fn(*args), _int8_ref(x, q, s, bias), dtype)
    run = wgmma.prepare(*args)
    for _ in range(2):
        _check(run(*args), _int8_ref(x, q, s, bias), dtype)


def test_split_scratch_is_kept_per_stream_and_never_made_in_a_capture():
    """The split counters and partials of both backends' decode kernels
    (lowbit.triton_kernels.scratch): outside a graph capture one pair per (device, stream,
    dtypes), reused while big enough and each regrown on its own (counters zeroed); a launch
    being captured gets a fresh zeroed pair that is never kept, so no graph shares counters
    with eager launches or another graph. Runs anywhere: the buffers' device is a
    parameter."""
    from lowbit.triton_kernels import scratch

    cpu = torch.device("cpu")
    saved = dict(scratch._KEPT)
    scratch._KEPT.clear()
    try:
        c, p = scratch.split_scratch(cpu, 7, 64, 1024, False)
        assert c.numel() >= 64 and p.numel() >= 1024 and int(c.count_nonzero()) == 0
        assert c.dtype == p.dtype == torch.uint8  # (the CUDA backend's: bytes)
        c2, p2 = scratch.split_scratch(cpu, 7, 32, 512, False)
        assert c2 is c and p2 is p  # big enough: the same buffers
        c3, p3 = scratch.split_scratch(cpu, 8, 64, 1024, False)  # another stream: its own
        assert c3 is not c and p3 is not p
        typed = scratch.split_scratch(cpu, 7, 64, 1024, False, (torch.int32, torch.float32))
        assert typed[0] is not c and (typed[0].dtype, typed[1].dtype) == (torch.int32,
                                                                         torch.float32)
        c4, p4 = scratch.split_scratch(cpu, 7, 64, 4096, False)  # partials regrow, counters stay
        assert c4 is c and p4.numel() >= 4096
        c.fill_(1)  # (a launch in flight would leave them zero; this checks the regrow)
        c5, _ = scratch.split_scratch(cpu, 7, 4096, 16, False)
        assert c5 is not c and int(c5.count_nonzero()) == 0
        g1, gp1 = scratch.split_scratch(cpu, 7, 64, 1024, True)
        g2, _ = scratch.split_scratch(cpu, 7, 64, 1024, True)
        assert g1 is not g2 and g1 is not c5 and int(g1.count_nonzero()) == 0
        assert scratch._KEPT[(cpu, 7, (torch.uint8, torch.uint8))][0] is c5  # capture: untouched
        assert len(scratch.kept()) == 3
    finally:
        scratch._KEPT.clear()
        scratch._KEPT.update(saved)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group", [0] + GROUPS, ids=["channel", "g32", "g64", "g128"])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (1, 3000, 4224), (2, 8000, 4224),
                                   (2, 14000, 4224), (2, 5000, 4224), (3, 9000, 4224),
                                   (1, 4096, 14336), (4, 4096, 4096), (5, 3000, 4224)])
def test_decode_k_parts(m, n, k, bits, group, dtype):
    """At M <= 2 the decode kernel's CTA may split K among its own warps (K parts: 8 / P row
    tiles x P interleaved stage sequences, summed in shared memory) instead of over CTAs:
    the most of P = 8 (M = 1), 4 and 2 whose 128 / P-row CTAs fill the SMs 1.5-2 deep in one
    wave. Against float64 at every group size, with zero points (int4) and a bias at odd M;
    K = 4224 ends inside a stage and leaves some parts a stage short; N = 3000, 5000, 8000,
    9000 and 14000 end inside a tile; 1 x 3000 and 2 x 5000 (too few CTAs), M = 3 to 5 take
    none. A prepared launch repeats the bits."""
    from lowbit._backend import kernels
    from lowbit.backends.cuda import kernel_id
    from lowbit.backends.cuda.wxa16_gemm import wxa16_gemm_launch

    if group and k % group:
        pytest.skip("K is not a multiple of the group")
    if bits == 4 and group == 0:
        pytest.skip("int4 per channel is group 128's kernel")
    x = _x(m, k, dtype, seed=m + n)
    bias = torch.randn(n, generator=_gen(7)).to(dtype).cuda() if m % 2 else None
    op = f"w{bits}a16_gemm"
    kernel, = (kk for kk in kernels(op) if kk.name == f"cuda_{op}_decode")
    if bits == 4:
        _, wd = _int4(n, k, group, False)
        w = _prepacked(n, k, group, False)
        args = (x, w.qweight, w.scales, w.zeros, w.group_size, None, bias)
        ref = x.double() @ wd.T
        ref = ref if bias is None else ref + bias.double()
        launch = wxa16_gemm_launch(kernel_id(kernel.name), 4, m, n, k, group, k, dtype, 0,
                                   w.scales.dtype, w.scales.stride(0), True, w.zeros.stride(0),
                                   None if bias is None else bias.dtype)
    else:
        q, s = _int8_weight(n, k, group)
        args = (x, q, s, bias)
        ref = _int8_ref(x, q, s, bias)
        launch = _plan_w8(kernel.name, x, q, s, bias)
    # The plan's rule: at M <= 2 the most parts P (8, 4, 2) with M <= 8 / P, at least P
    # stages of K (512 K int4, 256 K int8) and one wave of 128 / P-row CTAs (two per SM),
    # at least 1.5 CTAs per SM.
    stages = -(-k // (512 if bits == 4 else 256))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    want = next((P for P in (8, 4, 2) if m <= 2 and m <= 8 // P and stages >= P
                 and 3 * sms <= 2 * -(-n // (128 // P)) <= 4 * sms), 1)
    if sms == 132:  # H100 / H200: every form is taken at these shapes
        assert want == {(1, 4096): 8, (2, 8000): 4, (2, 14000): 2}.get((m, n), 1)
    assert launch.parts == want, (launch.parts, want)
    if want > 1:
        assert launch.splits == 1 and launch.counter_bytes == 0
    out = kernel.fn(*args)
    _check(out, ref, dtype)
    run = kernel.prepare(*args)
    for _ in range(2):
        assert torch.equal(run(*args), out)


@gpu
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("bits", [4, 8])
def test_decode_chain_under_programmatic_launch(bits, m):
    """On sm_90 the decode kernel is a programmatic dependent launch: it may be placed while
    the kernel before it still runs (that one lets it start after its mainloop, beside its
    split's gather), and waits for it before any global access. A chain of decode GEMMs,
    each reading the one before's output (K split both ways), launched back to back, gives
    the bits of plain stream order."""
    from lowbit._backend import kernels
    from lowbit.backends.cuda.gemm import programmatic_launch, set_programmatic_launch

    op = f"w{bits}a16_gemm"
    kernel, = (kk for kk in kernels(op) if kk.name == f"cuda_{op}_decode")
    n = 4096
    if bits == 4:
        ws = [_prepacked(n, n, 128, True)]
        args = lambda x: (x, ws[0].qweight, ws[0].scales, ws[0].zeros, 128, None, None)  # noqa: E731
    else:
        q, s = _int8_weight(n, n, 0)
        args = lambda x: (x, q, s, None)  # noqa: E731
    x0 = _x(m, n, torch.bfloat16, seed=21)

    def chain():
        outs, x = [], x0
        for _ in range(6):  # decode after decode, nothing between (the output grows 2-4x a step)
            x = kernel.fn(*args(x))
            outs.append(x)
        return outs

    was = programmatic_launch()
    try:
        set_programmatic_launch(False)
        want = chain()
        set_programmatic_launch(True)
        got = [chain() for _ in range(3)]
    finally:
        set_programmatic_launch(was)
    torch.cuda.synchronize()
    assert all(torch.isfinite(o).all() for o in want)
    for outs in got:
        for a, b in zip(outs, want):
            assert torch.equal(a, b)


@gpu
def test_graphs_captured_at_different_m_replay_in_any_order():
    """Split decode launches inside CUDA graphs: two graphs captured on the same capture
    stream at different M (different splits and buffer sizes), replayed second-first and
    between eager calls, give the eager results bit for bit."""
    w = _prepacked(3000, 4224, 128, True)
    xs = [_x(1, 4224, torch.bfloat16, seed=11), _x(9, 4224, torch.bfloat16, seed=12)]
    eager = [lowbit.w4a16_gemm(x, w, backend="cuda") for x in xs]
    graphs, outs = [], []
    for x in xs:
        lowbit.w4a16_gemm(x, w, backend="cuda")  # warm: plan and remember outside capture
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            outs.append(lowbit.w4a16_gemm(x, w, backend="cuda"))
        graphs.append(g)
    for order in ((1, 0), (0, 1), (1, 1, 0)):
        for i in order:
            graphs[i].replay()
            lowbit.w4a16_gemm(xs[1 - i], w, backend="cuda")  # eager work between replays
        torch.cuda.synchronize()
        for i in (0, 1):
            assert torch.equal(outs[i], eager[i]), (order, i)


@gpu
@needs_op
@pytest.mark.parametrize("m", [1, 40, 100, 300])
def test_w8a16_k0_gives_the_bias(m):
    """K = 0 (scales [N, 0]): no kernel runs (it would read a scale past the empty tensor);
    the output is the bias rounded to x's dtype, on every backend."""
    q = torch.zeros(8, 0, dtype=torch.int8, device="cuda")
    s = torch.ones(8, 0, device="cuda")
    bias = torch.randn(8, generator=_gen(5)).cuda()
    x = torch.zeros(m, 0, dtype=torch.bfloat16, device="cuda")
    for backend in ("cuda", "triton"):
        got = lowbit.w8a16_gemm(x, q, s, bias, backend=backend)
        assert torch.equal(got, bias.to(torch.bfloat16).expand(m, 8)), backend
