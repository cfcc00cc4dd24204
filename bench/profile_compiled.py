"""Where the host time of a compiled model's forward goes: the Llama MLP block of `lowbit
bench --model llama-mlp`, bf16 and quantized, under torch.compile.

    python -m bench.profile_compiled [--precision fp8] [--m 1] [--calls 500]

For each model: wall time per forward of back-to-back calls (the host time where it exceeds
the GPU time), the same as a CUDA-graph replay (the GPU time), the C++ plans' hit and miss
counts over the timed calls, then torch.profiler's CPU ops by self time and cProfile's
Python functions by own time over the same calls.
"""
from __future__ import annotations

import argparse
import cProfile
import copy
import pstats

import torch

from lowbit import _native
from lowbit.bench import timing
from lowbit.bench.cases import raise_recompile_limit
from lowbit.bench.models import LlamaMLP, to_quantized


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="fp8")
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--calls", type=int, default=500)
    args = ap.parse_args()
    raise_recompile_limit()
    torch.manual_seed(0)
    bf16 = LlamaMLP().to("cuda", torch.bfloat16).eval()
    quant = copy.deepcopy(bf16)
    to_quantized(quant, args.precision)
    x = torch.randn(args.m, 4096, device="cuda", dtype=torch.bfloat16)
    for name, model in (("bf16", bf16), (args.precision, quant)):
        for mode in ("eager", "compile"):
            fn = torch.compile(model, dynamic=False) if mode == "compile" else model
            with torch.inference_mode():
                call = lambda: fn(x)  # noqa: E731
                for _ in range(3):
                    call()
                before = _native.stats()
                wall = timing.eager_host_us(call, n=args.calls, warmup=20)
                after = _native.stats()
                graph = timing.eager_host_us(timing.capture_graph(call), n=args.calls, warmup=20)
                plans = {k: after[k] - before[k] for k in ("hits", "misses")}
                print(f"== {name} {mode} M={args.m}: {wall:.1f} us per forward back to back, "
                      f"{graph:.1f} us as a graph replay; plans over those calls and their "
                      f"warm-up: {plans}")
                if name == "bf16" and mode == "eager":
                    continue
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    for _ in range(100):
                        call()
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
                cp = cProfile.Profile()
                cp.enable()
                for _ in range(args.calls):
                    call()
                torch.cuda.synchronize()
                cp.disable()
                pstats.Stats(cp).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
