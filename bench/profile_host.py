"""Where the host time of an eager lowbit call goes: cProfile over back-to-back calls.

    python -m bench.profile_host [--op fp8_scaled_mm] [--m 1] [--backend cuda] [--calls 2000]

Prints the wall time per call and the functions with the most own time. GPU work is not
waited for inside the loop (one synchronize at the end), as in eager inference.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats

import torch

import lowbit
from lowbit.bench.timing import eager_host_us


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--op", default="fp8_scaled_mm", choices=["fp8_scaled_mm", "quantize_fp8"])
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    n = k = 4096
    if args.op == "fp8_scaled_mm":
        a = torch.randn(args.m, k, device="cuda").to(torch.float8_e4m3fn)
        b = torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn)
        sa = torch.rand(args.m, 1, device="cuda")
        sb = torch.rand(n, 1, device="cuda")
        fn = lambda: lowbit.fp8_scaled_mm(a, b, sa, sb, backend=args.backend)
    else:
        x = torch.randn(args.m, k, device="cuda", dtype=torch.bfloat16)
        fn = lambda: lowbit.quantize_fp8(x, granularity="token", backend=args.backend)
    print(f"{args.op} M={args.m} backend={args.backend}: "
          f"{eager_host_us(fn, n=args.calls, warmup=50):.1f} us per eager call")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
