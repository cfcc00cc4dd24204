"""The CUDA fp8 quantize / dequantize kernels, each called directly through the kernel
registry, with both encoders (integer and the sm_89+ hardware cvt), against the copy
bandwidth measured in the same process. `lowbit bench --op quantize_fp8 --kernels` times
the same kernels against torch at the PERF.md shapes; this adds the encoder switch and the
formats and modes a model rarely runs (e5m2, e4m3fnuz, saturate=False, group and block).

    python -m bench.bench_cuda_fp8_quant [--json out.json]

Bytes moved count each input read once and each output written once (codes 1 B, scales
4 B); the per-tensor dynamic rows also list the two-pass floor (input read twice).
"""
from __future__ import annotations

import argparse

import torch

from lowbit.bench import table
from lowbit.bench.cases import runnable_kernels
from lowbit.bench.timing import bench, capture_graph, copy_bandwidth, eager_host_us

from lowbit import _native
from lowbit.backends.cuda import quantize as cuda_quant  # the HW_CVT switch


def set_hw_cvt(on: bool) -> None:
    """The encoder of the CUDA quantizers from the next call on, C++ plans included (a plan
    keeps the encoder it was prepared with)."""
    cuda_quant.HW_CVT = on
    _native.reset()


COLUMNS = (
    ("kernel", lambda r: r["impl"]),
    ("case", lambda r: r["case"]),
    ("us", lambda r: table.us(r.get("median_us"))),
    ("TB/s", lambda r: table.num(r.get("tbps"), ".2f")),
    ("floor us", lambda r: table.us(r.get("floor_us"))),
    ("of ceiling", lambda r: table.percent(r.get("frac"))),
    ("eager us/call", lambda r: table.us(r.get("eager_us"))),
    ("graph us/call", lambda r: table.us(r.get("graph_us"))),
    ("note", table.note),
)


def _quant_args(x, scale=None, fmt="e4m3fn", granularity="tensor", group_size=128,
                block=(128, 128), saturate=True):
    return (x, scale, fmt, granularity, group_size, list(block), saturate)


def _row(op, label, args, bytes_moved, bw_gbps, floor_bytes=None):
    """The first CUDA kernel of `op` that runs `args`, timed with the L2 flushed."""
    kern = next(runnable_kernels(op, args, backends=("cuda",)), None)
    if kern is None:
        return dict(impl="-", case=label, error="no CUDA kernel runs this here")
    st = bench(lambda: kern.fn(*args), rep=50)
    t = st["median_us"]
    floor = (floor_bytes or bytes_moved) / (bw_gbps * 1e3)
    return dict(impl=kern.name, case=label, median_us=t, tbps=bytes_moved / t / 1e6,
                floor_us=floor, frac=floor / t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    bw = copy_bandwidth()["gbps"]
    n, (m, k) = 1 << 28, (16384, 8192)
    x = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    xf = x.float()
    one = torch.tensor(0.25, device="cuda")
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    rows = []
    hw_default = cuda_quant.HW_CVT
    for hw in (False, True):
        set_hw_cvt(hw)
        tag = "hwcvt" if hw else "intcvt"
        q = "quantize_fp8"
        rows += [
            _row(q, f"static tensor 2^28 bf16->e4m3 [{tag}]", _quant_args(x, one), 3 * n, bw),
            _row(q, f"static tensor 2^28 fp32->e4m3 [{tag}]", _quant_args(xf, one), 5 * n, bw),
            _row(q, f"dynamic tensor 2^28 bf16 [{tag}]", _quant_args(x), 3 * n, bw, floor_bytes=5 * n),
            _row(q, f"dynamic token 16384x8192 bf16 [{tag}]", _quant_args(a, granularity="token"),
                 3 * m * k + 4 * m, bw),
            _row(q, f"dynamic group128 16384x8192 bf16 [{tag}]", _quant_args(a, granularity="group"),
                 3 * m * k + 4 * m * k // 128, bw),
            _row(q, f"dynamic block1x128 16384x8192 bf16 [{tag}]",
                 _quant_args(a, granularity="block", block=(1, 128)), 3 * m * k + 4 * m * k // 128, bw),
            _row(q, f"dynamic block128 16384x8192 bf16 [{tag}]", _quant_args(a, granularity="block"),
                 3 * m * k + 4 * (m // 128) * (k // 128), bw),
            _row(q, f"static token 16384x8192 e5m2 [{tag}]",
                 _quant_args(a, torch.rand(m, 1, device="cuda") + 0.5, fmt="e5m2", granularity="token"),
                 3 * m * k + 8 * m, bw),
        ]
    set_hw_cvt(False)
    rows.append(_row("quantize_fp8", "static tensor 2^28 bf16->e4m3fnuz",
                     _quant_args(x, one, fmt="e4m3fnuz"), 3 * n, bw))
    rows.append(_row("quantize_fp8", "static tensor 2^28 bf16->e4m3 nosat",
                     _quant_args(x, one, saturate=False), 3 * n, bw))
    set_hw_cvt(hw_default)
    qx = x.to(torch.float8_e4m3fn)
    qa, sa = a.to(torch.float8_e4m3fn), torch.rand(m, 1, device="cuda") + 0.5
    rows.append(_row("dequantize_fp8", "dequant tensor 2^28 e4m3->bf16", (qx, one, torch.bfloat16), 3 * n, bw))
    rows.append(_row("dequantize_fp8", "dequant token 16384x8192 e4m3->bf16", (qa, sa, torch.bfloat16),
                     3 * m * k, bw))
    st = bench(lambda: x.to(torch.float8_e4m3fn), rep=50)
    rows.append(dict(impl="torch .to(e4m3fn)", case="2^28 bf16, no scale (anchor)",
                     median_us=st["median_us"], tbps=3 * n / st["median_us"] / 1e6,
                     floor_us=3 * n / (bw * 1e3), frac=3 * n / (bw * 1e3) / st["median_us"]))

    # Host overhead at decode size: eager per call vs CUDA-graph replay of the same call.
    small = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    for g in ("token", "tensor"):
        qargs = _quant_args(small, granularity=g)
        kern = next(runnable_kernels("quantize_fp8", qargs, backends=("cuda",)), None)
        if kern is None:
            continue
        fn = lambda kern=kern, qargs=qargs: kern.fn(*qargs)
        rows.append(dict(impl=kern.name, case=f"host: 1x4096 {g}", eager_us=eager_host_us(fn),
                         graph_us=eager_host_us(capture_graph(fn, calls=10)) / 10))
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, copy bandwidth "
          f"{bw / 1e3:.2f} TB/s\n")
    print(table.format_table(rows, COLUMNS, markdown=True))
    if args.json:
        table.write_json(args.json, dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                         copy_gbps=bw, rows=rows))


if __name__ == "__main__":
    main()
