"""The prepacked int4 layout of the CUDA mixed-input GEMM ("mma16x64"): NumPy and torch
prepack/unpack round trips, the layout itself checked against an independent element-by-element
formula, Int4Weight.prepack()/unpack() and what a prepacked weight still answers (shape,
dequantize, state_dict, the reference GEMM)."""
import numpy as np
import pytest
import torch

import lowbit
from lowbit import Int4Weight
from lowbit.int4_weight import prepack_int4 as torch_prepack
from lowbit.int4_weight import unpack_int4_prepacked as torch_unpack
from lowbit.reference.int4 import prepack_int4, prepacked_shape, unpack_int4_prepacked
from lowbit_testing import unpack_nibbles

SHAPES = [(n, k) for n in (8, 3000, 17) for k in (128, 4224, 96)]


def _qweight(n, k, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, k // 2), dtype=np.uint8)


def _expected_word(u, n, k, r, c, lane, s):
    """Word s of lane `lane` of tile (r, c), one nibble at a time: nibble 4 j + 2 p + h holds
    row 16 r + lane // 4 + 8 h at k = 64 c + 16 (lane % 4) + 4 s + 2 p + j (0 past the edges)."""
    word = 0
    for j in range(2):
        for p in range(2):
            for h in range(2):
                row = 16 * r + lane // 4 + 8 * h
                col = 64 * c + 16 * (lane % 4) + 4 * s + 2 * p + j
                v = int(u[row, col]) if row < n and col < k else 0
                word |= v << (4 * (4 * j + 2 * p + h))
    return np.array(word, dtype=np.uint32).view(np.int32)


@pytest.mark.parametrize("n,k", SHAPES)
def test_numpy_round_trip(n, k):
    q = _qweight(n, k, n + k)
    p = prepack_int4(q)
    assert p.dtype == np.int32 and p.shape == prepacked_shape(n, k)
    assert p.shape == (-(-n // 16), -(-k // 64), 32, 4)
    np.testing.assert_array_equal(unpack_int4_prepacked(p, n, k), q)


@pytest.mark.parametrize("n,k", SHAPES)
def test_torch_matches_numpy(n, k):
    q = _qweight(n, k, 7 * n + k)
    p = torch_prepack(torch.from_numpy(q))
    assert p.dtype == torch.int32 and tuple(p.shape) == prepacked_shape(n, k)
    np.testing.assert_array_equal(p.numpy(), prepack_int4(q))
    np.testing.assert_array_equal(torch_unpack(p, n, k).numpy(), q)


def test_layout_every_word_small():
    n, k = 17, 96  # a partial row tile and a partial K chunk: both pad with zeros
    q = _qweight(n, k, 3)
    u = unpack_nibbles(q)
    p = prepack_int4(q)
    for r in range(p.shape[0]):
        for c in range(p.shape[1]):
            for lane in range(32):
                for s in range(4):
                    assert p[r, c, lane, s] == _expected_word(u, n, k, r, c, lane, s), \
                        (r, c, lane, s)


def test_layout_spot_checks_large():
    n, k = 3000, 4224
    q = _qweight(n, k, 11)
    u = unpack_nibbles(q)
    p = prepack_int4(q)
    rng = np.random.default_rng(5)
    for _ in range(300):
        r, c = rng.integers(p.shape[0]), rng.integers(p.shape[1])
        lane, s = rng.integers(32), rng.integers(4)
        assert p[r, c, lane, s] == _expected_word(u, n, k, r, c, lane, s)


def test_fragment_registers():
    """(word >> 4 i) & 0x000f000f is register i of the m16n8k16 A fragment: i = 0 / 2 row g,
    i = 1 / 3 row g + 8, low half k, high half k + 1 of the lane's k-step pair."""
    n, k = 16, 64
    u = np.arange(n * k).reshape(n, k) % 16
    q = (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)
    p = prepack_int4(q).view(np.uint32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for s in range(4):
            w = int(p[0, 0, lane, s])
            for i in range(4):
                reg = (w >> (4 * i)) & 0x000F000F
                row = g + 8 * (i & 1)
                col = 16 * t + 4 * s + 2 * (i >> 1)
                assert reg & 0xF == u[row, col] and reg >> 16 == u[row, col + 1]


def _swizzled(tile_rows, chunk):
    """Element offset of 16-byte chunk `chunk` of 128-byte row `tile_rows` under the 128-byte
    swizzle of a 1024-aligned tile of 2-byte elements (TMA's SWIZZLE_128B, and what the
    wgmma descriptor reads): chunk c of row r at c ^ (r % 8)."""
    return tile_rows * 64 + ((chunk ^ (tile_rows & 7)) * 8)


@pytest.mark.parametrize("bits", [4, 8])
def test_wgmma_b_permutation_follows_the_fragment_k_order(bits):
    """The sm_90a wgmma W4A16 / W8A16 kernel (csrc/wxa16/sm90_wxa16_gemm_wgmma.cu) feeds the
    decode kernel's A fragments (the prepacked int4 layout, or 16 bytes of an int8 row at
    k = 16 t) to wgmma, so its B tile must hold x in the fragments' K order: emulated here
    end to end, x staged by TMA with the 128-byte swizzle, permute_stage's gather (logical
    column L = words L, L + 8, L + 16, L + 24 of a token's 64-K chunk) into the swizzled B
    tile, the descriptor's reads per k-step, and the fragments' registers (nibbles i and
    i + 4 of word s, or bytes of int8_fragment): the products are the plain u @ x^T."""
    rng = np.random.default_rng(bits)
    n_tok = 16
    u = rng.integers(0, 16, (16, 64)) if bits == 4 else rng.integers(-128, 128, (16, 64))
    x = rng.integers(-3, 4, (n_tok, 64))
    staged = np.zeros(n_tok * 64, np.int64)
    for n in range(n_tok):
        for c in range(8):
            staged[_swizzled(n, c):_swizzled(n, c) + 8] = x[n, 8 * c:8 * c + 8]
    tile = np.zeros(n_tok * 64, np.int64)
    for n in range(n_tok):
        for L in range(8):
            pairs = []
            for q in range(4):
                word = L + 8 * q
                off = _swizzled(n, word >> 2) + (word & 3) * 2
                pairs += [staged[off], staged[off + 1]]
            tile[_swizzled(n, L):_swizzled(n, L) + 8] = pairs
    # A: register i of lane (g, t) at k-step s is (row g + 8 (i & 1), k' = 16 s + 2 t +
    # 8 (i >> 1) and k' + 1), as wgmma's and mma.sync's A fragments place it.
    a = np.zeros((16, 64), np.int64)
    if bits == 4:
        words = prepack_int4((u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)).view(np.uint32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for s in range(4):
            for i in range(4):
                row, kk = g + 8 * (i & 1), 16 * s + 2 * t + 8 * (i >> 1)
                if bits == 4:
                    w = int(words[0, 0, lane, s])
                    lo, hi = (w >> (4 * i)) & 0xF, (w >> (4 * i + 16)) & 0xF
                else:  # int8_fragment: bytes 2 (i >> 1), + 1 of word s of the row's 16 bytes
                    lo = u[row, 16 * t + 4 * s + 2 * (i >> 1)]
                    hi = u[row, 16 * t + 4 * s + 2 * (i >> 1) + 1]
                a[row, kk], a[row, kk + 1] = lo, hi
    b = np.zeros((n_tok, 64), np.int64)  # B[n, k'] as the descriptor reads it per k-step
    for n in range(n_tok):
        for kp in range(64):
            b[n, kp] = tile[_swizzled(n, kp // 8) + kp % 8]
    np.testing.assert_array_equal(a @ b.T, u @ x.T)


@pytest.mark.parametrize("bad", [np.zeros((4, 3), np.int8), np.zeros((2, 2, 2), np.uint8)])
def test_prepack_rejects(bad):
    with pytest.raises(ValueError, match="qweight"):
        prepack_int4(bad)
    with pytest.raises(ValueError, match="qweight"):
        torch_prepack(torch.from_numpy(bad))


def test_unpack_rejects_wrong_shape():
    p = prepack_int4(_qweight(8, 128, 0))
    with pytest.raises(ValueError, match="packed"):
        unpack_int4_prepacked(p, 8, 192)
    with pytest.raises(ValueError, match="packed"):
        torch_unpack(torch.from_numpy(p), 40, 128)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4weight_prepack(symmetric, group):
    n, k = 17, 4224 if group != 32 else 96
    w = lowbit.int4_quantize(torch.randn(n, k, generator=torch.Generator().manual_seed(1)),
                             group_size=group, symmetric=symmetric)
    p = w.prepack()
    assert w.layout == "canonical" and p.layout == "mma16x64"
    assert p.qweight.dtype == torch.int32 and p.qweight.dim() == 4
    assert p.shape == w.shape == (n, k)
    assert p.prepack() is p and w.unpack() is w
    assert torch.equal(p.unpack().qweight, w.qweight)
    assert torch.equal(p.dequantize(), w.dequantize())
    sd = p.state_dict("layer.")
    assert torch.equal(sd["layer.qweight"], w.qweight)  # stored canonical
    back = Int4Weight.from_state_dict(sd, "layer.")
    assert back.layout == "canonical" and torch.equal(back.qweight, w.qweight)


def test_reference_gemm_takes_prepacked():
    g = torch.Generator().manual_seed(2)
    w = lowbit.int4_quantize(torch.randn(40, 256, generator=g), group_size=64, symmetric=False)
    x = torch.randn(3, 256, generator=g).to(torch.bfloat16)
    bias = torch.randn(40, generator=g)
    assert torch.equal(lowbit.w4a16_gemm(x, w.prepack(), bias),
                       lowbit.w4a16_gemm(x, w, bias))


def test_gemm_rejects_prepacked_of_wrong_shape():
    w = lowbit.int4_quantize(torch.randn(40, 256), group_size=64).prepack()
    bad = Int4Weight(w.qweight[:, :2].contiguous(), w.scales, w.zeros, w.group_size)
    with pytest.raises(ValueError, match="qweight"):
        lowbit.w4a16_gemm(torch.randn(3, 256, dtype=torch.bfloat16), bad)
