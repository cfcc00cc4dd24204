"""Where one launch of the sm_90a swap-AB GEMM spends its microseconds, CTA by CTA: the
phase trace of csrc/common/sm90_gemm_swapab.cuh, which only a build with the flag has:

    pip install --no-build-isolation -C cmake.define.CMAKE_CUDA_FLAGS=-DLOWBIT_SWAPAB_TRACE .
    python bench/swapab_trace.py [--shapes 1x4096x4096,64x14336x4096] [--ops fp8,int8]

(bench/next_run.sh swtrace builds it, runs this, and builds the default again.) Per shape
and op (FP8 `fp8_scaled_mm` or INT8 `int8_gemm`, rowwise scales, bf16 out): the kernel's time as the benchmarks take it (median of 200 with the
L2 flushed), then one traced launch after an L2 flush, and per phase the median and maximum
over the CTAs, in us: the CTAs' starts from the first; the wait for the kernel before (PDL);
the first stage's arrival; the mainloop; the partial tile's barrier (a K split's cluster
barrier); the stores; the last barrier; and the launch's span from the first start to the last
exit. The GEMMs' kernels are traced, not the fused linear ones (each translation unit keeps
its own stamps and exports its own reader).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics

import torch

import lowbit  # noqa: F401  (registers the kernels)
from lowbit._build import _C
from lowbit.bench.cases import fp8_operands, int8, prepared_call, runnable_kernels, scales
from lowbit.bench.timing import bench

CTAS = 4096  # trace::kCtas
STAMPS = ("start", "dep", "first", "main", "sync", "store", "end")  # trace::Stamp, in order
PHASES = (("start (from the first CTA's)", None, "start"),
          ("wait for the kernel before", "start", "dep"),
          ("first stage's arrival", "dep", "first"), ("mainloop", "first", "main"),
          ("partial tile's barrier", "main", "sync"), ("stores", "sync", "store"),
          ("last barrier", "store", "end"))


# op -> (its reader in lowbit._C, the swap-AB kernel's name)
OPS = {"fp8": ("lowbit_swapab_trace", "sm90_fp8_gemm_swapab"),
       "int8": ("lowbit_swapab_trace_int8", "sm90_int8_gemm_swapab")}


def reader(symbol: str):
    try:
        fn = getattr(ctypes.CDLL(_C.__file__), symbol)
    except (AttributeError, OSError) as e:
        raise SystemExit("lowbit._C has no phase trace: build it with -C cmake.define."
                         f"CMAKE_CUDA_FLAGS=-DLOWBIT_SWAPAB_TRACE ({e})")
    fn.restype = ctypes.c_int
    fn.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int)
    return fn


def traced(fn, call) -> list:
    """Rows of stamps (ns) of the CTAs that ran, from one launch of ``call`` after an L2
    flush."""
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    if fn(None, CTAS, len(STAMPS)) != 0:
        raise SystemExit("the swap-AB trace: the build's trace has another shape")
    flush.fill_(1)
    call()
    buf = (ctypes.c_ulonglong * (CTAS * len(STAMPS)))()
    if fn(ctypes.addressof(buf), CTAS, len(STAMPS)) != 0:
        raise SystemExit("the swap-AB trace: a CUDA error")
    rows = [dict(zip(STAMPS, buf[i * len(STAMPS):(i + 1) * len(STAMPS)])) for i in range(CTAS)]
    return [r for r in rows if r["start"] and r["end"]]


def report(rows: list) -> None:
    t0 = min(r["start"] for r in rows)
    print(f"  {len(rows)} CTAs; launch span {(max(r['end'] for r in rows) - t0) / 1e3:.2f} us")
    for label, a, b in PHASES:
        v = sorted(((r[b] - (r[a] if a else t0)) / 1e3) for r in rows if r[b] and (not a or r[a]))
        if v:
            print(f"  {label:32s} median {statistics.median(v):7.2f}  max {v[-1]:7.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1x4096x4096,16x4096x4096,64x4096x4096,1x14336x4096,"
                    "64x14336x4096")
    ap.add_argument("--dump", default="", help="a folder: each traced launch's stamps (ns, "
                    "a CTA a row) as OP-SHAPE.csv there")
    ap.add_argument("--ops", default="fp8", help="comma list of fp8, int8")
    args = ap.parse_args()
    ops = args.ops.split(",")
    readers = {op: reader(OPS[op][0]) for op in ops}  # a build without the trace stops here
    for shape in args.shapes.split(","):
        m, n, k = map(int, shape.split("x"))
        for op in ops:
            fn, kernel = readers[op], OPS[op][1]
            if op == "fp8":
                a, b, sa, sb = fp8_operands(m, n, k, "row")
                name, call_args = "fp8_scaled_mm", (a, b, sa, sb, None, torch.bfloat16, False)
            else:
                name = "int8_gemm"
                call_args = (int8(m, k), int8(n, k), scales(m, 1), scales(n, 1), None,
                             torch.bfloat16, None)
            for kern in runnable_kernels(name, call_args, backends=("cuda",), names=[kernel]):
                call = prepared_call(kern, call_args)
                t = bench(call, rep=200)
                print(f"{shape} {kern.name}: {t['median_us']:.2f} us (median of 200, L2 flushed)")
                rows = traced(fn, call)
                report(rows)
                if args.dump:
                    os.makedirs(args.dump, exist_ok=True)
                    path = os.path.join(args.dump, f"{op}-{shape}.csv")
                    with open(path, "w") as f:
                        f.write(",".join(STAMPS) + "\n")
                        f.writelines(",".join(str(r[s]) for s in STAMPS) + "\n" for r in rows)


if __name__ == "__main__":
    main()
