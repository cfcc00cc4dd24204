"""Where the GPU time of `lowbit bench --model bert-large`'s forward goes: bf16 and quantized,
eager, compiled and as a CUDA-graph replay, kernel by kernel.

    python -m bench.profile_bert [--precision fp8,int8] [--modes eager,compile,graph]
                                 [--calls 3] [--top 12] [--sdpa flash,cudnn]

For each model and mode: wall time per forward of back-to-back calls, then torch.profiler's
CUDA kernels over ``--calls`` forwards: GPU time per forward in total and by kind (GEMM,
lowbit's quantizers, attention, norms, Inductor's fused kernels, other elementwise), and the
``--top`` kernels by time. The eager model's GPU time below its wall time says it is
host-bound; the kinds say what a compiled model fuses and what it leaves.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import re

import torch
from torch.profiler import ProfilerActivity, profile

from lowbit.bench import timing
from lowbit.bench.models import bert_large, prepare_call, quantize_model

# (kind, pattern over the kernel's name), first match wins: the order matters. Attention
# first (the memory-efficient kernel's name holds "cutlass"), then the GEMMs before the
# quantizers (a fused GEMM's name may hold "quant"), Inductor's triton_ kernels last.
KINDS = (
    ("attention", re.compile(r"flash|fmha|attention|softmax|sdpa", re.I)),
    ("gemm", re.compile(r"gemm|gemv|nvjet|cutlass|xmma|wgmma|sm90_|sm80_|_mm_|matmul", re.I)),
    ("quantize", re.compile(r"quant", re.I)),
    ("norm", re.compile(r"layer_?norm|rms_?norm", re.I)),
    ("inductor", re.compile(r"^triton_")),
)


def kind(name: str) -> str:
    return next((k for k, p in KINDS if p.search(name)), "other")


def gpu_kernels(fn, calls: int) -> dict:
    """{kernel name: (GPU us per forward, launches per forward)} over ``calls`` forwards."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    out = collections.defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time > 0:
            out[e.name][0] += e.device_time / calls
            out[e.name][1] += 1
    return {n: (us, cnt / calls) for n, (us, cnt) in out.items()}


def report(label: str, fn, calls: int, top: int) -> None:
    wall = timing.eager_host_us(fn, n=10, warmup=2) / 1e3
    ks = gpu_kernels(fn, calls)
    total = sum(us for us, _ in ks.values()) / 1e3
    by_kind = collections.Counter()
    launches = collections.Counter()
    for n, (us, cnt) in ks.items():
        by_kind[kind(n)] += us / 1e3
        launches[kind(n)] += cnt
    print(f"\n== {label}: wall {wall:.2f} ms a forward, GPU {total:.2f} ms "
          f"({sum(launches.values()):.0f} kernels)")
    for k, ms in by_kind.most_common():
        print(f"   {k:<10} {ms:7.3f} ms  {launches[k]:5.0f} kernels")
    for n, (us, cnt) in sorted(ks.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"   {us / 1e3:7.3f} ms  x{cnt:<4.0f} {kind(n):<10} {n[:110]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="fp8")
    ap.add_argument("--modes", default="eager,compile,graph")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--sdpa", default="default",
                    help="the attention backends SDPA may take, comma-separated (flash, "
                         "cudnn, efficient, math), for both models in every mode; default: "
                         "torch's own choice")
    args = ap.parse_args()
    model, inputs, source = bert_large()
    print(f"bert-large 32x128: {source}; {torch.cuda.get_device_name()}")
    models = [("bf16", model)]
    for p in args.precision.split(","):
        q = copy.deepcopy(model)
        models.append((f"{p} ({quantize_model(q, p)})", q))
    ctx = contextlib.nullcontext()
    if args.sdpa != "default":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        names = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
        ctx = sdpa_kernel([names[b] for b in args.sdpa.split(",")])
        print(f"SDPA backends allowed: {args.sdpa}")
    with torch.no_grad(), ctx:
        for mode in args.modes.split(","):
            for label, m in models:
                report(f"{label} {mode}", prepare_call(m, inputs, mode), args.calls, args.top)
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
