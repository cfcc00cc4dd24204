"""Tile configs of the Triton fp8_scaled_mm (accurate mode) against torch._scaled_mm and the
CUDA kernel, then the Triton rows that looked wrong, re-timed in detail. One GPU:

    python -m bench.sweep_triton_gemm [--md PATH] [--rep-ms 40] [--parts configs,anomalies]

configs: rowwise scales, bf16 out, promoted accumulation; each shape runs every GemmConfig of
CONFIGS through ``fp8_scaled_mm(..., config=...)`` beside the anchor (``torch._scaled_mm``,
rowwise) and ``sm90_fp8_gemm_wgmma`` where the build has it. A config that does not compile
or launch gets an ``error:`` row and the sweep goes on; ``regs`` / ``spills`` come from the
compiled kernel (ptxas), so a slow row can be told from a spilling one.

anomalies: the table's own config (``config=None``) and every registered Triton kernel, on rows
whose timings looked off, beside the anchor and the CUDA kernels: median, p20 and p80 of the
L2-flushed time; the same for a CUDA-graph replay (GPU time without the host); and
back-to-back wall time per call, eager and replayed (host overhead shows as their gap).

``err`` is the relative Frobenius difference from the anchor's bf16 output (block rows: from
the dequantized operands' float64 product rounded to bf16, as the anchor ignores block
scales); above ERR_LIMIT the row is flagged WRONG.
"""
from __future__ import annotations

import argparse

import torch
import triton

import lowbit
from lowbit.triton_kernels import fp8_gemm
from lowbit.triton_kernels.heuristics import GemmConfig, fp8_gemm_config, gemm_smem_bytes

from .anchors import error_text, rel_err
from .bench_fp8_gemm import anchor, operands, runnable_kernels
from .timing import bench, capture_graph, eager_host_us

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


def config_name(cfg: GemmConfig) -> str:
    return (f"triton {cfg.block_m}x{cfg.block_n}x{cfg.block_k} g{cfg.group_m} w{cfg.num_warps} "
            f"s{cfg.num_stages} u{cfg.k_unroll} ({gemm_smem_bytes(cfg) >> 10} KB)")


def err_note(err) -> str:
    if err is None:
        return ""
    return f"{err:.1e}" + (" WRONG" if err > ERR_LIMIT else "")


def compiled_kernels() -> dict:
    """id -> CompiledKernel that Triton holds for the GEMM kernel on this device. Reads
    Triton's JIT cache (its layout in triton 3.6 - 3.9); empty where that has moved."""
    try:
        cache = fp8_gemm._fp8_scaled_mm_kernel.device_caches[torch.cuda.current_device()][0]
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
        return anchor(a, b, sa, sb, mode, False)()
    ad = lowbit.dequantize_fp8(a, sa, out_dtype=torch.float32).double()
    bd = lowbit.dequantize_fp8(b, sb, out_dtype=torch.float32).double()
    return (ad @ bd.t()).to(torch.bfloat16)


# ------------------------------------------------------------------------ configs sweep
CONFIG_HEAD = ["| M x N x K | kernel | us | TFLOP/s | vs anchor | err | note |",
               "|---|---|---|---|---|---|---|"]


def config_rows(m, n, k, rep, rep_ms):
    a, b, sa, sb = operands(m, n, k, "row")
    args = (a, b, sa, sb, None, torch.bfloat16, False)
    anchor_fn = anchor(a, b, sa, sb, "row", False)
    ref = anchor_fn()
    table_cfg = fp8_gemm_config(m, n, k)
    t_anchor = float("nan")
    fns = [("torch._scaled_mm", anchor_fn, "")]
    fns += [(kern.name, lambda kern=kern: kern.fn(*args), "")
            for kern in runnable_kernels(args, ("cuda",), names=(CUDA_KERNEL,))]
    fns += [(config_name(cfg), lambda cfg=cfg: fp8_gemm.fp8_scaled_mm(a, b, sa, sb, config=cfg),
             "table" if cfg == table_cfg else "") for cfg in CONFIGS]
    for name, fn, note in fns:
        shape = f"{m}x{n}x{k}"
        try:
            before = compiled_kernels()
            out = fn()  # compiles, and is the output checked
            note = "; ".join(x for x in (note, resources(before)) if x)
            us = bench(fn, rep=rep, rep_ms=rep_ms)["median_us"]
        except Exception as e:  # noqa: BLE001 - a config that fails is a row, not an abort
            yield f"| {shape} | {name} | error: {error_text(e)} | | | | |"
            continue
        if fn is anchor_fn:
            t_anchor, err = us, None
        else:
            err = rel_err(out, ref)
        yield (f"| {shape} | {name} | {us:.1f} | {2.0 * m * n * k / us / 1e6:.0f} | "
               f"{t_anchor / us:.2f} | {err_note(err)} | {note} |")


# ---------------------------------------------------------------------- anomaly re-timing
ANOMALY_HEAD = ["| M x N x K | scales | kernel | median us | p20 | p80 | graph median | "
                "graph p20 | graph p80 | eager b2b us/call | graph b2b us/call | err |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]


def anomaly_rows(m, n, k, mode, rep, rep_ms):
    a, b, sa, sb = operands(m, n, k, mode)
    args = (a, b, sa, sb, None, torch.bfloat16, False)
    ref = reference(a, b, sa, sb, mode)
    cfg = fp8_gemm_config(m, n, k, blockwise=mode == "block")
    fns = [("torch._scaled_mm" + (" (rowwise)" if mode == "block" else ""),
            anchor(a, b, sa, sb, mode, False)),
           (f"fp8_scaled_mm(config=None) = {config_name(cfg)}",
            lambda: fp8_gemm.fp8_scaled_mm(a, b, sa, sb))]
    fns += [(kern.name, lambda kern=kern: kern.fn(*args)) for kern in runnable_kernels(args)]
    for i, (name, fn) in enumerate(fns):
        head = f"| {m}x{n}x{k} | {mode} | {name} |"
        try:
            out = fn()
            eager = bench(fn, rep=rep, rep_ms=rep_ms)
            graph = capture_graph(fn)
            replay = bench(graph, rep=rep, rep_ms=rep_ms)
            b2b, b2b_graph = eager_host_us(fn), eager_host_us(graph)
        except Exception as e:  # noqa: BLE001
            yield f"{head} error: {error_text(e)} | | | | | | | | |"
            continue
        # The rowwise anchor of a block row computes something else: no error for it.
        err = None if i == 0 and mode == "block" else rel_err(out, ref)
        stats = [eager[q] for q in ("median_us", "p20_us", "p80_us")]
        stats += [replay[q] for q in ("median_us", "p20_us", "p80_us")] + [b2b, b2b_graph]
        yield f"{head} " + " | ".join(f"{x:.1f}" for x in stats) + f" | {err_note(err)} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--md", help="also write the tables to this markdown file")
    ap.add_argument("--rep", type=int, default=100, help="at most this many timed calls")
    ap.add_argument("--rep-ms", type=float, default=40,
                    help="timed calls per row: as many as fit in this many ms (at least 5)")
    ap.add_argument("--parts", default="configs,anomalies",
                    help="comma-separated: configs (the tile sweep), anomalies (the re-timing)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    torch.manual_seed(0)
    lines = []

    def emit(*new):
        print("\n".join(new), flush=True)
        lines.extend(new)

    emit(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}"
         f"; accurate mode (promoted), bf16 out; err > {ERR_LIMIT:g} is flagged WRONG", "")
    def emit_rows(rows, shape):
        try:
            for row in rows:  # one at a time: a long sweep shows progress
                emit(row)
        except Exception as e:  # noqa: BLE001 - e.g. the anchor refusing a shape
            emit(f"| {shape} | error: {error_text(e)} |")
        torch.cuda.empty_cache()

    if "configs" in parts:
        emit("## Triton tile configs, rowwise scales", "", *CONFIG_HEAD)
        for m, n, k in SHAPES:
            emit_rows(config_rows(m, n, k, args.rep, args.rep_ms), f"{m}x{n}x{k}")
    if "anomalies" in parts:
        emit("", "## Anomalous rows with the table's configs (us; graph = CUDA-graph replay; "
             "b2b = back-to-back wall time, no L2 flush)", "", *ANOMALY_HEAD)
        for m, n, k, mode in ANOMALIES:
            emit_rows(anomaly_rows(m, n, k, mode, args.rep, args.rep_ms), f"{m}x{n}x{k} {mode}")
    if args.md:
        with open(args.md, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
