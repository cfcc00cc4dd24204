"""The benchmark matrix of PERF.md, and the shapes a command line gives instead.

GEMM shapes are M x N x K (a [M, K] times a weight [N, K]); cast shapes (quantize,
dequantize) are rows x cols, the activation [M, K] of the same GEMMs; weight shapes (the
weight quantizer) are their weights [N, K].
"""
from __future__ import annotations

NK = ((4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192))  # Llama-3 8B/70B layers
MS = (1, 16, 32, 64, 128, 512, 4096)
CUBE = (8192, 8192, 8192)
BIG_CASTS = ((16384, 8192), (16384, 16384))  # PERF.md's per-token row; 2^28 elements
QUICK_NK = ((4096, 4096),)
QUICK_MS = (1, 16, 128, 4096)
HOST_GEMM = (1, 4096, 4096)  # the decode-sized call of the host-time table


def gemm_shapes(quick: bool = False) -> list[tuple[int, int, int]]:
    if quick:
        return [(m, n, k) for n, k in QUICK_NK for m in QUICK_MS]
    return [(m, n, k) for n, k in NK for m in MS] + [CUBE]


def cast_shapes(gemms: list[tuple], extra: tuple = ()) -> list[tuple[int, int]]:
    """The activations [M, K] of the GEMM shapes (each once, in order), then `extra`."""
    return _once([(g[0], g[2]) for g in gemms if len(g) == 3] + list(extra))


def weight_shapes(shapes: list[tuple]) -> list[tuple[int, int]]:
    """The weights [N, K] of the GEMM shapes (each once, in order), then the rows x cols
    shapes as weights."""
    return _once([(g[1], g[2]) for g in shapes if len(g) == 3]
                 + [g for g in shapes if len(g) == 2])


def _once(shapes: list[tuple]) -> list[tuple]:
    """The shapes in order, each at its first place only."""
    return list(dict.fromkeys(shapes))


def parse_shapes(text: str) -> list[tuple[int, ...]]:
    """'1x4096x4096,16384x8192' -> [(1, 4096, 4096), (16384, 8192)]. Three sizes are
    M x N x K (GEMMs; casts take M x K), two are rows x cols (casts only)."""
    shapes = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            dims = tuple(int(d) for d in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"shape {item!r}: expected sizes joined by 'x', e.g. 1x4096x4096 "
                             "(M x N x K) or 16384x8192 (rows x cols)") from None
        if len(dims) not in (2, 3) or min(dims) < 1:
            raise ValueError(f"shape {item!r}: expected M x N x K or rows x cols, each at least 1")
        shapes.append(dims)
    if not shapes:
        raise ValueError("--shapes: no shape given")
    return shapes


def shape_str(shape: tuple) -> str:
    return "x".join(str(s) for s in shape)
