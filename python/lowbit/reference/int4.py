"""INT4 group-wise quantization, the canonical packed layout, and checkpoint importers.

Canonical layout (the SPEC's interchange format):
    qweight uint8 [N, K // 2]: byte j of row n holds k = 2j in the low nibble and k = 2j + 1
                               in the high nibble; a nibble u encodes the value u - z.
    scales  [N, K // G]        fp16, bf16 or fp32.
    zeros   uint8 [N, K // G]  or None, meaning z = 8 (symmetric).
Dequantized weight: ``(u - z) * scale``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .fp8 import round_to_bf16
from ..scale_layout import GROUP_SIZES, int4_group_size
from .quant import absmax_scale, check_group, minmax_scale_zero

__all__ = [
    "pack_int4",
    "unpack_int4",
    "quantize_int4",
    "dequantize_int4",
    "round_scale",
    "import_awq",
    "import_gptq",
    "AWQ_PACK_ORDER",
    "prepack_int4",
    "unpack_int4_prepacked",
    "prepacked_shape",
    "PREPACK_TILE_N",
    "PREPACK_TILE_K",
    "PREPACK_AXES",
    "UNPACK_AXES",
]

F32 = np.float32
# AWQ packs 8 output columns into an int32 with nibble i holding column AWQ_PACK_ORDER[i].
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def pack_int4(u) -> np.ndarray:
    """uint8 nibbles [N, K] (values 0..15, K even) -> canonical uint8 [N, K // 2]."""
    u = np.asarray(u)
    if u.ndim != 2 or u.shape[1] % 2:
        raise ValueError(f"u must be [N, K] with K even; got shape {u.shape}")
    if u.size and (u.min() < 0 or u.max() > 15):
        raise ValueError("u must hold values in [0, 15]")
    u = u.astype(np.uint8)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)


def unpack_int4(qweight) -> np.ndarray:
    """canonical uint8 [N, K // 2] -> uint8 nibbles [N, K]."""
    q = np.asarray(qweight, dtype=np.uint8)
    out = np.empty((q.shape[0], q.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = q & 0xF
    out[:, 1::2] = q >> 4
    return out


# Prepacked layout ("mma16x64"), the CUDA mixed-input GEMM's (csrc/wxa16/wxa16_gemm.cuh):
#
#   packed int32 [ceil(N / 16), ceil(K / 64), 32, 4]: for each 16-row tile r of N (rows past N
#   are zero) and each 64-wide chunk c of K (k past K is zero), the 32 lanes of a warp hold
#   4 words each; warp lane l = 4 g + t (g = l // 4, t = l % 4) holds in word s (one mma k-step)
#   the 8 nibbles of rows n = 16 r + g + 8 h (h = 0, 1) at k = 64 c + 16 t + 4 s + 2 p + j
#   (p, j = 0, 1), nibble i = 4 j + 2 p + h, i.e. bits 4i..4i+3 of the word.
#
# Why: a lane reads its 4 words as one 16-byte load, 512 contiguous bytes per warp, and
# ``(word >> 4 i) & 0x000f000f`` is register i of the m16n8k16 A fragment (rows g / g + 8) with
# the nibble in the mantissa of both 16-bit halves, so OR-ing the exponent bits of 128 (bf16) or
# 1024 (fp16) dequantizes a pair in 2 integer ops. Lane t's 16 k of a chunk are contiguous
# (16 t .. 16 t + 15), so the matching activations are 16-byte vectors too: k-step s takes
# x[token][16 t + 4 s .. + 3]. The mma's k order is thereby permuted within the chunk, which a
# dot product allows because both operands follow the same permutation; it is the order the
# plain int8 [N, K] weight has under the same 16-byte-per-lane loads, so both bit widths share
# the kernel's activation path.
PREPACK_TILE_N = 16
PREPACK_TILE_K = 64


def prepacked_shape(n: int, k: int) -> Tuple[int, int, int, int]:
    """The prepacked tensor's shape for a weight of logical shape [n, k]."""
    return (-(-n // PREPACK_TILE_N), -(-k // PREPACK_TILE_K), 32, 4)


# Axes of the padded nibble array viewed as [R, h, g, C, t, s, p, j] (n = 16 R + 8 h + g,
# k = 64 C + 16 t + 4 s + 2 p + j) -> [R, C, g, t, s, j, p, h]: the last three give nibble
# 4 j + 2 p + h of a word, so bytes (j, p) hold h = 0 low and h = 1 high.
PREPACK_AXES = (0, 3, 2, 4, 5, 7, 6, 1)
UNPACK_AXES = tuple(int(i) for i in np.argsort(PREPACK_AXES))


def prepack_int4(qweight) -> np.ndarray:
    """canonical uint8 [N, K // 2] -> prepacked int32 [ceil(N/16), ceil(K/64), 32, 4]."""
    q = np.asarray(qweight)
    if q.ndim != 2 or q.dtype != np.uint8:
        raise ValueError(f"qweight must be uint8 [N, K // 2]; got {q.dtype} {q.shape}")
    u = unpack_int4(q)
    n, k = u.shape
    r, c, _, _ = prepacked_shape(n, k)
    pad = np.zeros((r * PREPACK_TILE_N, c * PREPACK_TILE_K), np.uint8)
    pad[:n, :k] = u
    a = pad.reshape(r, 2, 8, c, 4, 4, 2, 2).transpose(PREPACK_AXES)
    b = a[..., 0] | (a[..., 1] << 4)  # [R, C, g, t, s, j, p]: byte 2 j + p of word s
    return np.ascontiguousarray(b).reshape(r, c, 32, 16).view("<i4").astype(np.int32)


def unpack_int4_prepacked(packed, n: int, k: int) -> np.ndarray:
    """prepacked int32 [ceil(n/16), ceil(k/64), 32, 4] -> canonical uint8 [n, k // 2]."""
    p = np.asarray(packed)
    if p.dtype != np.int32 or p.shape != prepacked_shape(n, k) or k % 2:
        raise ValueError(f"packed must be int32 {prepacked_shape(n, k)} for n = {n}, k = {k} "
                         f"(k even); got {p.dtype} {p.shape}")
    r, c = p.shape[:2]
    b = np.ascontiguousarray(p).astype("<i4").view(np.uint8).reshape(r, c, 8, 4, 4, 2, 2)
    a = np.stack([b & 0xF, b >> 4], axis=-1).transpose(UNPACK_AXES)
    u = a.reshape(r * PREPACK_TILE_N, c * PREPACK_TILE_K)[:n, :k]
    return pack_int4(u)


def round_scale(scale: np.ndarray, dtype: str) -> np.ndarray:
    """Round fp32 scales to their storage dtype ('float32', 'float16', 'bfloat16'), as fp32.

    A scale that rounds to 0 (fp16 underflow) becomes 1, like an all-zero slice.
    """
    scale = np.asarray(scale, F32)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            r = scale.astype(np.float16).astype(F32)
    elif dtype == "bfloat16":
        r = round_to_bf16(scale)
    elif dtype == "float32":
        r = scale
    else:
        raise ValueError(f"scale dtype must be float32, float16 or bfloat16; got {dtype!r}")
    return np.where(r == 0, F32(1), r).astype(F32)


def quantize_int4(w, group_size: int = 128, symmetric: bool = True,
                  scale_dtype: str = "float32"):
    """fp32 weight [N, K] -> (qweight uint8 [N, K//2], scales fp32 [N, K//G], zeros or None).

    Scales are rounded to ``scale_dtype`` before ``inv = 1 / scale`` is taken, so the values
    quantized are the ones the stored scale dequantizes. Symmetric:
    ``q = clamp(rint(w * inv), -8, 7)``, stored as ``u = q + 8``. Asymmetric (AWQ style):
    ``scale = (max - min) / 15``, ``z = clamp(rint(-min / scale), 0, 15)``,
    ``u = clamp(rint(w * inv) + z, 0, 15)``.
    """
    w = np.asarray(w, F32)
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [N, K]; got shape {w.shape}")
    n, k = w.shape
    check_group("quantize_int4", k, group_size, whole_k=True)
    # G = K (per channel) is one scale per row: the "channel" granularity.
    gran = "group" if group_size in GROUP_SIZES else "channel"
    if symmetric:
        scale = round_scale(absmax_scale(w, 7.0, gran, group_size), scale_dtype)
        zeros = None
        z = np.full((n, k // group_size), 8, dtype=np.uint8)
    else:
        scale, _ = minmax_scale_zero(w, 15, 0, 15, 0.0, gran, group_size)
        scale = round_scale(scale, scale_dtype)
        # The zero point is derived from the stored scale, for the same reason as inv.
        lo = np.minimum(w.reshape(n, k // group_size, group_size).min(axis=2, initial=0.0),
                        0).astype(F32)
        with np.errstate(invalid="ignore"):
            z = np.clip(np.nan_to_num(np.rint(-(lo / scale).astype(F32)), nan=0.0), 0, 15)
        z = z.astype(np.uint8)
        zeros = z
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = (F32(1) / scale).astype(F32)
        prod = (w * np.repeat(inv, group_size, axis=1)).astype(F32)
        r = np.rint(np.nan_to_num(prod, nan=0.0))
    zf = np.repeat(z.astype(F32), group_size, axis=1)
    if symmetric:
        u = np.clip(r, -8, 7) + 8
    else:
        u = np.clip(r + zf, 0, 15)
    return pack_int4(u.astype(np.uint8)), scale, zeros


def dequantize_int4(qweight, scales, zeros: Optional[np.ndarray], group_size: int) -> np.ndarray:
    """canonical packed weight -> fp32 [N, K]: (u - z) * scale."""
    u = unpack_int4(qweight).astype(F32)
    n, k = u.shape
    check_group("dequantize_int4", k, group_size, whole_k=True)
    z = np.full((n, k // group_size), 8, F32) if zeros is None else np.asarray(zeros, F32)
    s = np.asarray(scales, F32)
    if s.shape != (n, k // group_size) or z.shape != s.shape:
        raise ValueError(
            f"scales/zeros must be [N, K // G] = {(n, k // group_size)}; "
            f"got {s.shape} and {z.shape}")
    return ((u - np.repeat(z, group_size, axis=1)) * np.repeat(s, group_size, axis=1)).astype(F32)


def _unpack_int32_nibbles(packed: np.ndarray) -> np.ndarray:
    """int32 [..., C] -> uint8 [..., C, 8]: nibble i (bits 4i..4i+3) at position i."""
    p = np.asarray(packed).astype(np.int64) & 0xFFFFFFFF
    shifts = np.arange(8, dtype=np.int64) * 4
    return ((p[..., None] >> shifts) & 0xF).astype(np.uint8)


def import_awq(qweight, qzeros, scales, group_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AWQ (GEMM format) -> canonical (qweight [N, K//2], scales [N, K//G], zeros [N, K//G]).

    AWQ stores ``qweight`` int32 [K, N/8] and ``qzeros`` int32 [K/G, N/8], each int32 holding
    8 output columns in the interleaved order 0,2,4,6,1,3,5,7, and ``scales`` [K/G, N].
    Its zeros are the true zero points.
    """
    qweight, qzeros, scales = np.asarray(qweight), np.asarray(qzeros), np.asarray(scales)
    k, n8 = qweight.shape
    n = n8 * 8
    check_group("import_awq", k, group_size)
    if qzeros.shape != (k // group_size, n8) or scales.shape != (k // group_size, n):
        raise ValueError(
            f"AWQ qzeros must be [K/G, N/8] = {(k // group_size, n8)} and scales [K/G, N] = "
            f"{(k // group_size, n)}; got {qzeros.shape} and {scales.shape}")
    order = np.argsort(AWQ_PACK_ORDER)  # column j lives at nibble order[j]

    def columns(packed):
        nib = _unpack_int32_nibbles(packed)[..., order]  # [..., N/8, 8] in column order
        return nib.reshape(packed.shape[0], n)

    u = columns(qweight)  # [K, N]
    z = columns(qzeros)  # [K/G, N]
    return pack_int4(u.T), np.ascontiguousarray(scales.T), np.ascontiguousarray(z.T)


def import_gptq(qweight, qzeros, scales, g_idx=None, *, group_size: int, version: int = 1):
    """GPTQ -> canonical (qweight, scales, zeros, perm).

    GPTQ stores ``qweight`` int32 [K/8, N] packing 8 consecutive k (nibble i holds k = 8r + i),
    ``qzeros`` int32 [num_groups, N/8] packing 8 consecutive columns, ``scales``
    [num_groups, N]. Format v1 stores ``zero - 1`` (wrapping in 4 bits), v2 the true zero.
    ``g_idx`` [K] gives each k's group; when it is not ``k // G`` (act-order checkpoints), the
    K axis is reordered so that groups are contiguous, and ``perm`` (int64 [K]) is returned:
    the GEMM must read ``x[:, perm]``. Otherwise ``perm`` is None.
    """
    qweight, qzeros, scales = np.asarray(qweight), np.asarray(qzeros), np.asarray(scales)
    if version not in (1, 2):
        raise ValueError(f"version must be 1 or 2; got {version}")
    k8, n = qweight.shape
    k = k8 * 8
    group_size = int4_group_size(group_size, k)  # a checkpoint's -1: per channel
    check_group("import_gptq", k, group_size, whole_k=True)
    ng = k // group_size
    if qzeros.shape != (ng, n // 8) or scales.shape != (ng, n):
        raise ValueError(
            f"GPTQ qzeros must be [K/G, N/8] = {(ng, n // 8)} and scales [K/G, N] = {(ng, n)}; "
            f"got {qzeros.shape} and {scales.shape}")
    u = _unpack_int32_nibbles(qweight)  # [K/8, N, 8]
    u = u.transpose(0, 2, 1).reshape(k, n)  # [K, N]
    z = _unpack_int32_nibbles(qzeros).reshape(ng, n)  # [K/G, N]
    if version == 1:
        z = ((z.astype(np.int16) + 1) & 0xF).astype(np.uint8)
    perm = None
    if g_idx is not None:
        g_idx = np.asarray(g_idx).astype(np.int64)
        if g_idx.shape != (k,):
            raise ValueError(f"g_idx must be [K] = ({k},); got {g_idx.shape}")
        if g_idx.min(initial=0) < 0 or g_idx.max(initial=0) >= ng:
            raise ValueError(f"g_idx values must lie in [0, {ng})")
        if not np.array_equal(g_idx, np.arange(k) // group_size):
            perm = np.argsort(g_idx, kind="stable")
            if not np.array_equal(g_idx[perm], np.arange(k) // group_size):
                raise ValueError(f"g_idx must assign exactly {group_size} k to every group")
            u = u[perm]
    return pack_int4(u.T), np.ascontiguousarray(scales.T), np.ascontiguousarray(z.T), perm
