"""The sm_90a wgmma GEMM's tile order, swept: each LOWBIT_WGMMA_RASTER value in a process of
its own (the kernel reads it once), timed against torch._scaled_mm in that process.

    python -m bench.sweep_raster --groups 4,8 --rounds 3 --shapes 8192x8192x8192,4096x28672x8192

0 is the built-in choice (csrc/common/sm90_gemm_wgmma.cuh, raster_group); g > 0 groups g row
tiles, g < 0 groups -g column tiles. Rowwise scales, bf16 out, L2 flushed between repetitions.
The same value's time moves by up to ~15% between processes on an H200: `--rounds` repeats
the whole list, interleaved, and a choice needs every round to agree.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

KERNEL = "sm90_fp8_gemm_wgmma"


def child(shapes: str, rep: int, block: bool) -> None:
    import torch

    import lowbit  # noqa: F401  (registers the kernels)
    from lowbit._backend import kernels
    from lowbit.bench.cases import fp8_operands, scaled_mm_anchor
    from lowbit.bench.timing import bench

    kern = next(k for k in kernels("fp8_scaled_mm") if k.name == KERNEL)
    mode = "block" if block else "row"
    for shape in shapes.split(","):
        m, n, k = map(int, shape.split("x"))
        a, b, sa, sb = fp8_operands(m, n, k, mode)
        anchor = bench(scaled_mm_anchor(a, b, sa, sb, mode), rep=rep)
        ours = bench(lambda: kern.fn(a, b, sa, sb, None, torch.bfloat16, False), rep=rep)
        tflops = 2 * m * n * k / ours["median_us"] / 1e6
        print(f"{os.environ.get('LOWBIT_WGMMA_RASTER', '0'):>6} {shape:>18} "
              f"{ours['median_us']:9.1f} {anchor['median_us']:9.1f} "
              f"{anchor['median_us'] / ours['median_us']:6.3f}x {tflops:7.0f}", flush=True)
        del a, b, sa, sb
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", default="0,2,4,8,16,-4,-8,-16")
    ap.add_argument("--shapes", default="8192x8192x8192,4096x28672x8192,4096x14336x4096")
    ap.add_argument("--rep", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=1, help="the list of groups, this many times")
    ap.add_argument("--block", action="store_true", help="1x128 / 128x128 block scales")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.shapes, args.rep, args.block)
        return
    print(f"{'group':>6} {'M x N x K':>18} {'ours us':>9} {'anchor':>9} {'ratio':>7} {'TFLOP/s':>7}",
          flush=True)
    for g in args.groups.split(",") * args.rounds:
        env = dict(os.environ)
        env.pop("LOWBIT_WGMMA_RASTER", None)
        if int(g) != 0:
            env["LOWBIT_WGMMA_RASTER"] = g
        cmd = [sys.executable, "-m", "bench.sweep_raster", "--child", "--shapes", args.shapes,
               "--rep", str(args.rep)] + (["--block"] if args.block else [])
        subprocess.run(cmd, env=env, check=False)


if __name__ == "__main__":
    main()
