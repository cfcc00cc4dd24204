"""Tile and launch choices for lowbit's Triton kernels, kept apart from the launchers.

Nothing here autotunes on the hot path: each choice is a table lookup on the problem size
(``FP8_GEMM_TABLE``, ``INT8_GEMM_TABLE``). ``fp8_gemm_configs()`` builds the search space
for offline tuning (``LOWBIT_TRITON_AUTOTUNE=1`` or ``bench/``); the winners go into the
tables by hand.

Plain Python (no triton import), so the tables can be read and tested anywhere.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional


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
    # K-steps per loop iteration (1 or 2). With 2 the accurate mode writes two dots before
    # promoting either, so that the second wgmma may overlap the first's promotion; each
    # pipeline stage then holds two K-steps of operands.
    k_unroll: int = 1


# By M bucket (the largest M the row serves), one config for the accurate (promoted) mode,
# one for block scales and one for fast_accum. The measurements behind each row are in
# bench/NOTES.md ("Triton fp8 GEMM table"). Why the rows look as they do:
# - The promoted mode keeps two fp32 accumulators (the running sum and the K-step's partial
#   product): at 128 x 256 they spill, so its large tiles are 128 x 128. Block-scaled inputs
#   take 128 x 128 too.
# - Above M = 128 the accurate mode takes two K-steps per iteration (k_unroll 2): Triton
#   still waits for each dot before promoting it, so the gain is one loop iteration (its
#   cp.async wait and barrier) per two steps. M = 129-1024 take L2 groups of 4 row tiles,
#   larger M groups of 16, where each won. Block scales keep k_unroll 1: unrolled, they
#   need 255 registers and spill.
# - M <= 16 (decode) is a weight stream: narrow N tiles put more programs on the SMs and
#   deep pipelines keep loads in flight. BLOCK_M = 16 runs mma.sync, whose fp8 accumulation
#   is full fp32 (promotion changes nothing there).
# BLOCK_K is 128 everywhere: one fp8 K-step is one 128-wide scale block (DeepSeek-V3 block
# scales apply once per step) and the promotion interval of the accurate mode.
_PROMOTED_LARGE = GemmConfig(128, 128, 128, 8, 8, 4)
_PROMOTED_MID = GemmConfig(128, 128, 128, 4, 8, 3, k_unroll=2)
FP8_GEMM_TABLE: List[tuple] = [
    # max M     promoted (accurate)    block scales    fast_accum
    (16, GemmConfig(16, 64, 128, 1, 4, 5), GemmConfig(16, 64, 128, 1, 4, 5),
     GemmConfig(16, 64, 128, 1, 4, 5)),
    (64, GemmConfig(64, 64, 128, 8, 4, 4), GemmConfig(64, 64, 128, 8, 4, 4),
     GemmConfig(64, 64, 128, 8, 4, 4)),
    (128, _PROMOTED_LARGE, _PROMOTED_LARGE, GemmConfig(128, 128, 128, 8, 8, 3)),
    (256, _PROMOTED_MID, _PROMOTED_LARGE, GemmConfig(128, 128, 128, 8, 8, 3)),
    (1024, _PROMOTED_MID, _PROMOTED_LARGE, GemmConfig(128, 256, 128, 8, 8, 3)),
    (1 << 62, GemmConfig(128, 128, 128, 16, 8, 3, k_unroll=2), _PROMOTED_LARGE,
     GemmConfig(128, 256, 128, 8, 8, 3)),
]

_gemm_cache: Dict[tuple, GemmConfig] = {}


def fp8_gemm_config(m: int, n: int, k: int, fast_accum: bool = False,
                    blockwise: bool = False, smem_limit: Optional[int] = None,
                    decoded: bool = False) -> GemmConfig:
    """The table's config for an [m, k] x [n, k] problem (block scales take their own column
    whatever fast_accum says: they force the per-step form), with tiles shrunk to the problem
    (never below tl.dot's 16) so small and awkward shapes waste little work, and the
    pipeline shrunk to ``smem_limit`` bytes (the device's shared memory per block: the table
    is the H100's 227 KB; an sm_89 or sm_86 card gives 99 KB) by fewer K-steps per
    iteration, then fewer stages, then narrower tiles.

    ``decoded``: the kernel decodes its fp8 operands to fp16 before each dot (e4m3fnuz off
    CDNA3, lowbit.triton_kernels.fp8_gemm): one K-step per iteration, and the fit counts the
    fp16 copy of a step's tiles that the dot reads beside the fp8 pipeline. Not tuned: the
    decoded kernel is the portable path of a format that NVIDIA GPUs do not multiply."""
    mode = 1 if blockwise else 2 if fast_accum else 0
    cfg = _table_config(FP8_GEMM_TABLE, "fp8", m, n, k, mode, smem_limit)
    if decoded:
        cfg = cfg._replace(k_unroll=1)
        if smem_limit is not None:
            cfg = _fit_smem(cfg, smem_limit, staged=2)
    return cfg


def _table_config(table, family: str, m: int, n: int, k: int, column: int,
                  smem_limit: Optional[int]) -> GemmConfig:
    """The config of ``table``'s ``column`` for the first row whose max M holds m, shrunk to
    the problem and to ``smem_limit`` (see fp8_gemm_config); cached per size class."""
    key = (family, next_pow2(m), next_pow2(n), min(next_pow2(k), 128), column, smem_limit)
    cfg = _gemm_cache.get(key)
    if cfg is None:
        for max_m, *configs in table:
            if key[1] <= max_m:
                cfg = configs[column]
                break
        cfg = _fit_problem(cfg, m, n, k)
        if smem_limit is not None:
            cfg = _fit_smem(cfg, smem_limit)
        _gemm_cache[key] = cfg
    return cfg


def _fit_problem(cfg: GemmConfig, m: int, n: int, k: int) -> GemmConfig:
    """``cfg``'s tiles shrunk to the problem's powers of two (never below tl.dot's 16; K-steps
    of 32 at least, 128 at most)."""
    bm = max(16, min(cfg.block_m, next_pow2(m)))
    bn = max(16, min(cfg.block_n, next_pow2(n)))
    bk = max(32, min(cfg.block_k, next_pow2(k), 128))
    # Two K-steps per iteration only for full 128-wide steps (the promotion interval).
    return cfg._replace(block_m=bm, block_n=bn, block_k=bk,
                        k_unroll=cfg.k_unroll if bk == 128 else 1)


def _fit_smem(cfg: GemmConfig, limit: int, staged: int = 0) -> GemmConfig:
    return _shrink_to(cfg, limit, lambda c: gemm_smem_bytes(c, staged))


def _shrink_to(cfg: GemmConfig, limit: int, size, min_k: Optional[int] = None) -> GemmConfig:
    """``cfg`` with one K-step per iteration, then fewer stages (2 at least), then (with
    ``min_k``) shorter K-steps down to ``min_k``, then narrower N and M tiles (16 at least),
    until its ``size(cfg)`` bytes of shared memory fit ``limit``."""
    while size(cfg) + SMEM_MARGIN > limit:
        if cfg.k_unroll > 1:
            cfg = cfg._replace(k_unroll=1)
        elif cfg.num_stages > 2:
            cfg = cfg._replace(num_stages=cfg.num_stages - 1)
        elif min_k is not None and cfg.block_k > min_k:
            cfg = cfg._replace(block_k=cfg.block_k // 2)
        elif cfg.block_n > 16:
            cfg = cfg._replace(block_n=cfg.block_n // 2)
        elif cfg.block_m > 16:
            cfg = cfg._replace(block_m=cfg.block_m // 2)
        else:
            break
    return cfg


def gemm_smem_bytes(cfg: GemmConfig, staged: int = 0) -> int:
    """The fp8 operand bytes the software pipeline keeps in shared memory, plus ``staged``
    bytes per element of one K-step's tiles converted for the dot (2: decoded to fp16)."""
    step = (cfg.block_m + cfg.block_n) * cfg.block_k * cfg.k_unroll
    return cfg.num_stages * step + staged * step


# What the pipeline may take of the 228 KB of shared memory an H100 SM has.
GEMM_SMEM_LIMIT = 200 * 1024
# Left beside the pipeline for Triton's barriers and scratch.
SMEM_MARGIN = 2 * 1024


def fp8_gemm_configs() -> List[GemmConfig]:
    """The offline search space: BLOCK_K <= 128 always (the 128-block scales and the
    accurate mode's promotion interval depend on it); K_UNROLL = 2 (two K-steps per
    iteration) only with BLOCK_K = 128, the promotion interval it is for."""
    out = []
    for bm in (16, 32, 64, 128):
        for bn in (32, 64, 128, 256):
            for bk in (64, 128):
                for warps in (4, 8):
                    for stages in (2, 3, 4, 5):
                        for k_unroll in ((1, 2) if bk == 128 else (1,)):
                            if bm * bn >= 128 * 256 and warps == 4:
                                continue
                            # Two stages only when unrolled (each holds two K-steps).
                            if stages == 2 and k_unroll == 1:
                                continue
                            cfg = GemmConfig(bm, bn, bk, 8, warps, stages, k_unroll)
                            if gemm_smem_bytes(cfg) <= GEMM_SMEM_LIMIT:
                                out.append(cfg)
    return out


# ----------------------------------------------------------------------------- int8 GEMM
# By M bucket, one config (int8_mm and int8_gemm alike: the epilogue is per output element).
# int32 accumulates exactly, so there is no promotion and no second accumulator: tiles may
# be as large as fp8 fast_accum's. BLOCK_K = 128 int8 bytes is one 128-byte row per operand
# row per stage, as for fp8. M <= 16 (decode) streams the weight: narrow N tiles, deep
# pipelines, mma.sync (BLOCK_M = 16). The rows to M = 64 and above 512 copy fp8
# fast_accum's (the same shape of work with the same operand bytes). M = 65-128 and
# 129-512 are bench/sweep_triton_gemm.py --op int8's picks (bench/pick_triton_table.py;
# H100, 2026-12-07, 23:31 UTC; us at N x K = 4096 x 4096 / 4096 x 14336, against the CUDA
# wgmma kernel's in the same run): M = 128, 128 x 64 tiles in six stages 18.9 / 46.2
# (CUDA 19.3 / 46.6; the copied 128 x 128 x 3 ran 27.6 / 78.7); M = 512, 64 x 128 in four
# stages 23.6 / 63.4 (CUDA 20.1 / 48.5; the copied 128 x 256 ran 36.3 / 101.9). More rows
# a program lose here: at N = 4096 they leave most of the 132 SMs without a tile.
INT8_GEMM_TABLE: List[tuple] = [
    (16, GemmConfig(16, 64, 128, 1, 4, 5)),
    (64, GemmConfig(64, 64, 128, 8, 4, 4)),
    (128, GemmConfig(128, 64, 128, 8, 4, 6)),
    (512, GemmConfig(64, 128, 128, 8, 8, 4)),
    (1 << 62, GemmConfig(128, 256, 128, 8, 8, 3)),
]


def int8_gemm_config(m: int, n: int, k: int, smem_limit: Optional[int] = None) -> GemmConfig:
    """The table's config for an int8 [m, k] x [n, k] problem, shrunk to the problem and to
    ``smem_limit`` bytes as fp8_gemm_config does."""
    return _table_config(INT8_GEMM_TABLE, "int8", m, n, k, 0, smem_limit)


# ----------------------------------------------------------------- W4A16 / W8A16 GEMM
# By M bucket, one config for the weight-only kernel (wxa16_gemm.py, int4 and int8 weights
# alike). M <= WXA16_DECODE_MAX_M is the decode regime: a weight stream split along K
# (``wxa16_split_k``) so one row keeps every SM busy; narrow N tiles, BLOCK_M = 16 (tl.dot's
# least), deep pipelines. Larger M tiles without a split. BLOCK_K is capped at the group size
# (each K-step lies in one scale group). The rows come from bench/sweep_triton_wxa16.py
# (H100, 2026-12-06, int4 group 128 and int8 per channel, bf16; bench/NOTES.md):
# - M = 17-64: 128-wide K-steps and 4 stages, BLOCK_N halved (to 32 at least) while the grid
#   has fewer tiles than the card has SMs: 64-wide N tiles at N = 14336 and 32-wide at 4096
#   came within 4% of the best of 72-108 configs on each of six shapes.
# - M = 65-256: 128 x 128 tiles (one conversion of a weight tile serves 128 rows), while
#   they make at least WXA16_FILL of the SMs' worth of tiles; else the first of
#   WXA16_FILL_TILES that does (the last if none does). Each choice was the best of the 36
#   configs swept at 128 and 256 x {4096, 14336} x 4096, int4 and int8, or within 1% of it:
#   69.6 / 55.0 us (int4 / int8) at 128 x 14336 (128 x 128 x 128), 32.2 / 26.4 at 128 x 4096
#   (64 x 32 x 128: 128 x 128 makes 32 tiles, 64 x 64 x 128 ran 34.4 / 29.7), 109.5 / 82.1 at
#   256 x 14336 (128 x 128 x 64: 128-wide K-steps ran 1.2x slower there), 41.3 / 33.2 at
#   256 x 4096 (128 x 64 x 128).
# Above the fused kernel's range (lowbit/backends/triton.py, DEQUANT_MIN_M) the backend
# dequantizes the weight for a dense GEMM (bf16 and fp16 x); the last row serves fp32 x and
# pinned calls there, as the table gives it (no fill tiles), and is not tuned on a GPU.
WXA16_DECODE_MAX_M = 16
WXA16_NARROW_MAX_M = 64
WXA16_GEMM_TABLE: List[tuple] = [
    (WXA16_DECODE_MAX_M, GemmConfig(16, 64, 128, 1, 4, 4)),
    (64, GemmConfig(64, 64, 128, 8, 4, 4)),
    (128, GemmConfig(128, 128, 128, 8, 8, 3)),
    (256, GemmConfig(128, 128, 64, 8, 8, 3)),
    (1 << 62, GemmConfig(128, 128, 64, 8, 8, 3)),
]
WXA16_FILL = 0.75
WXA16_FILL_MAX_M = 256
WXA16_FILL_TILES = (GemmConfig(128, 64, 128, 8, 8, 4), GemmConfig(64, 32, 128, 8, 4, 4))
# The splits of a decode GEMM aim at this many programs per SM.
WXA16_PROGRAMS_PER_SM = 2


def wxa16_gemm_config(m: int, n: int, k: int, group_size: int, bits: int = 4,
                      x_bytes: int = 2, smem_limit: Optional[int] = None,
                      sm_count: Optional[int] = None) -> GemmConfig:
    """The table's config for x [m, k] (``x_bytes`` an element) times a ``bits``-bit weight
    [n, k] quantized in groups of ``group_size`` along K (0: per channel), shrunk to the
    problem and to ``smem_limit`` bytes (wxa16_fit_smem); BLOCK_K never exceeds the group, so
    a K-step never straddles two scales. With ``sm_count`` given: at M = 17-64 (no K split)
    BLOCK_N is halved (to 32 at least) while the tiles number fewer than the SMs; at
    M = 65-256 a tile of WXA16_FILL_TILES replaces the row's where the row's tiles fill less
    than WXA16_FILL of the SMs."""
    def tiles(c: GemmConfig) -> int:
        return -(-m // c.block_m) * -(-n // c.block_n)

    cfg = _table_config(WXA16_GEMM_TABLE, "wxa16", m, n, k, 0, None)
    if sm_count and WXA16_DECODE_MAX_M < m <= WXA16_NARROW_MAX_M:
        while cfg.block_n > 32 and tiles(cfg) < sm_count:
            cfg = cfg._replace(block_n=cfg.block_n // 2)
    elif (sm_count and WXA16_NARROW_MAX_M < m <= WXA16_FILL_MAX_M
          and tiles(cfg) < WXA16_FILL * sm_count):
        fills = [_fit_problem(c, m, n, k) for c in WXA16_FILL_TILES]
        cfg = next((c for c in fills if tiles(c) >= WXA16_FILL * sm_count), fills[-1])
    if group_size and cfg.block_k > group_size:
        cfg = cfg._replace(block_k=group_size)
    if smem_limit is not None:
        cfg = wxa16_fit_smem(cfg, bits, x_bytes, smem_limit)
    return cfg


def wxa16_fit_smem(cfg: GemmConfig, bits: int, x_bytes: int, limit: int) -> GemmConfig:
    """``cfg`` with fewer stages, then K-steps down to 32, then narrower tiles, until its
    operand tiles fit ``limit`` bytes of shared memory (fp32 activations double x's tile:
    MI300 has 64 KB a program, sm_86 / sm_89 99 KB). Shorter K-steps go before narrower
    tiles so that a 128 x 128 tile keeps converting each weight tile once for 128 rows
    (halving a power-of-two K-step keeps it a divisor of the group)."""
    return _shrink_to(cfg, limit, lambda c: wxa16_smem_bytes(c, bits, x_bytes), min_k=32)


def wxa16_split_k(tiles: int, k_units: int, sm_count: int) -> int:
    """Splits along K of a decode GEMM of ``tiles`` output tiles and ``k_units`` K-steps:
    enough for WXA16_PROGRAMS_PER_SM programs per SM, at least one K-step each."""
    want = -(-(WXA16_PROGRAMS_PER_SM * sm_count) // max(tiles, 1))
    return max(1, min(want, k_units))


def wxa16_smem_bytes(cfg: GemmConfig, bits: int, x_bytes: int = 2) -> int:
    """Operand bytes the pipeline keeps in shared memory: x's tile and the packed weight's."""
    return cfg.num_stages * cfg.block_k * (cfg.block_m * x_bytes + cfg.block_n * bits // 8)


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
