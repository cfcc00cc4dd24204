"""INT4: the canonical packed layout, Int4Weight (quantize, dequantize, save/load, devices),
and the AWQ and GPTQ importers on hand-built checkpoint tensors.

The checkpoint tensors are built here by a tiny independent packer (plain integer
arithmetic, one nibble at a time), never with lowbit's own functions.
"""
import io

import numpy as np
import pytest
import torch

import lowbit
from lowbit import Int4Weight
from lowbit.nn import Int4Linear
from lowbit import reference as R
from lowbit_testing import GEMM_TOL, pack_nibbles, rel_frobenius, unpack_nibbles

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i of an AWQ int32 holds column AWQ_ORDER[i]


def to_int32(words) -> np.ndarray:
    """Python ints in [0, 2^32) -> int32 (two's complement), as checkpoints store them."""
    return np.array(words, dtype=np.uint64).astype(np.uint32).view(np.int32)


def awq_pack_cols(mat) -> np.ndarray:
    """[R, C] nibbles -> AWQ int32 [R, C/8]: nibble i of word c holds column 8c + AWQ_ORDER[i]."""
    r, c = mat.shape
    words = [[sum(int(mat[i, 8 * j + AWQ_ORDER[n]]) << (4 * n) for n in range(8))
              for j in range(c // 8)] for i in range(r)]
    return to_int32(words).reshape(r, c // 8)


def seq_pack_cols(mat) -> np.ndarray:
    """[R, C] nibbles -> int32 [R, C/8], nibble i of word c holds column 8c + i (GPTQ qzeros)."""
    r, c = mat.shape
    words = [[sum(int(mat[i, 8 * j + n]) << (4 * n) for n in range(8))
              for j in range(c // 8)] for i in range(r)]
    return to_int32(words).reshape(r, c // 8)


def seq_pack_rows(mat) -> np.ndarray:
    """[K, N] nibbles -> int32 [K/8, N], nibble i of word r holds row 8r + i (GPTQ qweight)."""
    return seq_pack_cols(np.asarray(mat).T).T.copy()


def rng_nibbles(shape, seed):
    return np.random.default_rng(seed).integers(0, 16, shape).astype(np.int64)


def rng_scales(shape, seed):
    """fp16 scales (as checkpoints store them), returned as float32 values."""
    return (np.random.default_rng(seed).uniform(0.001, 0.05, shape)
            .astype(np.float16).astype(np.float32))


# --------------------------------------------------------------------- canonical packing
def test_canonical_nibble_order_hand_built():
    # row 0: k = 0..3 hold 1, 2, 3, 4 -> bytes 0x21, 0x43 (k = 2j low, k = 2j + 1 high)
    # row 1: k = 0..3 hold 15, 0, 0, 10 -> bytes 0x0F, 0xA0
    u = np.array([[1, 2, 3, 4], [15, 0, 0, 10]], np.uint8)
    packed = R.pack_int4(u)
    assert packed.dtype == np.uint8
    assert packed.tolist() == [[0x21, 0x43], [0x0F, 0xA0]]
    assert R.unpack_int4(packed).tolist() == u.tolist()
    assert pack_nibbles(u).tolist() == packed.tolist()


@pytest.mark.parametrize("shape", [(1, 2), (3, 8), (17, 256), (64, 4104), (0, 6)])
def test_pack_unpack_round_trip(shape):
    u = rng_nibbles(shape, seed=shape[1]).astype(np.uint8)
    packed = R.pack_int4(u)
    assert packed.shape == (shape[0], shape[1] // 2)
    if shape[0] * shape[1] <= 4096:  # (the independent packer loops in Python)
        assert np.array_equal(packed, pack_nibbles(u))
    assert np.array_equal(unpack_nibbles(packed), u)
    assert np.array_equal(R.unpack_int4(packed), u)
    assert np.array_equal(R.pack_int4(R.unpack_int4(packed)), packed)


def test_pack_agrees_with_independent_packer_on_all_byte_values():
    u = np.array([[b & 0xF, b >> 4] for b in range(256)], np.uint8).reshape(1, -1)
    assert np.array_equal(R.pack_int4(u), np.arange(256, dtype=np.uint8).reshape(1, -1))
    assert np.array_equal(pack_nibbles(u), R.pack_int4(u))


# ------------------------------------------------------------------------------ Int4Weight
def make_weight(symmetric, n=24, k=256, group_size=64, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * 0.02).to(dtype)
    return w, lowbit.int4_quantize(w, group_size=group_size, symmetric=symmetric)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32],
                         ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1], ids=["g32", "g64", "g128", "channel"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
def test_quantize_dequantize_error_bound(symmetric, group_size, dtype):
    w, iw = make_weight(symmetric, group_size=group_size, dtype=dtype)
    if group_size == -1:  # per channel: held as one group of the whole row
        group_size = w.shape[1]
        assert iw.group_size == group_size and iw.scales.shape == (w.shape[0], 1)
    assert iw.shape == tuple(w.shape) and iw.device == w.device
    assert iw.qweight.dtype == torch.uint8 and iw.scales.dtype == dtype
    deq = iw.dequantize(torch.float32).double().numpy()
    s = np.repeat(iw.scales.double().numpy(), group_size, axis=1)
    # scale rounding in the storage dtype: e <= 2^-8 (bf16), 2^-11 (fp16); see
    # test_quant_reference.test_int4_properties for the derivation.
    e = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 0.0}[dtype]
    steps = 0.5 if symmetric else 0.5 + 15 * e
    bound = s * (steps + 2.0 ** -18) + np.abs(w.double().numpy()) * 2.0 ** -22
    assert np.all(np.abs(w.double().numpy() - deq) <= bound)
    # dequantize is (u - z) * scale of the stored fields
    z = 8 if symmetric else np.repeat(iw.zeros.numpy().astype(np.float64), group_size, axis=1)
    want = ((unpack_nibbles(iw.qweight.numpy()) - z) * s).astype(np.float32)
    assert np.array_equal(iw.dequantize(torch.float32).numpy(), want)
    assert iw.dequantize(torch.bfloat16).dtype == torch.bfloat16


def assert_same_weight(a: Int4Weight, b: Int4Weight):
    assert a.group_size == b.group_size and a.shape == b.shape
    assert torch.equal(a.qweight, b.qweight)
    assert a.scales.dtype == b.scales.dtype and torch.equal(a.scales, b.scales)
    for x, y in ((a.zeros, b.zeros), (a.perm, b.perm)):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y)


def weight_with_perm():
    k, g = 128, 32
    perm = torch.from_numpy(np.random.default_rng(3).permutation(k))
    _, iw = make_weight(False, n=8, k=k, group_size=g)
    return Int4Weight(iw.qweight, iw.scales, iw.zeros, g, perm)


WEIGHTS = {"sym": lambda: make_weight(True)[1], "zp": lambda: make_weight(False)[1],
           "perm": weight_with_perm}


@pytest.mark.parametrize("kind", list(WEIGHTS))
def test_save_load_safetensors(kind, tmp_path):
    iw = WEIGHTS[kind]()
    path = str(tmp_path / "w.safetensors")
    iw.save(path)
    back = Int4Weight.load(path)
    assert_same_weight(back, iw)
    assert torch.equal(back.dequantize(), iw.dequantize())


@pytest.mark.parametrize("kind", list(WEIGHTS))
def test_state_dict_round_trip(kind):
    iw = WEIGHTS[kind]()
    for prefix in ("", "model.layers.0.mlp.up_proj."):
        sd = iw.state_dict(prefix)
        assert all(key.startswith(prefix) for key in sd)
        assert ((prefix + "zeros") in sd) == (iw.zeros is not None)
        assert_same_weight(Int4Weight.from_state_dict(sd, prefix), iw)
    # through torch.save / torch.load (weights_only) of the flat dict
    buf = io.BytesIO()
    torch.save(iw.state_dict("w."), buf)
    buf.seek(0)
    assert_same_weight(Int4Weight.from_state_dict(torch.load(buf, weights_only=True), "w."), iw)


@pytest.mark.parametrize("kind", list(WEIGHTS))
def test_to_device(kind):
    iw = WEIGHTS[kind]()
    cpu = iw.to("cpu")
    assert cpu.device.type == "cpu"
    assert_same_weight(cpu, iw)
    meta = iw.to("meta")
    for t in (meta.qweight, meta.scales, meta.zeros, meta.perm):
        assert t is None or t.device.type == "meta"
    assert meta.shape == iw.shape and meta.group_size == iw.group_size
    assert meta.scales.dtype == iw.scales.dtype


def test_dequantize_undoes_perm():
    iw = weight_with_perm()
    plain = Int4Weight(iw.qweight, iw.scales, iw.zeros, iw.group_size)
    dense_can = plain.dequantize()  # canonical (permuted) K order
    dense = iw.dequantize()  # checkpoint order: column perm[j] is canonical column j
    assert torch.equal(dense[:, iw.perm], dense_can)


# ------------------------------------------------------------------------------------ AWQ
def test_awq_word_layout_hand_built():
    """Columns 0..7 holding values 0..7 pack into the AWQ word 0x75316420 (nibble i holds
    column 0, 2, 4, 6, 1, 3, 5, 7)."""
    cols = np.arange(8).reshape(1, 8)
    assert awq_pack_cols(cols).view(np.uint32).tolist() == [[0x75316420]]
    # K = 32 rows of that word, one group
    qweight = np.tile(to_int32([0x75316420]), (32, 1))
    qzeros = to_int32([0x75316420]).reshape(1, 1)
    scales = np.ones((1, 8), np.float32)
    q, s, z = R.import_awq(qweight, qzeros, scales, 32)
    u = unpack_nibbles(q)  # [N = 8, K = 32]
    assert np.array_equal(u, np.repeat(np.arange(8).reshape(8, 1), 32, axis=1))
    assert z.reshape(-1).tolist() == list(range(8))


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_awq_import_hand_built(group_size):
    k, n = 256, 24
    ng = k // group_size
    u_ck = rng_nibbles((k, n), seed=1)  # checkpoint orientation [K, N]
    u_ck[0, :] = 15  # top nibbles set: the int32 words are negative
    z_ck = rng_nibbles((ng, n), seed=2)
    s_ck = rng_scales((ng, n), seed=3)
    qweight, qzeros = awq_pack_cols(u_ck), awq_pack_cols(z_ck)
    assert qweight.shape == (k, n // 8) and qweight.dtype == np.int32 and (qweight < 0).any()

    w = Int4Weight.from_awq(torch.from_numpy(qweight), torch.from_numpy(qzeros),
                            torch.from_numpy(s_ck).half(), group_size)
    assert w.shape == (n, k) and w.group_size == group_size and w.perm is None
    assert np.array_equal(unpack_nibbles(w.qweight.numpy()), u_ck.T)
    assert np.array_equal(w.zeros.numpy(), z_ck.T)  # AWQ zeros are the true zero points
    assert w.scales.dtype == torch.float16
    assert np.array_equal(w.scales.float().numpy(), s_ck.T)

    # The dense weight, from the hand-made values in checkpoint order.
    g_of_k = np.arange(k) // group_size
    w_true = ((u_ck - z_ck[g_of_k]) * s_ck[g_of_k]).T  # [N, K], float64
    assert np.array_equal(w.dequantize().double().numpy(), w_true)
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        xd = x.to(dtype)
        out = lowbit.w4a16_gemm(xd, w)
        assert out.dtype == dtype and out.shape == (5, n)
        want = xd.double().numpy() @ w_true.T
        assert rel_frobenius(out.double().numpy(), want) <= GEMM_TOL[dtype]


# ----------------------------------------------------------------------------------- GPTQ
def test_gptq_word_layout_hand_built():
    """GPTQ packs along K: nibble i of qweight[r, n] is k = 8r + i; qzeros packs 8
    consecutive columns. Values 0..7 pack to 0x76543210."""
    assert seq_pack_rows(np.arange(8).reshape(8, 1)).view(np.uint32).tolist() == [[0x76543210]]
    # K = 32, N = 8, u[n, k] = k % 16: words for k = 0..7, 8..15, 16..23, 24..31
    qweight = np.tile(to_int32([0x76543210, 0xFEDCBA98]).reshape(2, 1), (2, 8))  # [4, 8]
    # v2 zeros 0..7 for the 8 columns; scales 1
    qzeros = to_int32([0x76543210]).reshape(1, 1)
    q, s, z, perm = R.import_gptq(qweight, qzeros, np.ones((1, 8), np.float32),
                                  group_size=32, version=2)
    u = unpack_nibbles(q)  # [N, K]
    assert perm is None
    assert u[0, :16].tolist() == list(range(16)) and u[0, 16:].tolist() == list(range(16))
    assert z.reshape(-1).tolist() == list(range(8))


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1], ids=["g32", "g64", "g128", "channel"])
def test_gptq_import_hand_built(group_size, version):
    k, n = 256, 16
    given, group_size = group_size, k if group_size == -1 else group_size  # -1: per channel
    ng = k // group_size
    u_ck = rng_nibbles((k, n), seed=4)  # [K, N]
    z_true = rng_nibbles((ng, n), seed=5)
    z_true[0, :4] = [0, 15, 1, 8]  # zero 0 (v1 stores 15: wraps), 15 (v1 stores 14), ...
    s_ck = rng_scales((ng, n), seed=6)
    stored = (z_true - 1) % 16 if version == 1 else z_true
    if version == 1:
        assert stored[0, :4].tolist() == [15, 14, 0, 7]
    qweight, qzeros = seq_pack_rows(u_ck), seq_pack_cols(stored)
    assert qweight.shape == (k // 8, n) and qzeros.shape == (ng, n // 8)

    w = Int4Weight.from_gptq(torch.from_numpy(qweight), torch.from_numpy(qzeros),
                             torch.from_numpy(s_ck).half(), group_size=given,
                             version=version)
    assert w.shape == (n, k) and w.perm is None and w.group_size == group_size
    assert np.array_equal(unpack_nibbles(w.qweight.numpy()), u_ck.T)
    assert np.array_equal(w.zeros.numpy(), z_true.T)
    g_of_k = np.arange(k) // group_size
    w_true = ((u_ck - z_true[g_of_k]) * s_ck[g_of_k]).T
    assert np.array_equal(w.dequantize().double().numpy(), w_true)
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(1)).half()
    out = lowbit.w4a16_gemm(x, w)
    assert rel_frobenius(out.double().numpy(), x.double().numpy() @ w_true.T) <= 1e-2

    # g_idx equal to k // G is not act-order: no perm
    w2 = Int4Weight.from_gptq(torch.from_numpy(qweight), torch.from_numpy(qzeros),
                              torch.from_numpy(s_ck).half(),
                              torch.from_numpy(g_of_k.astype(np.int32)),
                              group_size=group_size, version=version)
    assert w2.perm is None and torch.equal(w2.qweight, w.qweight)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("group_size", [32, 128])
def test_gptq_act_order(group_size, version):
    k, n = 256, 16
    ng = k // group_size
    rng = np.random.default_rng(7)
    g_idx = rng.permutation(np.arange(k) // group_size)  # each group gets G k's, scattered
    u_ck = rng_nibbles((k, n), seed=8)
    z_true = rng_nibbles((ng, n), seed=9)
    s_ck = rng_scales((ng, n), seed=10)
    stored = (z_true - 1) % 16 if version == 1 else z_true
    qweight, qzeros = seq_pack_rows(u_ck), seq_pack_cols(stored)

    w = Int4Weight.from_gptq(torch.from_numpy(qweight), torch.from_numpy(qzeros),
                             torch.from_numpy(s_ck).half(), torch.from_numpy(g_idx),
                             group_size=group_size, version=version)
    # perm lists the k of group 0 (ascending), then group 1, ...: groups become contiguous.
    want_perm = np.concatenate([np.flatnonzero(g_idx == g) for g in range(ng)])
    assert w.perm is not None and w.perm.dtype == torch.int64
    assert np.array_equal(w.perm.numpy(), want_perm)
    assert np.array_equal(unpack_nibbles(w.qweight.numpy()), u_ck[want_perm].T)
    assert np.array_equal(w.zeros.numpy(), z_true.T)

    # The dense weight in checkpoint order: k's group is g_idx[k].
    w_true = ((u_ck - z_true[g_idx]) * s_ck[g_idx]).T  # [N, K]
    assert np.array_equal(w.dequantize().double().numpy(), w_true)
    gen = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(7, k, generator=gen).to(dtype)
        out = lowbit.w4a16_gemm(x, w)
        want = x.double().numpy() @ w_true.T
        assert out.dtype == dtype
        assert rel_frobenius(out.double().numpy(), want) <= GEMM_TOL[dtype]
    # the perm survives save/load
    sd = w.state_dict()
    assert torch.equal(Int4Weight.from_state_dict(sd).perm, w.perm)


def test_gptq_rejects_unbalanced_g_idx():
    k, n, g = 64, 8, 32
    qweight = seq_pack_rows(rng_nibbles((k, n), 0))
    qzeros = seq_pack_cols(rng_nibbles((2, n), 1))
    g_idx = np.zeros(k, np.int64)  # all k in group 0
    g_idx[-1] = 1
    with pytest.raises(ValueError, match="g_idx"):
        R.import_gptq(qweight, qzeros, np.ones((2, n), np.float32), g_idx, group_size=g)
    with pytest.raises(ValueError, match="g_idx"):
        R.import_gptq(qweight, qzeros, np.ones((2, n), np.float32), np.full(k, 5),
                      group_size=g)


def test_to_refuses_a_dtype():
    iw = WEIGHTS[list(WEIGHTS)[0]]()
    with pytest.raises(TypeError, match="takes a device"):
        iw.to(torch.float16)


# ------------------------------------ imported checkpoints = the same weights quantized here
def _as_checkpoint(direct: Int4Weight, fmt: str, g_idx=None):
    """``direct`` (canonical, zero points) written as an AWQ or GPTQ (v1 / v2) checkpoint by
    this file's packers, and read back with the importer. With ``g_idx`` (GPTQ act order)
    checkpoint row k belongs to group g_idx[k]: canonical column j is checkpoint row perm[j],
    perm listing group 0's rows, then group 1's (the importer's order)."""
    g = direct.group_size
    u = unpack_nibbles(direct.qweight.numpy())  # [N, K]
    z = direct.zeros.numpy().astype(np.int64)  # [N, K // G]
    s = direct.scales.T.contiguous()  # [K // G, N]
    if fmt == "awq":
        return Int4Weight.from_awq(torch.from_numpy(awq_pack_cols(u.T)),
                                   torch.from_numpy(awq_pack_cols(z.T)), s, g)
    version = int(fmt[-1])
    u_ck = u.T
    if g_idx is not None:
        perm = np.concatenate([np.flatnonzero(g_idx == i) for i in range(u.shape[1] // g)])
        u_ck = np.empty_like(u.T)
        u_ck[perm] = u.T
        g_idx = torch.from_numpy(g_idx)
    stored = (z - 1) % 16 if version == 1 else z
    return Int4Weight.from_gptq(torch.from_numpy(seq_pack_rows(u_ck)),
                                torch.from_numpy(seq_pack_cols(stored.T)), s, g_idx,
                                group_size=g, version=version)


def _direct(n=72, k=1152, g=128):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)) * 0.05
    return lowbit.int4_quantize(w.half(), group_size=g, symmetric=False)


@pytest.mark.parametrize("fmt", ["awq", "gptq1", "gptq2"])
def test_imported_checkpoint_is_the_direct_weight(fmt):
    """A directly quantized weight written as an AWQ / GPTQ checkpoint imports to the same
    canonical tensors, so every backend computes the same bits from either."""
    direct = _direct()
    imp = _as_checkpoint(direct, fmt)
    for a, b in ((imp.qweight, direct.qweight), (imp.scales, direct.scales),
                 (imp.zeros, direct.zeros)):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert imp.perm is None
    x = torch.randn(5, 1152, generator=torch.Generator().manual_seed(0)).half()
    assert torch.equal(lowbit.w4a16_gemm(x, imp), lowbit.w4a16_gemm(x, direct))


def _act_order_g_idx(k, g, seed=3):
    return np.random.default_rng(seed).permutation(np.arange(k) // g)


@pytest.mark.parametrize("version", [1, 2])
def test_act_order_checkpoint_is_the_direct_weight(version):
    """GPTQ act order: the import holds the direct weight's canonical tensors and a perm; x in
    checkpoint order times it equals x[:, perm] times the direct weight."""
    direct = _direct()
    g_idx = _act_order_g_idx(1152, 128)
    imp = _as_checkpoint(direct, f"gptq{version}", g_idx)
    assert torch.equal(imp.qweight, direct.qweight) and torch.equal(imp.zeros, direct.zeros)
    assert imp.perm is not None
    x = torch.randn(5, 1152, generator=torch.Generator().manual_seed(1)).half()
    assert torch.equal(lowbit.w4a16_gemm(x, imp), lowbit.w4a16_gemm(x[:, imp.perm], direct))


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["awq", "gptq1", "gptq2", "gptq1-act-order"])
def test_imported_checkpoints_on_the_gpu_kernels(fmt):
    """On the CUDA kernels (prepacked weight: decode; at M = 100 the wgmma kernel on sm_90,
    the dequantize path elsewhere) and the Triton kernel (canonical weight), an imported
    checkpoint gives exactly the output of the directly quantized weight (act order: of
    x[:, perm] times it)."""
    direct = _direct()
    act = fmt.endswith("act-order")
    imp = _as_checkpoint(direct, fmt.split("-")[0], _act_order_g_idx(1152, 128) if act else None)
    dev_direct, dev_imp = direct.to("cuda"), imp.to("cuda")
    for m in (1, 16, 100):
        x = torch.randn(m, 1152, generator=torch.Generator().manual_seed(m)).half().cuda()
        xd = x[:, dev_imp.perm] if act else x
        for backend, a, b in (("cuda", dev_imp.prepack(), dev_direct.prepack()),
                              ("triton", dev_imp, dev_direct)):
            got = lowbit.w4a16_gemm(x, a, backend=backend)
            want = lowbit.w4a16_gemm(xd, b, backend=backend)
            assert torch.equal(got, want), (fmt, m, backend)


# ------------------------------------------------------------------------ per channel
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
def test_per_channel_is_one_group_per_row(symmetric):
    """group_size -1 (or K): one scale (and zero point) per row, computed from the whole row
    by the SPEC's formulas, here written out independently in NumPy for fp32 scales."""
    g = torch.Generator().manual_seed(12)
    n, k = 10, 192  # K not a group size: only the per-channel reading fits
    w = torch.randn(n, k, generator=g) * torch.linspace(0.01, 3.0, n)[:, None]
    w[3] = 0.0  # an all-zero row: scale 1
    for group_size in (-1, k):
        iw = lowbit.int4_quantize(w, group_size=group_size, symmetric=symmetric)
        assert iw.group_size == k and iw.scales.shape == (n, 1) and iw.shape == (n, k)
        wf = w.numpy().astype(np.float32)
        if symmetric:
            s = (np.abs(wf).max(axis=1, keepdims=True) / np.float32(7)).astype(np.float32)
            s = np.where(s == 0, np.float32(1), s)
            z = np.full((n, 1), 8, np.float32)
            u = np.clip(np.rint(wf * (np.float32(1) / s).astype(np.float32)), -8, 7) + 8
        else:
            lo = np.minimum(wf.min(axis=1, keepdims=True), 0).astype(np.float32)
            hi = np.maximum(wf.max(axis=1, keepdims=True), 0).astype(np.float32)
            s = ((hi - lo) / np.float32(15)).astype(np.float32)
            s = np.where(s == 0, np.float32(1), s)
            z = np.clip(np.rint(-(lo / s).astype(np.float32)), 0, 15)
            u = np.clip(np.rint(wf * (np.float32(1) / s).astype(np.float32)) + z, 0, 15)
            assert np.array_equal(iw.zeros.numpy(), z.astype(np.uint8))
        assert np.array_equal(iw.scales.numpy(), s)
        assert np.array_equal(unpack_nibbles(iw.qweight.numpy()), u.astype(np.uint8))
        assert np.array_equal(iw.dequantize().numpy(), ((u - z) * s).astype(np.float32))
        x = torch.randn(5, k, generator=g).to(torch.bfloat16)
        ref = x.double().numpy() @ ((u - z) * s).T
        assert rel_frobenius(lowbit.w4a16_gemm(x, iw).double().numpy(), ref) <= 1e-2
        assert_same_weight(Int4Weight.from_state_dict(iw.state_dict()), iw)


def test_group_size_neither_a_group_nor_per_channel_is_refused():
    w = torch.randn(8, 192)
    for bad in (96, 0, -2, 384):
        with pytest.raises(ValueError, match="group_size"):
            lowbit.int4_quantize(w, group_size=bad)
    # Per channel needs K a multiple of 32, as every group size gives (packing, kernels).
    for k in (200, 40, 34):
        with pytest.raises(ValueError, match="per channel, a multiple of 32"):
            lowbit.int4_quantize(torch.randn(4, k), group_size=-1)
        with pytest.raises(ValueError, match="per channel, a multiple of 32"):
            Int4Linear(k, 4, group_size=-1)
    iw = lowbit.int4_quantize(w, group_size=64)
    x = torch.randn(2, 192)
    with pytest.raises(ValueError, match="scales"):  # 3 groups' scales held as per channel
        lowbit.w4a16_gemm(x, Int4Weight(iw.qweight, iw.scales, None, 192))


def test_an_int4_weight_given_group_size_minus_one_holds_k():
    iw = lowbit.int4_quantize(torch.randn(8, 96), group_size=-1, symmetric=False)
    same = Int4Weight(iw.qweight, iw.scales, iw.zeros, -1)
    assert same.group_size == 96 and same.shape == (8, 96)
    assert torch.equal(same.dequantize(), iw.dequantize())
    with pytest.raises(ValueError, match="prepacked weight per channel takes group_size = K"):
        Int4Weight(iw.prepack().qweight, iw.scales, iw.zeros, -1)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
def test_quantize_model_per_channel(symmetric):
    """quantize_(model, "int4", group_size=-1) swaps each eligible layer for a per-channel
    Int4Linear with the caller's symmetry, and keeps one whose in_features is no multiple
    of 32, saying why."""
    model = torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.Linear(64, 40),
                                torch.nn.Linear(40, 8))
    summary = lowbit.quantize_(model, "int4", group_size=-1, symmetric=symmetric)
    assert isinstance(model[0], Int4Linear) and isinstance(model[1], Int4Linear)
    assert (model[0].group_size, model[1].group_size) == (96, 64)
    assert model[0].scales.shape == (64, 1) and model[0].symmetric == symmetric
    assert (model[0].zeros is None) == symmetric
    assert type(model[2]) is torch.nn.Linear
    kept = [r for r in summary.layers if not r.swapped]
    assert len(kept) == 1 and "not a multiple of 32 (int4 per channel)" in kept[0].reason
