"""Where an eager MoE block's time goes: the Mixtral-8x7B block of `lowbit bench --model
mixtral-moe`, bf16 (transformers' default experts implementation) against the block with
`lowbit.nn.QuantizedExperts`, at decode sizes.

    python -m bench.profile_moe [--precision fp8] [--m 1,16] [--calls 30] [--max-pairs P]
                                [--compile]

For each M: wall time per forward of back-to-back calls of each block (where the experts
take the grouped path, also on the loop, and both blocks as CUDA-graph replays); then one
quantized expert layer called at one M and at four M in turn (what the loop does from
expert to expert: does a change of M cost host time?); then torch.profiler's ops of five quantized
forwards at the last M, by total CPU time, with their CUDA time beside. ``--max-pairs``:
the grouped path's limit of routed pairs for this run (``_experts_grouped.MAX_PAIRS``), to
time it where the loop would run. ``--compile``: also each block compiled (``dynamic=False``,
no CUDA graphs), whose host time is what bounds it at decode sizes.
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch.profiler import ProfilerActivity, profile

from lowbit.bench import timing
from lowbit.bench.models import mixtral_moe_block, to_quantized


def wall_us(fn, calls: int) -> float:
    """Wall time per call (us) of back-to-back calls after one untimed call."""
    return timing.eager_host_us(fn, n=calls, warmup=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="fp8")
    ap.add_argument("--m", default="1,16")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--max-pairs", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    if args.max_pairs is not None:
        from lowbit.nn import _experts_grouped

        _experts_grouped.MAX_PAIRS = args.max_pairs
    block, impl = mixtral_moe_block()
    quantized = copy.deepcopy(block)
    to_quantized(quantized, args.precision)
    ms = [int(m) for m in args.m.split(",")]
    if args.compile:
        compiled = {"bf16": torch.compile(block, dynamic=False),
                    args.precision: torch.compile(quantized, dynamic=False)}
    with torch.no_grad():
        experts = quantized.experts
        for m in ms:
            x = torch.randn(1, m, 4096, device="cuda", dtype=torch.bfloat16)
            path = experts.path(m, 2)
            line = f"M = {m}: bf16 block ({impl}) {wall_us(lambda: block(x), args.calls):.0f} us"
            line += f", {args.precision} block ({path}) " \
                f"{wall_us(lambda: quantized(x), args.calls):.0f} us"
            if path == "grouped":
                experts.grouped = False
                line += f", on the loop {wall_us(lambda: quantized(x), args.calls):.0f} us"
                experts.grouped = True
                graph = timing.capture_graph(lambda: quantized(x))
                line += f"; graph replays: grouped {wall_us(graph, args.calls):.0f} us"
                try:
                    bf16_graph = timing.capture_graph(lambda: block(x))
                    line += f", bf16 {wall_us(bf16_graph, args.calls):.0f} us"
                except RuntimeError as e:  # (a bf16 path that reads to the host)
                    line += f", bf16 not capturable ({str(e)[:60]})"
            if args.compile:
                for name, fn in compiled.items():
                    fn(x)  # (compiles, outside the timing)
                    line += f"; compiled {name} {wall_us(lambda: fn(x), args.calls):.0f} us"
            print(line)
        layer = quantized.experts.gate_up_proj[0]
        xs = [torch.randn(r, 4096, device="cuda", dtype=torch.bfloat16) for r in (1, 2, 3, 5)]
        one = wall_us(lambda: layer(xs[0]), 10 * args.calls)
        cycle = wall_us(lambda: [layer(t) for t in xs], 10 * args.calls) / len(xs)
        print(f"{type(layer).__name__} 4096 -> 28672: {one:.1f} us a call at one M, "
              f"{cycle:.1f} us a call cycling M = 1, 2, 3, 5")
        x = torch.randn(1, ms[-1], 4096, device="cuda", dtype=torch.bfloat16)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                quantized(x)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30,
                                    max_name_column_width=60))


if __name__ == "__main__":
    main()
