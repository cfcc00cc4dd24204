"""One launch of each fp8_scaled_mm kernel at a few shapes, for a profiler to look at:

    ncu --clock-control none -k regex:'gemm|xmma|sm90' python -m bench.profile_fp8_gemm

Warm-up calls run under the NVTX-free default; the profiled launches are the last ones.
Shapes: --shapes 4096x4096x4096,8192x8192x8192 (M x N x K, rowwise scales, bf16 out; --block
for lowbit's kernels with 1x128 / 128x128 block scales, the torch anchor staying rowwise).
"""
from __future__ import annotations

import argparse

import torch

import lowbit  # noqa: F401  (registers the kernels)
from lowbit._backend import kernels
from lowbit.bench.cases import fp8_operands, scaled_mm_anchor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4096x4096x4096,8192x8192x8192")
    ap.add_argument("--kernels", default="sm90_fp8_gemm_wgmma")
    ap.add_argument("--block", action="store_true", help="1x128 / 128x128 block scales")
    args = ap.parse_args()
    names = set(args.kernels.split(","))
    mode = "block" if args.block else "row"
    for shape in args.shapes.split(","):
        m, n, k = map(int, shape.split("x"))
        a, b, sa, sb = fp8_operands(m, n, k, mode)
        fns = [scaled_mm_anchor(a, b, sa, sb, mode)]
        for kern in kernels("fp8_scaled_mm"):
            if kern.name in names:
                fns.append(lambda kern=kern: kern.fn(a, b, sa, sb, None, torch.bfloat16, False))
        for fn in fns:
            fn()
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
