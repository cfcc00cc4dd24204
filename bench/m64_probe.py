"""The 8-bit GEMMs at M = 1-64, kernel by kernel: the GPU time of every CUDA and Triton kernel
of fp8_scaled_mm and int8_gemm (rowwise scales, bf16 out) beside torch's anchors, one line per
kernel and shape. With LOWBIT_SWAPAB_SPLIT=S in the environment the swap-AB kernels run
S-way K splits (csrc/common/sm90_gemm_swapab.cuh); bench/m64_probe.sh sweeps S and runs ncu.

    python bench/m64_probe.py [--shapes 64x4096x4096,...] [--kernels swapab,triton] [--once]
                              [--ops w4a16_gemm:prepacked,w8a16_gemm]

--once: no timing, each kernel called a few times (for ncu, which profiles the last launch).
--ops: other ops instead, each with `lowbit bench`'s operands of a variant (op[:variant]) and
its anchors.
"""
from __future__ import annotations

import argparse
import os

import torch

import lowbit  # noqa: F401  (registers the kernels)
from lowbit.bench.cases import (OPS, _int_mm_anchor, fp8_operands, int8, prepared_call,
                                runnable_kernels, scaled_mm_anchor, scales)
from lowbit.bench.timing import bench


def cases(m: int, n: int, k: int):
    a, b, sa, sb = fp8_operands(m, n, k, "row")
    # bf16 F.linear on the same shape: the layer an FP8 one replaces (PERF.md's second anchor).
    x, w = a.to(torch.bfloat16), b.to(torch.bfloat16)
    yield ("fp8_scaled_mm", (a, b, sa, sb, None, torch.bfloat16, False),
           {"_scaled_mm": scaled_mm_anchor(a, b, sa, sb, "row"),
            "F.linear_bf16": lambda: torch.nn.functional.linear(x, w)})
    qa, qb = int8(m, k), int8(n, k)
    ra, rb = scales(m, 1), scales(n, 1)
    anchors = {} if m <= 16 else {"_int_mm": _int_mm_anchor(qa, qb)}  # it refuses M <= 16
    yield "int8_gemm", (qa, qb, ra, rb, None, torch.bfloat16, None), anchors


def op_cases(specs: list, m: int, n: int, k: int):
    for spec in specs:
        op, _, variant = spec.partition(":")
        bench_op = OPS[op]
        case = bench_op.build(variant or bench_op.default[0], (m, n, k))
        yield op, case.args, {a.label.split(" ")[0]: a.fn for a in case.anchors}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1x4096x4096,16x4096x4096,32x4096x4096,64x4096x4096,"
                    "48x4096x4096,64x14336x4096,64x4096x14336")
    ap.add_argument("--kernels", default="swapab,triton,wgmma")
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--ops", default="")
    args = ap.parse_args()
    names = args.kernels.split(",")
    split = os.environ.get("LOWBIT_SWAPAB_SPLIT", "auto")
    for shape in args.shapes.split(","):
        m, n, k = map(int, shape.split("x"))
        shape_cases = op_cases(args.ops.split(","), m, n, k) if args.ops else cases(m, n, k)
        for op, call_args, anchors in shape_cases:
            fns = dict(anchors)
            for kern in runnable_kernels(op, call_args, names=names):
                fns[kern.name] = prepared_call(kern, call_args)
            for name, fn in fns.items():
                if args.once:
                    for _ in range(3):
                        fn()
                    torch.cuda.synchronize()
                    continue
                t = bench(fn, rep=200)
                print(f"split={split:4s} {op:14s} {shape:14s} {name:32s} "
                      f"{t['median_us']:8.2f} us  (p20 {t['p20_us']:.2f}, p80 {t['p80_us']:.2f})",
                      flush=True)


if __name__ == "__main__":
    main()
