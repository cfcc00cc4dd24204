"""Tile configs of the Triton weight-only GEMM (triton_kernels/wxa16_gemm.py) above the decode
regime, against its table (heuristics.WXA16_GEMM_TABLE, whose M = 17-64 row came from this
sweep: bench/NOTES.md, 2026-12-06) and the CUDA kernels (the Triton rows are to stay within
1.5x of CUDA's time). One GPU:

    python -m bench.sweep_triton_wxa16 [--shapes 32x4096x4096,...] [--bits 4,8] [--rep-ms 30]
                                     [--splits 1,2,4]

Per shape and weight (int4 group 128 in the canonical layout, the Triton kernel's; int8 per
channel), bf16 activations: every config of ``candidates(m)`` with each K split (--splits),
through ``w4a16_gemm`` / ``w8a16_gemm``'s ``config`` and ``split_k`` overrides, beside the
table's own choice, the Triton backend's choice, ``auto`` on the CUDA kernels' weight (the
prepacked int4 layout an NVIDIA GPU holds) and bf16 ``F.linear``: us (median, L2 flushed), the
ratio to CUDA, and the error against the table's output (a config that does not compile or
launch gets a row that says why). Each shape ends with the best config; a table row that
changes goes into heuristics.py by hand, with the numbers in bench/NOTES.md.
"""
from __future__ import annotations

import argparse
import itertools
from typing import Iterator, List, Optional, Tuple

import torch

import lowbit  # noqa: F401  (registers the kernels)
from lowbit.bench.cases import OPS, bound_once, error_text, rel_err
from lowbit.bench.timing import bench, require_cuda
from lowbit.triton_kernels import wxa16_gemm
from lowbit.triton_kernels.heuristics import GemmConfig, wxa16_gemm_config, wxa16_smem_bytes

SHAPES = "32x4096x4096,64x4096x4096,32x14336x4096,64x14336x4096"
SPLITS = (1, 2, 4)
SMEM_LIMIT = 227 * 1024  # sm_90's per-block opt-in
ERR_LIMIT = 1e-2  # bf16 outputs of the same products summed in another order


def candidates(m: int, bits: int, group: int) -> List[GemmConfig]:
    """Configs for M rows: BLOCK_M of 32 and 64 (16 too at M <= 32: two tiles of tl.dot's
    least; 128 too above M = 64: one conversion of each weight tile for 128 rows; 256 too
    above M = 128, as the CUDA kernel's 256-token tiles), N tiles of 32-128, K steps of 64
    and 128 (at most the group), 3 and 4 stages; 8 warps from 64 x 128 tiles. Those whose
    stages exceed the shared memory are left out."""
    out = []
    bms = ((16, 32, 64) if m <= 32 else (32, 64) if m <= 64 else (32, 64, 128) if m <= 128
           else (32, 64, 128, 256))
    for bm, bn, bk, st in itertools.product(bms, (32, 64, 128), (64, 128), (3, 4)):
        if group and bk > group:
            continue
        cfg = GemmConfig(bm, bn, bk, 8, 8 if bm * bn >= 64 * 128 else 4, st)
        if wxa16_smem_bytes(cfg, bits) <= SMEM_LIMIT:
            out.append(cfg)
    return out


def name(cfg: GemmConfig, split: Optional[int]) -> str:
    s = "split auto" if split is None else f"split {split}"
    return (f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages} "
            f"{s}")


def calls(bits: int, m: int, n: int, k: int, splits=SPLITS) -> Tuple[dict, Iterator]:
    """The anchors (CUDA auto, bf16) and the sweep's (label, fn) pairs for one shape."""
    if bits == 4:
        canon = OPS["w4a16_gemm"].build("canonical", (m, n, k))
        packed = OPS["w4a16_gemm"].build("prepacked", (m, n, k))
        x, qw, sc, z, group = canon.args[:5]
        cuda, triton_auto = packed.public(), canon.public("triton")
        cuda_kernel = packed.chosen()
        w_bf16 = next(a for a in canon.anchors if a.role == "bf16")

        def triton(cfg, split):
            # The launcher bound once per config, as the backend's prepared path binds it
            # (``w4a16_gemm(..., config=...)`` rebinds per call: rows that swung by up to 2x).
            return bound_once(lambda: wxa16_gemm.w4a16_gemm_launcher(
                x, qw, sc, z, group, config=cfg, split_k=split), (x, qw, sc, z, group, None, None))
    else:
        case = OPS["w8a16_gemm"].build("channel", (m, n, k))
        x, w, ws = case.args[:3]
        group = 0
        cuda, triton_auto = case.public(), case.public("triton")
        cuda_kernel = case.chosen()
        w_bf16 = next(a for a in case.anchors if a.role == "bf16")

        def triton(cfg, split):
            return bound_once(lambda: wxa16_gemm.w8a16_gemm_launcher(
                x, w, ws, config=cfg, split_k=split), (x, w, ws, None))

    # The config the launcher picks (N tiles narrowed to cover the SMs at M = 17-64).
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    table_cfg = wxa16_gemm_config(m, n, k, group, sm_count=sms)
    # The Triton backend's own choice may be its dequantize-then-GEMM kernel (above M = 128,
    # lowbit/backends/triton.py); the fused kernel with the table's config is the sweep's
    # baseline.
    if not cuda_kernel.startswith("cuda/"):
        raise SystemExit(f"{m}x{n}x{k}: auto runs {cuda_kernel} here, not a CUDA kernel")
    print(f"w{bits}a16 {m}x{n}x{k}: CUDA auto is {cuda_kernel}", flush=True)
    anchors = {"CUDA auto": cuda, "Triton auto": triton_auto, "F.linear bf16": w_bf16.fn,
               f"table {name(table_cfg, None)}": triton(None, None)}
    sweep = ((name(c, s), triton(c, s)) for c in candidates(m, bits, group) for s in splits)
    return anchors, sweep


def run_shape(bits: int, shape: str, rep_ms: float, splits=SPLITS) -> None:
    m, n, k = map(int, shape.split("x"))
    anchors, sweep = calls(bits, m, n, k, splits)
    times, ref = {}, None
    for label, fn in anchors.items():
        times[label] = bench(fn, rep=100, rep_ms=rep_ms)["median_us"]
        if label.startswith("table"):
            ref = fn()
    cuda_us = times["CUDA auto"]
    for label, t in times.items():
        print(f"w{bits}a16 {shape:14s} {label:34s} {t:8.2f} us  {t / cuda_us:5.2f}x CUDA")
    best = None
    for label, fn in sweep:
        try:
            out = fn()
            err = rel_err(out, ref)
            t = bench(fn, rep=100, rep_ms=rep_ms)["median_us"]
        except Exception as e:  # noqa: BLE001 - a config that fails is a row, not an abort
            print(f"w{bits}a16 {shape:14s} {label:34s} error: {error_text(e, 120)}")
            continue
        flag = " WRONG" if err is not None and err > ERR_LIMIT else ""
        print(f"w{bits}a16 {shape:14s} {label:34s} {t:8.2f} us  {t / cuda_us:5.2f}x CUDA"
              f"  err {err:.1e}{flag}", flush=True)
        if not flag and (best is None or t < best[1]):
            best = (label, t)
    if best:
        table_us = next(t for lbl, t in times.items() if lbl.startswith("table"))
        print(f"w{bits}a16 {shape:14s} BEST {best[0]:29s} {best[1]:8.2f} us  "
              f"{best[1] / cuda_us:5.2f}x CUDA ({table_us / best[1]:.2f}x the table's)")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--bits", default="4,8", help="4: int4 group 128; 8: int8 per channel")
    ap.add_argument("--rep-ms", type=float, default=30)
    ap.add_argument("--splits", default=",".join(map(str, SPLITS)),
                    help="K splits to try per config (1: none)")
    args = ap.parse_args(argv)
    require_cuda()
    for bits in map(int, args.bits.split(",")):
        for shape in args.shapes.split(","):
            run_shape(bits, shape, args.rep_ms, tuple(map(int, args.splits.split(","))))


if __name__ == "__main__":
    main()
