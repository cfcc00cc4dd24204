"""Tile configs of the Triton fp8_scaled_mm (accurate mode) against torch._scaled_mm and the
CUDA kernel, then the Triton rows that looked wrong, re-timed in detail; with ``--op int8``,
the tile configs of the Triton int8_gemm instead. One GPU:

    python -m bench.sweep_triton_gemm [--md PATH] [--rep-ms 40] [--parts configs,anomalies]
    python -m bench.sweep_triton_gemm --op int8 [--shapes 512x4096x4096,...]

configs: rowwise scales, bf16 out, promoted accumulation; each shape runs every GemmConfig of
CONFIGS through ``fp8_scaled_mm_launcher(..., config=...)``, bound once per config as the
backend's prepared path binds it (lowbit.bench.cases.bound_once), beside the anchor
(``torch._scaled_mm``, rowwise) and ``sm90_fp8_gemm_wgmma`` where the build has it. A config
that does not compile or launch gets an ``error:`` row and the sweep goes on; ``regs`` /
``spills`` come from the compiled kernel (ptxas), so a slow row can be told from a spilling
one.

anomalies: the table's own config (``config=None``) and every registered Triton kernel, on rows
whose timings looked off, beside the anchor and the CUDA kernels: median, p20 and p80 of the
L2-flushed time; the same for a CUDA-graph replay (GPU time without the host); and
back-to-back wall time per call, eager and replayed (host overhead shows as their gap).

int8 (configs only): per-token x per-channel scales, bf16 out, each GemmConfig of
INT8_CONFIGS through ``int8_gemm_launcher(..., config=...)``, bound once, beside
``torch._int_mm`` plus the same epilogue in torch (the anchor) and ``sm90_int8_gemm_wgmma``
(the CUDA time the Triton backend is held to: within 1.5x), at M = 128-512, where the table's
rows (copied from fp8 fast_accum's) were never timed on a GPU.

``err`` is the relative Frobenius difference from the anchor's bf16 output (block rows: from
the dequantized operands' float64 product rounded to bf16, as the anchor ignores block
scales); above ERR_LIMIT the row is flagged WRONG.
"""
from __future__ import annotations

import argparse

import torch
import triton

import lowbit
from lowbit.scale_layout import scale_tile
from lowbit.triton_kernels import fp8_gemm, int8_gemm
from lowbit.triton_kernels.heuristics import (GemmConfig, fp8_gemm_config, gemm_smem_bytes,
                                              int8_gemm_config)

from lowbit.bench import table
from lowbit.bench.cases import (bound_once, error_text, fp8_operands, int8, prepared_call,
                                rel_err, runnable_kernels, scaled_mm_anchor, scales)
from lowbit.bench.matrix import parse_shapes
from lowbit.bench.timing import bench, capture_graph, eager_host_us

SHAPES = [(2048, 4096, 4096), (4096, 4096, 4096), (512, 4096, 14336), (512, 28672, 8192),
          (4096, 14336, 4096), (8192, 8192, 8192)]
# 128 x 128 x 128 at 8 warps (the table's large-M tile) over stages, L2 grouping and the
# K unroll; K_UNROLL = 2 doubles the bytes per stage, so it gets 2 and 3 stages (128 and
# 192 KB, the 4- and 6-stage footprints of K_UNROLL = 1). Then wider tiles, where the
# promoted mode's two fp32 accumulators may spill (sm_90a cross-compiles with triton 3.6
# spill at 64 x 256 with 4 warps and at 256 x 128 with 8).
CONFIGS = (
    [GemmConfig(128, 128, 128, g, 8, s) for g in (8, 16) for s in (3, 4, 5)]
    + [GemmConfig(128, 128, 128, g, 8, s, 2) for g in (8, 16) for s in (2, 3)]
    + [GemmConfig(64, 256, 128, 8, w, 4) for w in (4, 8)]
    + [GemmConfig(256, 128, 128, 8, 8, 4)]
)
ANOMALIES = [(64, 4096, 4096, "row"), (64, 14336, 4096, "block"), (1, 4096, 14336, "block"),
             (64, 14336, 4096, "row"), (64, 4096, 4096, "block"), (1, 4096, 4096, "block")]
CUDA_KERNEL = "sm90_fp8_gemm_wgmma"
ERR_LIMIT = 1e-3
# int8: the M range where the Triton GEMM trailed the CUDA one by more than 1.5x (bench/
# NOTES.md, "Every family's table at 9df9dd9"), the four weights at each M, and one M = 4096.
INT8_SHAPES = [(m, n, k) for m in (128, 256, 512)
               for n, k in ((4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192))]
INT8_SHAPES.append((4096, 4096, 4096))
# The table's 128 x 128 and 128 x 256 tiles over stages and L2 grouping; tiles of half the
# rows or columns, which double the grid where 128 x 128 leaves SMs idle (32 tiles at
# 128 x 4096, 64 at 512 x 4096 with 128 x 256); 64-wide K-steps with deeper pipelines.
# int32 accumulates exactly: no promotion, so no second accumulator to spill.
INT8_CONFIGS = (
    [GemmConfig(128, 128, 128, g, 8, s) for g in (4, 8) for s in (3, 4, 5)]
    + [GemmConfig(128, 256, 128, 8, 8, s) for s in (3, 4)]
    + [GemmConfig(64, 128, 128, 8, w, s) for w in (4, 8) for s in (4, 6)]
    + [GemmConfig(128, 64, 128, 8, 4, s) for s in (4, 6)]
    + [GemmConfig(64, 256, 128, 8, 8, 4), GemmConfig(128, 128, 64, 8, 8, 6)]
)
INT8_CUDA_KERNEL = "sm90_int8_gemm_wgmma"


def config_name(cfg: GemmConfig) -> str:
    return (f"triton {cfg.block_m}x{cfg.block_n}x{cfg.block_k} g{cfg.group_m} w{cfg.num_warps} "
            f"s{cfg.num_stages} u{cfg.k_unroll} ({gemm_smem_bytes(cfg) >> 10} KB)")


def err_note(err) -> str:
    if err is None:
        return ""
    return f"{err:.1e}" + (" WRONG" if err > ERR_LIMIT else "")


_JIT = {"fp8": lambda: fp8_gemm._fp8_scaled_mm_kernel,
        "int8": lambda: int8_gemm._int8_gemm_kernel}
_op = ["fp8"]  # the family main() sweeps


def compiled_kernels() -> dict:
    """id -> CompiledKernel that Triton holds for the swept GEMM kernel on this device. Reads
    Triton's JIT cache (its layout in triton 3.6 - 3.9); empty where that has moved."""
    try:
        cache = _JIT[_op[0]]().device_caches[torch.cuda.current_device()][0]
        return {id(k): k for k in cache.values()}
    except Exception:  # noqa: BLE001 - the register count is a nicety, never a failure
        return {}


def resources(before: dict) -> str:
    """regs / spills of the kernels compiled since `before`."""
    new = [k for i, k in compiled_kernels().items() if i not in before]
    return "; ".join(f"{getattr(k, 'n_regs', '?')} regs, {getattr(k, 'n_spills', '?')} spills"
                     for k in new)


def reference(a, b, sa, sb, mode):
    """What a correct bf16 output is compared with: the anchor's for row scales; for block
    scales the float64 product of the operands dequantized by lowbit, rounded to bf16."""
    if mode != "block":
        return scaled_mm_anchor(a, b, sa, sb, mode)()
    ad = lowbit.dequantize_fp8(a, sa, out_dtype=torch.float32).double()
    bd = lowbit.dequantize_fp8(b, sb, out_dtype=torch.float32).double()
    return (ad @ bd.t()).to(torch.bfloat16)


# ------------------------------------------------------------------------ configs sweep
CONFIG_COLUMNS = (
    ("M x N x K", lambda r: r["shape"]),
    ("kernel", lambda r: r["impl"]),
    ("us", lambda r: table.us(r.get("median_us"))),
    ("TFLOP/s", lambda r: table.num(r.get("tflops"), ".0f")),
    ("vs anchor", lambda r: table.ratio(r.get("vs_anchor"))),
    ("err", lambda r: err_note(r.get("err"))),
    ("note", lambda r: "; ".join(x for x in (r.get("error"), r.get("note")) if x)),
)


def _tiles(a, b, sa, sb):
    # What lowbit's Triton backend passes the kernel: the scale tiles read off the shapes.
    return dict(a_tile=scale_tile(sa.shape, a.shape), b_tile=scale_tile(sb.shape, b.shape))


def config_rows(m, n, k, rep, rep_ms):
    a, b, sa, sb = fp8_operands(m, n, k, "row")
    tiles = _tiles(a, b, sa, sb)
    args = (a, b, sa, sb, None, torch.bfloat16, False)
    anchor_fn = scaled_mm_anchor(a, b, sa, sb, "row")
    table_cfg = fp8_gemm_config(m, n, k)
    fns = [("torch._scaled_mm", anchor_fn, "")]
    fns += [(kern.name, prepared_call(kern, args), "")
            for kern in runnable_kernels("fp8_scaled_mm", args, ("cuda",), names=(CUDA_KERNEL,))]
    fns += [(config_name(cfg),
             bound_once(lambda cfg=cfg: fp8_gemm.fp8_scaled_mm_launcher(*args, cfg, **tiles),
                        args),
             "table" if cfg == table_cfg else "") for cfg in CONFIGS]
    yield from _time_rows(m, n, k, fns, anchor_fn, rep, rep_ms)


def int8_config_rows(m, n, k, rep, rep_ms):
    a, b, sa, sb = int8(m, k), int8(n, k), scales(m, 1), scales(n, 1)
    args = (a, b, sa, sb, None, torch.bfloat16, None)

    def anchor_fn():  # what a torch user writes: _int_mm, then the epilogue in torch
        return (torch._int_mm(a, b.t()).float() * sa * sb.t()).to(torch.bfloat16)

    table_cfg = int8_gemm_config(m, n, k)
    fns = [("torch._int_mm + torch epilogue", anchor_fn, "")]
    fns += [(kern.name, prepared_call(kern, args), "")
            for kern in runnable_kernels("int8_gemm", args, ("cuda",), names=(INT8_CUDA_KERNEL,))]
    cfgs = list(INT8_CONFIGS) + ([table_cfg] if table_cfg not in INT8_CONFIGS else [])
    fns += [(config_name(cfg),
             bound_once(lambda cfg=cfg: int8_gemm.int8_gemm_launcher(*args, config=cfg), args),
             "table" if cfg == table_cfg else "") for cfg in cfgs]
    yield from _time_rows(m, n, k, fns, anchor_fn, rep, rep_ms)


def _time_rows(m, n, k, fns, anchor_fn, rep, rep_ms):
    """A row per (name, fn, note) of ``fns``: its median time, its error against the
    anchor's output and its speed against the anchor's time."""
    ref = anchor_fn()
    t_anchor = None
    for name, fn, note in fns:
        row = dict(shape=f"{m}x{n}x{k}", impl=name)
        try:
            before = compiled_kernels()
            out = fn()  # compiles, and is the output checked
            row["note"] = "; ".join(x for x in (note, resources(before)) if x)
            us = row["median_us"] = bench(fn, rep=rep, rep_ms=rep_ms)["median_us"]
        except Exception as e:  # noqa: BLE001 - a config that fails is a row, not an abort
            yield dict(row, error=error_text(e))
            continue
        if fn is anchor_fn:
            t_anchor = us
        else:
            row["err"] = rel_err(out, ref)
        yield dict(row, tflops=2.0 * m * n * k / us / 1e6,
                   vs_anchor=t_anchor / us if t_anchor else None)


# ---------------------------------------------------------------------- anomaly re-timing
_STATS = ("median", "p20", "p80")
ANOMALY_COLUMNS = (
    ("M x N x K", lambda r: r["shape"]),
    ("scales", lambda r: r["mode"]),
    ("kernel", lambda r: r["impl"]),
    *((f"{q} us", lambda r, q=q: table.us(r.get(f"{q}_us"))) for q in _STATS),
    *((f"graph {q}", lambda r, q=q: table.us(r.get(f"graph_{q}_us"))) for q in _STATS),
    ("eager b2b us/call", lambda r: table.us(r.get("b2b_us"))),
    ("graph b2b us/call", lambda r: table.us(r.get("b2b_graph_us"))),
    ("err", lambda r: r.get("error") or err_note(r.get("err"))),
)


def anomaly_rows(m, n, k, mode, rep, rep_ms):
    a, b, sa, sb = fp8_operands(m, n, k, mode)
    tiles = _tiles(a, b, sa, sb)
    args = (a, b, sa, sb, None, torch.bfloat16, False)
    ref = reference(a, b, sa, sb, mode)
    cfg = fp8_gemm_config(m, n, k, blockwise=mode == "block")
    fns = [("torch._scaled_mm" + (" (rowwise)" if mode == "block" else ""),
            scaled_mm_anchor(a, b, sa, sb, mode)),
           (f"fp8_scaled_mm(config=None) = {config_name(cfg)}",
            lambda: fp8_gemm.fp8_scaled_mm(a, b, sa, sb, **tiles))]
    fns += [(kern.name, prepared_call(kern, args))
            for kern in runnable_kernels("fp8_scaled_mm", args)]
    for i, (name, fn) in enumerate(fns):
        row = dict(shape=f"{m}x{n}x{k}", mode=mode, impl=name)
        try:
            out = fn()
            eager = bench(fn, rep=rep, rep_ms=rep_ms)
            graph = capture_graph(fn)
            replay = bench(graph, rep=rep, rep_ms=rep_ms)
            row.update(b2b_us=eager_host_us(fn), b2b_graph_us=eager_host_us(graph))
        except Exception as e:  # noqa: BLE001
            yield dict(row, error=error_text(e))
            continue
        # The rowwise anchor of a block row computes something else: no error for it.
        row["err"] = None if i == 0 and mode == "block" else rel_err(out, ref)
        for q in _STATS:
            row[f"{q}_us"], row[f"graph_{q}_us"] = eager[f"{q}_us"], replay[f"{q}_us"]
        yield row


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--md", help="also write the tables to this markdown file")
    ap.add_argument("--rep", type=int, default=100, help="at most this many timed calls")
    ap.add_argument("--rep-ms", type=float, default=40,
                    help="timed calls per row: as many as fit in this many ms (at least 5)")
    ap.add_argument("--parts", default="configs,anomalies",
                    help="comma-separated: configs (the tile sweep), anomalies (the re-timing; "
                         "fp8 only)")
    ap.add_argument("--op", choices=("fp8", "int8"), default="fp8",
                    help="the Triton GEMM swept: fp8_scaled_mm (default) or int8_gemm")
    ap.add_argument("--shapes", help="M x N x K list instead of the op's own shapes")
    args = ap.parse_args()
    _op[0] = args.op
    parts = args.parts.split(",") if args.op == "fp8" else ["configs"]
    try:
        shapes = (parse_shapes(args.shapes) if args.shapes else
                  SHAPES if args.op == "fp8" else INT8_SHAPES)
    except ValueError as e:
        ap.error(str(e))
    if any(len(s) != 3 for s in shapes):
        ap.error("--shapes: GEMM shapes are M x N x K")
    torch.manual_seed(0)
    mode = ("accurate mode (promoted)" if args.op == "fp8" else
            "int8_gemm, per-token x per-channel scales")
    lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
             f"{triton.__version__}; {mode}, bf16 out; err > {ERR_LIMIT:g} is flagged WRONG"]
    print(lines[0], flush=True)

    def section(title, columns, groups):
        rows = []
        for shape, gen in groups:
            try:
                for row in gen:  # one at a time: a long sweep shows progress
                    print(table.format_table([row], columns).splitlines()[-1], flush=True)
                    rows.append(row)
            except Exception as e:  # noqa: BLE001 - e.g. the anchor refusing a shape
                rows.append(dict(shape=shape, mode="", impl="-", error=error_text(e)))
            torch.cuda.empty_cache()
        lines.extend(["", f"## {title}", "", table.format_table(rows, columns, markdown=True)])

    if "configs" in parts:
        rows_of = config_rows if args.op == "fp8" else int8_config_rows
        section(f"Triton {args.op} tile configs, rowwise scales", CONFIG_COLUMNS,
                ((f"{m}x{n}x{k}", rows_of(m, n, k, args.rep, args.rep_ms))
                 for m, n, k in shapes))
    if "anomalies" in parts:
        section("Anomalous rows with the table's configs (us; graph = CUDA-graph replay; "
                "b2b = back-to-back wall time, no L2 flush)", ANOMALY_COLUMNS,
                ((f"{m}x{n}x{k} {mode}", anomaly_rows(m, n, k, mode, args.rep, args.rep_ms))
                 for m, n, k, mode in ANOMALIES))
    print("\n".join(lines[1:]), flush=True)
    if args.md:
        with open(args.md, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
