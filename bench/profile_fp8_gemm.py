"""One launch of each fp8_scaled_mm kernel at a few shapes, for a profiler to look at:

    ncu --clock-control none -k regex:'gemm|xmma|sm90' python -m bench.profile_fp8_gemm

Warm-up calls run under the NVTX-free default; the profiled launches are the last ones.
Shapes: --shapes 4096x4096x4096,8192x8192x8192 (M x N x K, rowwise scales, bf16 out; --block
for lowbit's kernels with 1x128 / 128x128 block scales, the torch anchor staying rowwise).
"""
from __future__ import annotations

import argparse

import torch

import lowbit  # noqa: F401
from lowbit._backend import kernels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4096x4096x4096,8192x8192x8192")
    ap.add_argument("--kernels", default="sm90_fp8_gemm_wgmma")
    ap.add_argument("--block", action="store_true", help="1x128 / 128x128 block scales")
    args = ap.parse_args()
    names = set(args.kernels.split(","))
    for shape in args.shapes.split(","):
        m, n, k = map(int, shape.split("x"))
        a = torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn)
        b = torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn)
        sa = torch.rand(m, 1, device="cuda") + 0.5
        sb = torch.rand(n, 1, device="cuda") + 0.5
        fns = [lambda sa=sa, sb=sb: torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb.t(),
                                                     out_dtype=torch.bfloat16)]
        if args.block:
            sa = torch.rand(m, -(-k // 128), device="cuda") + 0.5
            sb = torch.rand(-(-n // 128), -(-k // 128), device="cuda") + 0.5
        for kern in kernels("fp8_scaled_mm"):
            if kern.name in names:
                fns.append(lambda kern=kern, sa=sa, sb=sb:
                           kern.fn(a, b, sa, sb, None, torch.bfloat16, False))
        for fn in fns:
            fn()
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
