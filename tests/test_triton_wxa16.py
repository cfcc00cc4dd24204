"""The Triton weight-only GEMMs (triton_kernels/wxa16_gemm.py: w4a16_gemm and w8a16_gemm, one
kernel templated on the weight's bit width) against a float64 product of the same quantized
weights, dequantized here independently of lowbit. The SPEC's tolerance: relative Frobenius
error <= 1e-2 for bf16 / fp16 outputs, 2e-3 for fp32.

Without a GPU the kernels run under TRITON_INTERPRET=1 at small sizes (K = 128 and 256;
N = 3000 only with M <= 3); with one, the same cases run on it, plus K = 4224 and the
benchmark shapes (marked ``gpu``). w8a16 runs through the reference backend for every case
as well.
"""
import re

import pytest
import torch

from lowbit_testing import (GEMM_TOL, GPU_TARGETS, compile_checks_in_fresh_process,
                            compile_kernel, rel_frobenius, with_layout)

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"

triton = pytest.importorskip("triton", reason="triton is not installed")
import lowbit  # noqa: E402
from lowbit._backend import kernels  # noqa: E402
from lowbit.triton_kernels import heuristics, scratch, wxa16_gemm  # noqa: E402

pytestmark = [pytest.mark.usefixtures("triton_interpreter")]
HALF = (torch.bfloat16, torch.float16)
half = pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
MS = (0, 1, 3, 17, 100)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------- expectations, independently
def int4_dense(iw) -> torch.Tensor:
    """An Int4Weight's [N, K] float64 weight from its fields: nibble k = 2j is byte j's low
    four bits, k = 2j + 1 its high four; value (u - z) * scale, z = 8 without zeros."""
    q = iw.qweight.to(torch.int64)
    u = torch.stack([q & 15, q >> 4], dim=2).reshape(q.shape[0], -1).double()
    g = iw.group_size
    z = 8.0 if iw.zeros is None else iw.zeros.double().repeat_interleave(g, dim=1)
    return (u - z) * iw.scales.double().repeat_interleave(g, dim=1)


def int8_dense(q, s) -> torch.Tensor:
    k = q.shape[1]
    return q.double() * s.double().repeat_interleave(k // s.shape[1], dim=1)


def expected(x, dense, bias=None, perm=None) -> torch.Tensor:
    """x[:, perm] @ dense.T + bias in float64 on the operands' device, returned on the CPU."""
    xd = x.double()
    if perm is not None:
        xd = xd[:, perm]
    out = xd @ dense.T
    return (out if bias is None else out + bias.double()[None]).cpu()


def check(got, want, dtype, what=""):
    assert got.dtype == dtype and tuple(got.shape) == tuple(want.shape), what
    err = rel_frobenius(got.cpu().double().numpy(), want.numpy())
    assert err <= GEMM_TOL[dtype], f"{what}: relative Frobenius error {err:.3g}"


# --------------------------------------------------------------------------- operands
def int4_weight(n, k, group_size, symmetric, wdtype, perm=False, seed=0):
    w = torch.randn(n, k, generator=gen(seed)).to(wdtype)
    iw = lowbit.int4_quantize(w, group_size=group_size, symmetric=symmetric)
    if perm:
        iw = lowbit.Int4Weight(iw.qweight, iw.scales, iw.zeros, iw.group_size,
                               torch.randperm(k, generator=gen(seed + 1)))
    return iw.to(DEVICE)


def int8_weight(n, k, group_size, seed=0):
    """(q int8 [N, K], fp32 scale): per channel when group_size is 0, else per group."""
    w = torch.randn(n, k, generator=gen(seed))
    if group_size:
        q, s, _ = lowbit.quantize_int8(w, granularity="group", group_size=group_size)
    else:
        q, s, _ = lowbit.quantize_int8(w, granularity="channel")
    return q.to(DEVICE), s.to(DEVICE)


def activations(m, k, dtype, seed=10):
    return torch.randn(m, k, generator=gen(seed)).to(dtype).to(DEVICE)


def bias_of(n, dtype, seed=20):
    return torch.randn(n, generator=gen(seed)).to(dtype).to(DEVICE)


# ------------------------------------------------------------------------------- w4a16
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("group_size", [32, 64, 128, -1], ids=["g32", "g64", "g128", "channel"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
@pytest.mark.parametrize("perm", [False, True], ids=["", "actorder"])
@half
def test_w4a16(m, group_size, symmetric, perm, dtype):
    n, k = 8, 256
    iw = int4_weight(n, k, group_size, symmetric, dtype, perm)
    x = activations(m, k, dtype)
    bias = bias_of(n, dtype)
    dense = int4_dense(iw)
    for b in (None, bias):
        got = lowbit.w4a16_gemm(x, iw, b, backend="triton")
        check(got, expected(x, dense, b, iw.perm), dtype, f"bias={b is not None}")


@pytest.mark.parametrize("sdtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("xdtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["x_fp32", "x_bf16", "x_fp16"])
def test_w4a16_scale_and_activation_dtypes(sdtype, xdtype):
    """Scales of every storage dtype under activations of every dtype (fp32 x multiplies
    in IEEE fp32, held to fp32's tolerance); bias in another dtype than x."""
    iw = int4_weight(24, 128, 64, False, sdtype, seed=3)
    assert iw.scales.dtype == sdtype
    x = activations(5, 128, xdtype, seed=4)
    bias = bias_of(24, torch.float32 if xdtype != torch.float32 else torch.bfloat16)
    got = lowbit.w4a16_gemm(x, iw, bias, backend="triton")
    check(got, expected(x, int4_dense(iw), bias), xdtype)


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
def test_w4a16_wide_n(m, symmetric):
    """N = 3000: many N tiles, the last one ragged."""
    iw = int4_weight(3000, 128, 32, symmetric, torch.bfloat16, seed=5)
    x = activations(m, 128, torch.bfloat16, seed=6)
    bias = bias_of(3000, torch.bfloat16)
    got = lowbit.w4a16_gemm(x, iw, bias, backend="triton")
    check(got, expected(x, int4_dense(iw), bias), torch.bfloat16)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "offset", "row_strided"])
def test_w4a16_strided_x(layout):
    iw = int4_weight(8, 128, 32, False, torch.float16, seed=7)
    x = activations(17, 128, torch.float16, seed=8)
    got = lowbit.w4a16_gemm(with_layout(x, layout), iw, backend="triton")
    check(got, expected(x, int4_dense(iw)), torch.float16, layout)


def test_w4a16_nibble_order():
    """A hand-built weight: byte 0x1F holds k = 0 -> 15 and k = 1 -> 1 (values 7 and -7
    with z = 8); x picks each K column in turn, so every output is one weight value."""
    k = 32
    q = torch.full((16, k // 2), 0x88, dtype=torch.uint8)  # value 0 everywhere
    q[3, 0] = 0x1F
    iw = lowbit.Int4Weight(q, torch.ones(16, 1, dtype=torch.float16), None, 32).to(DEVICE)
    x = torch.eye(k, dtype=torch.float16, device=DEVICE)[:4]
    got = lowbit.w4a16_gemm(x, iw, backend="triton").cpu().float()
    assert got[0, 3] == 7.0 and got[1, 3] == -7.0
    got[0, 3] = got[1, 3] = 0
    assert not got.any()


# ------------------------------------------------------------------------------- w8a16
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("group_size", [0, 32, 64, 128],
                         ids=["channel", "group32", "group64", "group128"])
@half
def test_w8a16(m, group_size, dtype):
    n, k = 8, 256
    q, s = int8_weight(n, k, group_size)
    x = activations(m, k, dtype)
    bias = bias_of(n, dtype)
    dense = int8_dense(q, s)
    for b in (None, bias):
        want = expected(x, dense, b)
        for backend in ("triton", "reference"):
            got = lowbit.w8a16_gemm(x, q, s, b, backend=backend)
            check(got, want, dtype, f"{backend} bias={b is not None}")


@pytest.mark.parametrize("group_size", [0, 32], ids=["channel", "group32"])
def test_w8a16_wide_n_fp32_and_odd_k(group_size):
    """N = 3000 at M = 1; fp32 activations; per channel, K = 200 (no multiple of BLOCK_K)."""
    q, s = int8_weight(3000, 128, group_size, seed=9)
    x = activations(1, 128, torch.bfloat16, seed=11)
    check(lowbit.w8a16_gemm(x, q, s, backend="triton"), expected(x, int8_dense(q, s)),
          torch.bfloat16)
    x32 = activations(3, 128, torch.float32, seed=12)
    check(lowbit.w8a16_gemm(x32, q, s, backend="triton"), expected(x32, int8_dense(q, s)),
          torch.float32)
    if not group_size:
        q, s = int8_weight(40, 200, 0, seed=13)
        x = activations(3, 200, torch.float16)
        check(lowbit.w8a16_gemm(x, q, s, backend="triton"), expected(x, int8_dense(q, s)),
              torch.float16)


# ------------------------------- dequantize, then torch's GEMM (above the fused kernel's M)
@pytest.mark.parametrize("group_size", [32, 64, 128, -1], ids=["g32", "g64", "g128", "channel"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
@pytest.mark.parametrize("sdtype", [torch.float32, torch.bfloat16], ids=["s_fp32", "s_bf16"])
@half
def test_int4_dequantized_weight_is_exact(group_size, symmetric, sdtype, dtype):
    """The dequantizer's weight, bit for bit: (u - z) * s in fp32, rounded once to x's dtype
    (Int4Weight.dequantize's values, which the CUDA dequantizer also writes). K = 224 with
    per-channel scales ends mid-tile."""
    k = 224 if group_size == -1 else 256
    iw = int4_weight(40, k, group_size, symmetric, sdtype, seed=21)
    got = wxa16_gemm.w4a16_dequant_launcher(iw.qweight, iw.scales, iw.zeros, iw.group_size,
                                            k, dtype)(iw.qweight, iw.scales, iw.zeros)
    assert torch.equal(got.cpu(), iw.dequantize(torch.float32).to(dtype).cpu())


@pytest.mark.parametrize("group_size", [0, 32, 128], ids=["channel", "g32", "g128"])
@half
def test_int8_dequantized_weight_is_exact(group_size, dtype):
    q, s = int8_weight(40, 256, group_size, seed=22)
    got = wxa16_gemm.w8a16_dequant_launcher(q, s, dtype)(q, s, None)
    want = (q.float() * s.repeat_interleave(256 // s.shape[1], dim=1)).to(dtype)
    assert torch.equal(got.cpu(), want.cpu())


@pytest.mark.parametrize("m", [129, 140])
@pytest.mark.parametrize("group_size", [32, -1], ids=["g32", "channel"])
@pytest.mark.parametrize("perm", [False, True], ids=["", "actorder"])
@half
def test_w4a16_dequant_kernel(m, group_size, perm, dtype):
    """Above M = 128 the Triton backend dequantizes the weight and multiplies in x's dtype; a
    bias of another dtype is added in fp32. Act order gathers x's columns."""
    n, k = 24, 256
    iw = int4_weight(n, k, group_size, False, dtype, perm)
    x = activations(m, k, dtype)
    assert lowbit.explain(lowbit.w4a16_gemm, x, iw, backend="triton").kernel == \
        "triton_w4a16_gemm_dequant"
    for b in (None, bias_of(n, dtype), bias_of(n, torch.float32)):
        got = lowbit.w4a16_gemm(x, iw, b, backend="triton")
        check(got, expected(x, int4_dense(iw), b, iw.perm), dtype, f"bias={b is not None}")


@pytest.mark.parametrize("group_size", [0, 64], ids=["channel", "g64"])
@half
def test_w8a16_dequant_kernel(group_size, dtype):
    n, k = 24, 256
    q, s = int8_weight(n, k, group_size, seed=23)
    x = activations(257, k, dtype)  # int8's fused range ends at M = 256
    assert lowbit.explain(lowbit.w8a16_gemm, x, q, s, backend="triton").kernel == \
        "triton_w8a16_gemm_dequant"
    for b in (None, bias_of(n, dtype)):
        check(lowbit.w8a16_gemm(x, q, s, b, backend="triton"),
              expected(x, int8_dense(q, s), b), dtype)


def test_dequant_prepared_call_gathers_each_calls_perm():
    """A prepared function serves every later call of its signature, whose act-order perm
    (a value, not part of the signature) may differ: each call gathers x by its own."""
    iw = int4_weight(24, 256, 32, False, torch.float16, perm=True, seed=31)
    other = torch.randperm(256, generator=gen(32)).to(iw.perm.device)
    kernel = _kernel("w4a16_gemm", "triton_w4a16_gemm_dequant")
    x = activations(129, 256, torch.float16, seed=33)
    args = (x, iw.qweight, iw.scales, iw.zeros, iw.group_size, iw.perm, None)
    run = kernel.prepare(*args)
    check(run(*args), expected(x, int4_dense(iw), None, iw.perm), torch.float16, "first")
    args2 = args[:5] + (other, None)
    check(run(*args2), expected(x, int4_dense(iw), None, other), torch.float16, "second perm")


def test_w8a16_k0_gives_the_bias():
    """K = 0 (scales [N, 0] are accepted then): the product is empty, the output the bias."""
    q = torch.zeros(8, 0, dtype=torch.int8, device=DEVICE)
    s = torch.ones(8, 0, device=DEVICE)
    bias = bias_of(8, torch.float16)
    for m in (3, 129):
        x = torch.zeros(m, 0, dtype=torch.float16, device=DEVICE)
        for backend in ("triton", "reference"):
            got = lowbit.w8a16_gemm(x, q, s, bias, backend=backend)
            assert torch.equal(got.cpu(), bias.expand(m, 8).cpu()), backend


def test_dequant_kernels_decline_the_decode_range_and_fp32():
    iw = int4_weight(8, 128, 32, True, torch.bfloat16)
    k4 = _kernel("w4a16_gemm", "triton_w4a16_gemm_dequant")
    args = (iw.qweight, iw.scales, iw.zeros, 32, None, None)
    assert "below 129" in k4.supports(activations(128, 128, torch.bfloat16), *args)
    assert k4.supports(activations(129, 128, torch.bfloat16), *args) is None
    assert "float32" in k4.supports(activations(129, 128, torch.float32), *args)
    q, s = int8_weight(8, 128, 0)
    k8 = _kernel("w8a16_gemm", "triton_w8a16_gemm_dequant")
    assert "below 257" in k8.supports(activations(256, 128, torch.bfloat16), q, s, None)
    assert k8.supports(activations(257, 128, torch.bfloat16), q, s, None) is None
    # The fused kernel still serves every M when pinned, and fp32 activations above M = 16.
    x32 = activations(17, 128, torch.float32)
    assert lowbit.explain(lowbit.w4a16_gemm, x32, iw, backend="triton").kernel == \
        "triton_w4a16_gemm"
    fused = _kernel("w4a16_gemm", "triton_w4a16_gemm")
    x = activations(40, 128, torch.bfloat16)
    check(fused.fn(x, *args), expected(x, int4_dense(iw)), torch.bfloat16)


# ----------------------------------------------------------------------------- split-K
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("m", [1, 16])
def test_decode_split_k_is_deterministic_and_correct(bits, m):
    """Every split of K (1 to one K-step per split) meets the tolerance, and a split's
    result is the same bits on every run (the last program to arrive sums the partials in
    split order); every launch leaves the tile counters zero for the next."""
    k = 512
    x = activations(m, k, torch.bfloat16, seed=14)
    bias = bias_of(40, torch.bfloat16)
    if bits == 4:
        iw = int4_weight(40, k, 64, False, torch.bfloat16, seed=15)
        want = expected(x, int4_dense(iw), bias)

        def run(split):
            return wxa16_gemm.w4a16_gemm(x, iw.qweight, iw.scales, iw.zeros, 64, None, bias,
                                         split_k=split)
    else:
        q, s = int8_weight(40, k, 0, seed=15)
        want = expected(x, int8_dense(q, s), bias)

        def run(split):
            return wxa16_gemm.w8a16_gemm(x, q, s, bias, split_k=split)
    steps = k // heuristics.wxa16_gemm_config(m, 40, k, 64 if bits == 4 else 0).block_k
    for split in sorted({1, 2, 3, steps}):
        first = run(split)
        check(first, want, torch.bfloat16, f"split_k={split}")
        assert torch.equal(first.view(torch.int16), run(split).view(torch.int16)), split
        assert split == 1 or scratch.kept(), "no split took the kept scratch"
        for counters, _ in scratch.kept():
            assert not counters.any(), f"split_k={split}: counters left {counters.tolist()}"


def test_split_launches_of_two_signatures_share_the_stream_scratch():
    """Split launches of different signatures on one stream take the same counters and
    workspace (grown for the larger), one after the other: each result is what it is
    alone, and a stale counter would hand a tile's sum to the wrong program."""
    k = 256
    x1, x2 = activations(1, k, torch.bfloat16, seed=21), activations(9, k, torch.bfloat16,
                                                                        seed=22)
    q1, s1 = int8_weight(24, k, 0, seed=23)
    q2, s2 = int8_weight(72, k, 64, seed=24)
    alone = [wxa16_gemm.w8a16_gemm(x1, q1, s1, None, split_k=4),
             wxa16_gemm.w8a16_gemm(x2, q2, s2, None, split_k=2)]
    for _ in range(2):
        a = wxa16_gemm.w8a16_gemm(x1, q1, s1, None, split_k=4)
        b = wxa16_gemm.w8a16_gemm(x2, q2, s2, None, split_k=2)
        assert torch.equal(a.view(torch.int16), alone[0].view(torch.int16))
        assert torch.equal(b.view(torch.int16), alone[1].view(torch.int16))
    check(alone[0], expected(x1, int8_dense(q1, s1)), torch.bfloat16)
    check(alone[1], expected(x2, int8_dense(q2, s2)), torch.bfloat16)
    assert scratch.kept(), "no split took the kept scratch"
    for counters, _ in scratch.kept():
        assert not counters.any()


def test_split_k_heuristic():
    # One tile on 132 SMs: as many splits as K-steps allow, up to two programs per SM.
    assert heuristics.wxa16_split_k(1, 32, 132) == 32
    assert heuristics.wxa16_split_k(1, 1000, 132) == 264
    assert heuristics.wxa16_split_k(64, 32, 132) == 5
    # Enough tiles already: no split.
    assert heuristics.wxa16_split_k(300, 32, 132) == 1
    assert heuristics.wxa16_split_k(1, 0, 132) == 1


def test_table_fits_and_respects_groups():
    for m in (1, 16, 17, 64, 100, 256, 4096):
        for g in (0, 32, 64, 128):
            cfg = heuristics.wxa16_gemm_config(m, 8192, 8192, g)
            assert cfg.block_m >= 16 and cfg.block_n >= 16 and cfg.block_k >= 32
            if g:
                assert g % cfg.block_k == 0, (m, g, cfg)
            for bits in (4, 8):  # shrunk to the 99 KB of an sm_86 / sm_89 card
                fit = heuristics.wxa16_fit_smem(cfg, bits, 2, 99 * 1024)
                assert heuristics.wxa16_smem_bytes(fit, bits) <= 96 * 1024, fit
                assert fit.block_k == cfg.block_k, (fit, cfg)  # stages go first


@pytest.mark.parametrize("smem,sms", [(64 * 1024, 304), (99 * 1024, 84)], ids=["mi300", "sm86"])
@pytest.mark.parametrize("x_bytes", [2, 4])
def test_small_shared_memory_shortens_k_steps_before_narrowing_tiles(smem, sms, x_bytes):
    """On 64 KB (MI300) or 99 KB (sm_86 / sm_89) a program, the M = 65-256 rows' 128-wide
    tiles keep their width: K-steps shrink (to 32, still dividing the group) after the stages,
    before BLOCK_N halves."""
    for m, n in ((128, 14336), (256, 14336), (128, 32768), (200, 65536), (128, 4096)):
        for g in (0, 32, 128):
            for bits in (4, 8):
                cfg = heuristics.wxa16_gemm_config(m, n, 4096, g, bits, x_bytes, smem, sms)
                used = heuristics.wxa16_smem_bytes(cfg, bits, x_bytes)
                assert used + heuristics.SMEM_MARGIN <= smem, cfg
                assert cfg.block_n >= 32 and cfg.block_k >= 32, (m, n, g, bits, cfg)
                if g:
                    assert g % cfg.block_k == 0, cfg
    assert heuristics.wxa16_gemm_config(1, 3, 128, 0).block_n == 16


def test_tiles_cover_the_sms_above_the_decode_regime():
    """At M = 17-64 (no K split) BLOCK_N halves (to 32 at least) while the tiles number fewer
    than the SMs; the decode regime splits K instead and keeps the table's tile. Above M = 64
    the row's 128 x 128 tile stays while it fills 3/4 of the SMs, else the first fill tile
    that does (128 x 64, then 64 x 32), up to M = 256."""
    cfg = heuristics.wxa16_gemm_config
    table_n = cfg(64, 14336, 4096, 128).block_n
    assert table_n == 64
    assert cfg(64, 14336, 4096, 128, sm_count=132).block_n == 64  # 224 tiles
    assert cfg(64, 4096, 4096, 128, sm_count=132).block_n == 32  # 64 tiles at 64 wide
    assert cfg(64, 4096, 4096, 128).block_n == 64  # no SM count: the table's
    assert cfg(40, 100, 4096, 0, sm_count=132).block_n == 32  # the floor
    assert cfg(16, 4096, 4096, 128, sm_count=132) == cfg(16, 4096, 4096, 128)

    def tile(*args):
        c = cfg(*args)
        return c.block_m, c.block_n, c.block_k

    assert tile(128, 14336, 4096, 128, 4, 2, None, 132) == (128, 128, 128)  # 112 tiles
    assert tile(128, 4096, 4096, 128, 4, 2, None, 132) == (64, 32, 128)  # 32 / 64 / 256
    assert tile(128, 4096, 4096, 128) == (128, 128, 128)  # no SM count: the table's
    assert tile(256, 14336, 4096, 128, 8, 2, None, 132) == (128, 128, 64)  # 224 tiles
    assert tile(256, 4096, 4096, 0, 8, 2, None, 132) == (128, 64, 128)  # 64 / 128
    assert tile(256, 4096, 4096, 64, 8, 2, None, 132) == (128, 64, 64)  # the group caps K
    assert tile(100, 40, 256, 0, 4, 2, None, 132) == (64, 32, 128)  # none fills: the last
    assert tile(300, 256, 4096, 0, 4, 2, None, 132) == (128, 128, 64)  # above 256: the row's
    assert tile(4096, 4096, 4096, 128, 4, 2, None, 132) == (128, 128, 64)  # 1024 tiles


# --------------------------------------------------------------------- the registry
def _kernel(op, name):
    return next(k for k in kernels(op) if k.name == name)


def test_supports_declines_a_prepacked_weight():
    """Only the canonical rank-2 uint8 [N, K // 2] qweight is this kernel's; a prepacked
    layout (any other tensor) is declined with the reason."""
    k = _kernel("w4a16_gemm", "triton_w4a16_gemm")
    x = torch.zeros(2, 128, dtype=torch.bfloat16, device=DEVICE)
    s = torch.ones(8, 4, dtype=torch.bfloat16, device=DEVICE)
    canonical = torch.zeros(8, 64, dtype=torch.uint8, device=DEVICE)
    assert k.supports(x, canonical, s, None, 32, None, None) is None
    for packed in (torch.zeros(2, 8, 32, dtype=torch.uint8, device=DEVICE),
                   torch.zeros(8, 16, dtype=torch.int32, device=DEVICE),
                   torch.zeros(4, 128, dtype=torch.uint8, device=DEVICE)):
        why = k.supports(x, packed, s, None, 32, None, None)
        assert why is not None and "canonical int4 layout" in why, why


def test_explain_names_the_kernels():
    iw = int4_weight(8, 128, 32, True, torch.bfloat16)
    x = activations(2, 128, torch.bfloat16)
    assert lowbit.explain(lowbit.w4a16_gemm, x, iw, backend="triton").kernel == \
        "triton_w4a16_gemm"
    q, s = int8_weight(8, 128, 0)
    assert lowbit.explain(lowbit.w8a16_gemm, x, q, s, backend="triton").kernel == \
        "triton_w8a16_gemm"


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
@pytest.mark.parametrize("group_size", [64, 128], ids=["g64", "g128"])
@half
def test_w4a16_prescale_in_x_dtype_is_the_fp32_prescale(group_size, symmetric, dtype):
    """Above M = 64 the group scales multiply the weight before the dot: scales of x's dtype
    in that dtype (packed pairs; fp16 under the interpreter, both dtypes on a GPU), fp32
    scales in fp32. The same scale values give the same bits either way."""
    iw = int4_weight(48, 256, group_size, symmetric, dtype)
    assert iw.scales.dtype == dtype
    iw32 = lowbit.Int4Weight(iw.qweight, iw.scales.float(), iw.zeros, group_size)
    x = activations(100, 256, dtype)
    got = lowbit.w4a16_gemm(x, iw, backend="triton")
    want = lowbit.w4a16_gemm(x, iw32, backend="triton")
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    check(got, expected(x, int4_dense(iw)), dtype)


# ------------------------------------------------------- compiled for GPUs, without one
def _compile(target, bits, per_channel, decode, s_in_dot=False):
    """Compile the kernel for ``target`` (no device needed), as a launch would specialize
    it: unit K strides, 16-byte aligned pointers and leading strides. int4 takes bf16 scales
    (their int16 bits); ``s_in_dot``: they multiply the weight in bf16 (x's dtype), as a GPU
    launch with bf16 x does."""
    kern = wxa16_gemm._wxa16_kernel
    block = (16, 64, 128) if decode else (128, 128, 64)
    const = dict(BITS=bits, PER_CHANNEL=per_channel, SCALE_W=not (per_channel or decode),
                 S_IN_DOT=s_in_dot,
                 HAS_ZERO=bits == 4, S_BF16=bits == 4, HAS_BIAS=True, BIAS_BF16=True,
                 X_BF16_BITS=False, FP32_DOT=False, PARTIAL=decode, OUT_BF16_BITS=False,
                 BLOCK_M=block[0], BLOCK_N=block[1], BLOCK_K=block[2], GROUP_M=8,
                 EVEN_K=True, AMD_STORE_WAIT=decode and target[0] == "hip",
                 stride_xk=1, stride_wk=1, stride_sg=1, stride_zg=1, stride_cn=1)
    ptrs = dict(x_ptr="*bf16", w_ptr="*u8" if bits == 4 else "*i8",
                s_ptr="*i16" if bits == 4 else "*fp32", z_ptr="*u8", bias_ptr="*i16",
                c_ptr="*bf16", ws_ptr="*fp32" if decode else "*bf16",
                cnt_ptr="*i32" if decode else "*bf16")
    sig = {a: "constexpr" if a in const else ptrs.get(a, "i32") for a in kern.arg_names}
    aligned = [a for a in kern.arg_names if a in ptrs or a in (
        "N", "K", "G", "stride_xm", "stride_wn", "stride_sn", "stride_zn", "stride_cs",
        "stride_cm")]
    return compile_kernel(kern, target, sig, const, aligned,
                          dict(num_warps=8 if not decode else 4, num_stages=3))


def compile_checks(target) -> None:
    """Compile both regimes and both bit widths for ``target`` (GPUTarget's arguments); on
    NVIDIA the tiled regime must run on tensor cores (wgmma on sm_90, mma.sync on sm_80)
    and decode on mma.sync, its split counted in with one acquire-release atomic at GPU
    scope; on AMD each wave waits for its partial's stores before the barrier that comes
    before the atomic (s_barrier alone does not)."""
    for bits, per_channel, s_in_dot in ((4, False, False), (4, False, True), (8, True, False),
                                        (8, False, False)):
        for decode in (True, False):
            c = _compile(target, bits, per_channel, decode, s_in_dot)
            if target[0] == "cuda":
                want = "wgmma" if target[1] == 90 and not decode else "mma.sync"
                assert want in c.asm["ptx"], (target, bits, per_channel, decode)
                atoms = re.findall(r"atom\.[\w.]+", c.asm["ptx"])
                assert atoms == (["atom.global.gpu.acq_rel.add.u32"] if decode else []), atoms
            elif decode:  # AMD: each wave waits for its partial's stores before the barrier
                lines = c.asm["amdgcn"].splitlines()
                atom = [i for i, line in enumerate(lines) if "global_atomic_add" in line]
                assert len(atom) == 1, atom
                store = max(i for i in range(atom[0]) if "global_store" in lines[i])
                barrier = next(i for i in range(store, atom[0]) if "s_barrier" in lines[i])
                assert any("s_waitcnt vmcnt(0)" in line for line in lines[store:barrier]), \
                    (bits, per_channel, s_in_dot, lines[store:barrier])


@pytest.mark.parametrize("target", [GPU_TARGETS[t] for t in ("sm90", "sm80", "gfx942")],
                         ids=["sm90", "sm80", "gfx942"])
def test_compiles_for_gpu_targets(target):
    """The kernel compiles for Hopper, Ampere and MI300X from any machine. In a fresh
    process: this one may hold triton imported for the interpreter, which cannot compile."""
    compile_checks_in_fresh_process(__file__, target)


# ------------------------------------------------------------------------------- GPU
BENCH_NK = [(14336, 4096), (4096, 14336), (28672, 8192), (4096, 4096)]


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 3, 17, 100])
@pytest.mark.parametrize("n", [8, 3000])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1], ids=["g32", "g64", "g128", "channel"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
@half
def test_gpu_k4224(m, n, group_size, symmetric, dtype):
    k = 4224
    iw = int4_weight(n, k, group_size, symmetric, dtype, perm=not symmetric)
    x = activations(m, k, dtype)
    bias = bias_of(n, dtype)
    check(lowbit.w4a16_gemm(x, iw, bias, backend="triton"),
          expected(x, int4_dense(iw), bias, iw.perm), dtype, "w4a16")
    q, s = int8_weight(n, k, group_size if symmetric and group_size > 0 else 0)
    check(lowbit.w8a16_gemm(x, q, s, bias, backend="triton"),
          expected(x, int8_dense(q, s), bias), dtype, "w8a16")


def _random_int4(n, k, group_size, seed):
    """Random canonical int4 fields on the GPU (any bytes are a valid weight): quantizing a
    benchmark-sized weight through the reference would take the test's time."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8, device="cuda")
    s = (torch.rand(n, k // group_size, generator=g, device="cuda") * 0.02 + 1e-3)
    return lowbit.Int4Weight(q, s.bfloat16(), None, group_size)


@pytest.mark.gpu
@pytest.mark.parametrize("nk", BENCH_NK, ids=lambda s: "x".join(map(str, s)))
def test_gpu_benchmark_shapes(nk):
    n, k = nk
    dtype = torch.bfloat16
    iw = _random_int4(n, k, 128, seed=21)
    g = torch.Generator(device="cuda").manual_seed(22)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8, device="cuda")
    s = torch.rand(n, 1, generator=g, device="cuda") * 0.01 + 1e-3
    dense4, dense8 = int4_dense(iw), int8_dense(q, s)
    bias = bias_of(n, dtype)
    for m in (1, 16, 64, 128, 1024):
        x = activations(m, k, dtype, seed=m)
        check(lowbit.w4a16_gemm(x, iw, bias, backend="triton"), expected(x, dense4, bias),
              dtype, f"w4a16 M = {m}")
        check(lowbit.w8a16_gemm(x, q, s, bias, backend="triton"), expected(x, dense8, bias),
              dtype, f"w8a16 M = {m}")


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 40])
def test_gpu_bound_launches_match_the_jit_launches(m):
    """The prepared weight-only GEMMs launch their compiled kernel directly (one launch, the
    split's sum in it at M <= 16): bit for bit what the launches through ``kernel[grid]``
    give (taken while a launch hook is set), with zero points, act order, bias and both
    scale layouts of the int8 weight."""
    from lowbit_testing import assert_bits_equal, with_launch_hook
    n, k, dtype = 3000, 4224, torch.bfloat16
    iw = int4_weight(n, k, 64, False, dtype, perm=True)
    q, s = int8_weight(n, k, 128)
    qc, sc = int8_weight(n, k, 0)
    x, bias = activations(m, k, dtype), bias_of(n, dtype)
    calls = {
        "w4a16": lambda: lowbit.w4a16_gemm(x, iw, bias, backend="triton"),
        "w8a16 g128": lambda: lowbit.w8a16_gemm(x, q, s, bias, backend="triton"),
        "w8a16 channel": lambda: lowbit.w8a16_gemm(x, qc, sc, None, backend="triton"),
    }
    for what, call in calls.items():
        first = call()  # prepares and binds
        bound = call()
        hooked, seen = with_launch_hook(call)
        torch.cuda.synchronize()
        assert len(seen) == 1, (what, len(seen))  # the GEMM, its split summed in it
        assert_bits_equal(bound, first, f"{what}: bound launch, twice")
        assert_bits_equal(bound, hooked, f"{what}: bound launch vs kernel[grid]")
