"""Timings of the CUDA fp8 quantize / dequantize kernels (lowbit/backends/cuda.py) against
the copy bandwidth measured in the same process, with both encoders (integer and sm_89+
hardware cvt). Prints one table; `--json PATH` also writes the rows.

    python -m bench.bench_cuda_fp8_quant [--json out.json]

Bytes moved count each input read once and each output written once (codes 1 B, scales
4 B); the per-tensor dynamic rows also list the two-pass floor (input read twice).
"""
from __future__ import annotations

import argparse
import json

import torch

import lowbit
from lowbit.backends import cuda as cuda_backend

from .timing import bench, capture_graph, copy_bandwidth, eager_host_us


def _row(name, fn, bytes_moved, bw_gbps, floor_bytes=None):
    st = bench(fn, rep=50)
    us = st["median_us"]
    gbps = bytes_moved / (us * 1e3)
    floor_us = (floor_bytes or bytes_moved) / (bw_gbps * 1e3)
    return dict(name=name, us=us, p20=st["p20_us"], p80=st["p80_us"], gbps=gbps,
                floor_us=floor_us, sol=floor_us / us)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = torch.cuda.get_device_name()
    bw = copy_bandwidth()["gbps"]
    rows = []
    n = 1 << 28
    x = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    xf = x.float()
    one = torch.tensor(0.25, device="cuda")
    m, k = 16384, 8192
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

    def cast(xx, s=None, **kw):
        return lambda: lowbit.quantize_fp8(xx, s, backend="cuda", **kw)

    for hw in (False, True):
        cuda_backend.HW_CVT = hw
        tag = "hwcvt" if hw else "intcvt"
        rows.append(_row(f"static tensor 2^28 bf16->e4m3 [{tag}]", cast(x, one), 3 * n, bw))
        rows.append(_row(f"static tensor 2^28 fp32->e4m3 [{tag}]", cast(xf, one), 5 * n, bw))
        rows.append(_row(f"dynamic tensor 2^28 bf16 [{tag}]", cast(x), 3 * n, bw,
                         floor_bytes=5 * n))
        rows.append(_row(f"dynamic token 16384x8192 bf16 [{tag}]",
                         cast(a, granularity="token"), 3 * m * k + 4 * m, bw))
        rows.append(_row(f"dynamic group128 16384x8192 bf16 [{tag}]",
                         cast(a, granularity="group", group_size=128),
                         3 * m * k + 4 * m * k // 128, bw))
        rows.append(_row(f"dynamic block1x128 16384x8192 bf16 [{tag}]",
                         cast(a, granularity="block", block=(1, 128)),
                         3 * m * k + 4 * m * k // 128, bw))
        rows.append(_row(f"dynamic block128 16384x8192 bf16 [{tag}]",
                         cast(a, granularity="block", block=(128, 128)),
                         3 * m * k + 4 * (m // 128) * (k // 128), bw))
        rows.append(_row(f"static token 16384x8192 e5m2 [{tag}]",
                         cast(a, torch.rand(m, 1, device="cuda") + 0.5, fmt="e5m2",
                              granularity="token"), 3 * m * k + 8 * m, bw))
    cuda_backend.HW_CVT = False
    rows.append(_row("static tensor 2^28 bf16->e4m3fnuz", cast(x, one, fmt="e4m3fnuz"),
                     3 * n, bw))
    rows.append(_row("static tensor 2^28 bf16->e4m3 nosat", cast(x, one, saturate=False),
                     3 * n, bw))
    q, s = lowbit.quantize_fp8(x, one, backend="cuda")
    rows.append(_row("dequant tensor 2^28 e4m3->bf16",
                     lambda: lowbit.dequantize_fp8(q, s, backend="cuda"), 3 * n, bw))
    qa, sa = lowbit.quantize_fp8(a, granularity="token", backend="cuda")
    rows.append(_row("dequant token 16384x8192 e4m3->bf16",
                     lambda: lowbit.dequantize_fp8(qa, sa, backend="cuda"), 3 * m * k, bw))
    rows.append(_row("anchor: torch bf16 .to(e4m3fn) 2^28 (no scale)",
                     lambda: x.to(torch.float8_e4m3fn), 3 * n, bw))

    print(f"# {dev}, torch {torch.__version__}, copy bandwidth {bw:.0f} GB/s")
    print(f"| {'kernel':52s} | median us | GB/s | floor us | SOL |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']:52s} | {r['us']:9.1f} | {r['gbps']:5.0f} | {r['floor_us']:8.1f} | "
              f"{100 * r['sol']:3.0f}% |")

    # Host overhead at decode size: eager per call vs CUDA-graph replay of the same call.
    small = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    for g in ("token", "tensor"):
        fn = cast(small, granularity=g)
        eager = eager_host_us(fn)
        graph = eager_host_us(capture_graph(fn, calls=10)) / 10
        print(f"host: quantize 1x4096 {g}: eager {eager:.1f} us/call, graph replay "
              f"{graph:.1f} us/call")
        rows.append(dict(name=f"host {g} 1x4096", eager_us=eager, graph_us=graph))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=dev, torch=torch.__version__, copy_gbps=bw, rows=rows), f,
                      indent=1)


if __name__ == "__main__":
    main()
