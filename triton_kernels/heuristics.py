"""Tile and launch choices for lowbit's Triton kernels, kept apart from the launchers.

Nothing here autotunes on the hot path: each choice is a table lookup on the problem size.
``fp8_gemm_configs()`` builds the search space for offline tuning (``LOWBIT_TRITON_AUTOTUNE=1``
or ``bench/``); the winners go into ``FP8_GEMM_TABLE`` by hand.

Plain Python (no triton import), so the tables can be read and tested anywhere.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


# ------------------------------------------------------------------------------ fp8 GEMM
class GemmConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


# By M bucket (the largest M the row serves), one config for the accurate (promoted) mode
# and one for fast_accum. Measured on an H100 SXM (triton 3.6, torch 2.11, 2026-11-27; us):
#
#   M x N x K            promoted 128x256 s3   promoted 128x128 s4   fast 128x256 s3   torch rowwise
#   512 x 4096 x 4096          268                   26.5                 29.1              30.0
#   4096 x 4096 x 4096         347                   172                  110               112
#   4096 x 14336 x 4096       1286                   595                  376               373
#
# - The promoted mode keeps two fp32 accumulators (the running sum and the K-step's partial
#   product): at 128 x 256 they spill, so its large tiles are 128 x 128. Block-scaled inputs
#   take the same configs (221 us at 4096^3 with 128 x 128 s4, 559 with 128 x 256).
# - M <= 16 (decode) is a weight stream: narrow N tiles put more programs on the 132 SMs and
#   deep pipelines keep loads in flight (17.7 us at 1 x 4096 x 4096, torch 20.1; 100 us at
#   16 x 28672 x 8192, torch 108). BLOCK_M = 16 runs mma.sync, whose fp8 accumulation is
#   full fp32 (promotion changes nothing there).
# BLOCK_K is 128 everywhere: one fp8 K-step is one 128-wide scale block (DeepSeek-V3 block
# scales apply once per step) and the promotion interval of the accurate mode.
FP8_GEMM_TABLE: List[tuple] = [
    # max M     promoted (accurate / block scales)   fast_accum
    (16, GemmConfig(16, 64, 128, 1, 4, 5), GemmConfig(16, 64, 128, 1, 4, 5)),
    (64, GemmConfig(64, 64, 128, 8, 4, 4), GemmConfig(64, 64, 128, 8, 4, 4)),
    (256, GemmConfig(128, 128, 128, 8, 8, 4), GemmConfig(128, 128, 128, 8, 8, 3)),
    (1 << 62, GemmConfig(128, 128, 128, 8, 8, 4), GemmConfig(128, 256, 128, 8, 8, 3)),
]

_gemm_cache: Dict[tuple, GemmConfig] = {}


def fp8_gemm_config(m: int, n: int, k: int, fast_accum: bool = False) -> GemmConfig:
    """The table's config for an [m, k] x [n, k] problem, with tiles shrunk to the problem
    (never below tl.dot's 16) so small and awkward shapes waste little work."""
    key = (next_pow2(m), next_pow2(n), min(next_pow2(k), 128), bool(fast_accum))
    cfg = _gemm_cache.get(key)
    if cfg is None:
        for max_m, promoted, fast in FP8_GEMM_TABLE:
            if key[0] <= max_m:
                cfg = fast if fast_accum else promoted
                break
        bm = max(16, min(cfg.block_m, key[0]))
        bn = max(16, min(cfg.block_n, key[1]))
        bk = max(32, min(cfg.block_k, key[2]))
        cfg = cfg._replace(block_m=bm, block_n=bn, block_k=bk)
        _gemm_cache[key] = cfg
    return cfg


def fp8_gemm_configs() -> List[GemmConfig]:
    """The offline search space: BLOCK_K <= 128 always (the 128-block scales and the
    accurate mode's promotion interval depend on it)."""
    out = []
    for bm in (16, 32, 64, 128):
        for bn in (32, 64, 128, 256):
            for bk in (64, 128):
                for warps in (4, 8):
                    for stages in (3, 4, 5):
                        if bm * bn >= 128 * 256 and warps == 4:
                            continue
                        # fp8 operand bytes per stage must fit the 228 KB of an SM.
                        if stages * (bm + bn) * bk > 200 * 1024:
                            continue
                        out.append(GemmConfig(bm, bn, bk, 8, warps, stages))
    return out


# ------------------------------------------------------------------------- quantization
# Elements per program for the elementwise (per-tensor) and dequantize kernels: 16 per
# thread at 8 warps; enough bytes in flight per SM to stream at full bandwidth.
ELEMWISE_BLOCK = 4096
ELEMWISE_WARPS = 8
# A row (or group) up to this long is held in registers between the absmax and the quantize
# pass, so the input is read once; longer rows take a second pass that hits L2.
ROW_MAX_ONE_TILE = 8192
ROW_TILE = 4096
# Under TRITON_INTERPRET=1 a program costs milliseconds of Python whatever its size, and
# NumPy is fast on big arrays: there, tiles hold up to this many elements.
INTERPRET_BLOCK = 1 << 15


def _block(interpret: bool) -> int:
    return INTERPRET_BLOCK if interpret else ELEMWISE_BLOCK


def elementwise_tile(rows: int, cols: int, interpret: bool = False):
    """(BLOCK_R, BLOCK_K) for a [rows, cols] view: whole-width tiles when rows are short."""
    blk = _block(interpret)
    bk = min(next_pow2(cols), blk)
    br = max(1, min(next_pow2(rows), blk // bk))
    return br, bk


def segment_tile(segments: int, seg_len: int, interpret: bool = False):
    """(BLOCK_S, BLOCK_K, ONE_TILE, num_warps) for the per-row / per-group kernel: a program
    takes BLOCK_S segments (rows or groups) of seg_len elements, each with one scale."""
    if seg_len <= ROW_MAX_ONE_TILE:
        bk = max(16, next_pow2(seg_len))
        one = True
    else:
        bk = ROW_TILE
        one = False
    bs = max(1, min(next_pow2(segments), _block(interpret) // bk))
    warps = 8 if bs * bk >= 4096 else 4
    return bs, bk, one, warps


def block2d_sub_rows(interpret: bool = False) -> int:
    """Rows per slice of the 128x128 block quantizer (the whole tile when interpreting)."""
    return 128 if interpret else 32
