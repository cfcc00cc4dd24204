"""The grouped experts kernel (triton_kernels/experts_gemm.py) alone, tile by tile: a
Mixtral-8x7B layer's two projections (8 experts; 4096 -> 28672 and 14336 -> 4096) at
decode sizes, fp8 or int8, against bf16 F.linear over the same experts' weights.

    python -m bench.sweep_experts [--precision fp8] [--m 1,16] [--tiles 64,128,4,4 ...]

For each M and projection: GPU time (median of L2-flushed runs) of the kernel with the
default tiles (_config) and with each ``--tiles BLOCK_N,BLOCK_K,num_warps,num_stages``, the
weight bytes the routed experts stream, and the rate; then bf16 F.linear run once per
routed expert on the bf16 weights (what a loop over bf16 experts streams).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import lowbit
from lowbit.bench.timing import bench
from lowbit.triton_kernels import experts_gemm

PROJECTIONS = {"gate_up": (28672, 4096), "down": (4096, 14336)}
DEFAULT_TILES = ["64,128,4,4", "32,256,4,4", "16,512,4,3", "128,128,4,4", "64,256,4,3",
                 "32,128,4,6"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="fp8", choices=("fp8", "int8"))
    ap.add_argument("--m", default="1,16")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--tiles", nargs="*", default=DEFAULT_TILES)
    args = ap.parse_args()
    torch.manual_seed(0)
    e_all, k_top = args.experts, args.top_k
    print(f"{torch.cuda.get_device_name()}; {args.precision}; {e_all} experts, top-{k_top}")
    for name, (n, k) in PROJECTIONS.items():
        w16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
               for _ in range(e_all)]
        if args.precision == "fp8":
            qs = [lowbit.quantize_fp8(w, granularity="channel") for w in w16]
        else:
            qs = [lowbit.quantize_int8(w, granularity="channel")[:2] for w in w16]
        weights, scales = [q for q, _ in qs], [s for _, s in qs]
        for m in (int(v) for v in args.m.split(",")):
            ids = torch.stack([torch.randperm(e_all, device="cuda")[:k_top] for _ in range(m)])
            hit = ids.unique().numel()
            by_token = name == "gate_up"
            rows = m if by_token else m * k_top
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            if args.precision == "fp8":
                a, sa = lowbit.quantize_fp8(x, granularity="token")
            else:
                a, sa, _ = lowbit.quantize_int8(x, granularity="token")
            nbytes = hit * n * k * weights[0].element_size()
            for tiles in ["default", *args.tiles]:
                cfg = None
                if tiles != "default":
                    bn, bk, warps, stages = (int(v) for v in tiles.split(","))
                    cfg = dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
                try:
                    r = bench(lambda: experts_gemm.experts_w8a8(
                        a, sa, ids, by_token, weights, scales, None, torch.bfloat16,
                        tiles=cfg))
                except Exception as exc:  # noqa: BLE001 - a tile that does not compile
                    print(f"{name:8} M={m:<4} {tiles:14} failed: {str(exc)[:80]}")
                    continue
                us = r["median_us"]
                print(f"{name:8} M={m:<4} {tiles:14} {us:8.1f} us  {nbytes / us / 1e6:6.2f} TB/s"
                      f"  ({hit} experts hit)")
            used = ids.unique().tolist()
            xs = x[:m]

            def bf16_loop():
                for e in used:
                    F.linear(xs, w16[e])

            us = bench(bf16_loop)["median_us"]
            print(f"{name:8} M={m:<4} {'bf16 F.linear':14} {us:8.1f} us  "
                  f"{2 * nbytes / weights[0].element_size() / us / 1e6:6.2f} TB/s "
                  f"(one call an expert hit)")


if __name__ == "__main__":
    main()
