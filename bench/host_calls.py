"""Host time of one call of lowbit's single ops at decode size, on both GPU backends and
through ``torch.ops``, against ``torch.add_``: back-to-back calls, the median of interleaved
rounds (a host's noise moves every row of a round together).

    python bench/host_calls.py [--calls 2000] [--rounds 7]

M = 1, 4096 x 4096 for the GEMMs (the weight-only ones also at 1 x 14336 x 4096, where
Triton's decode split makes two launches); a 1 x 4096 bf16 row, per token, for the
quantizers. The indented rows are the parts of the Triton GEMM's call: the C++ entry that
hands back the signature's Python step (lowbit/_native.py), the step, and its launcher
without the device guard. Every signature is prepared before the timing. The last column is
the call's GPU time, as a CUDA-graph replay of 20 back-to-back calls (no host work, no L2
flush): where the wall time is well above it, the call is host-bound.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import lowbit
from lowbit import _native
from lowbit.bench import timing
from lowbit.scale_layout import scale_tile
from lowbit.triton_kernels import fp8_gemm


def cases():
    dev, bf = "cuda", torch.bfloat16
    x = torch.ones(1, 4096, device=dev, dtype=bf)
    y = torch.zeros_like(x)
    a, sa = lowbit.quantize_fp8(torch.randn(1, 4096, device=dev), granularity="token")
    b, sb = lowbit.quantize_fp8(torch.randn(4096, 4096, device=dev), granularity="channel")
    a8 = torch.randint(-127, 128, (1, 4096), dtype=torch.int8, device=dev)
    b8 = torch.randint(-127, 128, (4096, 4096), dtype=torch.int8, device=dev)
    sa8, sb8 = torch.rand(1, 1, device=dev), torch.rand(4096, 1, device=dev)
    xb = torch.randn(1, 4096, device=dev, dtype=bf)
    ops, entry = torch.ops.lowbit, _native.ENTRY.get("fp8_scaled_mm")
    out = {
        "torch.add_": lambda: y.add_(x),
        # The floor of any call through torch.ops: the dispatcher's boxed path from Python.
        "torch.ops.aten.add_.Tensor": lambda: torch.ops.aten.add_.Tensor(y, x),
        "torch.empty (1 x 4096 bf16)": lambda: torch.empty((1, 4096), dtype=bf, device=dev),
        "fp8_scaled_mm cuda": lambda: lowbit.fp8_scaled_mm(a, b, sa, sb),
        "fp8_scaled_mm triton": lambda: lowbit.fp8_scaled_mm(a, b, sa, sb, backend="triton"),
    }
    if _native.EMPTY is not None:  # what the Triton launches allocate with
        out["lowbit's C++ empty (1 x 4096 bf16)"] = (
            lambda d=torch.device(dev): _native.EMPTY(d, bf, 1, 4096))
    for _ in range(3):  # prepare the Triton signature (its plan and step)
        lowbit.fp8_scaled_mm(a, b, sa, sb, backend="triton")
    step = entry(a, b, sa, sb, None, bf, False, "triton") if entry is not None else None
    if type(step) is list:
        launch = fp8_gemm.fp8_scaled_mm_launcher(a, b, sa, sb, None, bf, False,
                                                 a_tile=scale_tile(sa.shape, a.shape),
                                                 b_tile=scale_tile(sb.shape, b.shape))
        out.update({
            "  entry alone (hands back the step)":
                lambda: entry(a, b, sa, sb, None, bf, False, "triton"),
            "  step alone (device guard, launcher)":
                lambda: step[0](a, b, sa, sb, None, bf, False),
            "  launcher alone (output, bound launch)":
                lambda: launch(a, b, sa, sb, None, bf, False),
        })
    out.update({
        "torch.ops fp8_scaled_mm": lambda: ops.fp8_scaled_mm(a, b, sa, sb, None, bf, False,
                                                             "default"),
        # What a compiled graph calls: the overload itself, not the packet.
        "torch.ops fp8_scaled_mm.default": lambda: ops.fp8_scaled_mm.default(
            a, b, sa, sb, None, bf, False, "default"),
        "int8_gemm cuda": lambda: lowbit.int8_gemm(a8, b8, sa8, sb8),
        "int8_gemm triton": lambda: lowbit.int8_gemm(a8, b8, sa8, sb8, backend="triton"),
        "torch.ops int8_gemm": lambda: ops.int8_gemm(a8, b8, sa8, sb8, None, bf, None,
                                                     "default"),
        "quantize_int8 cuda": lambda: lowbit.quantize_int8(xb),
        "quantize_int8 triton": lambda: lowbit.quantize_int8(xb, backend="triton"),
        "torch.ops quantize_int8": lambda: ops.quantize_int8(xb, None, None, "token", 128,
                                                             [128, 128], True, "default"),
        "quantize_fp8 cuda": lambda: lowbit.quantize_fp8(xb, granularity="token"),
        "quantize_fp8 triton": lambda: lowbit.quantize_fp8(xb, granularity="token",
                                                           backend="triton"),
        "torch.ops quantize_fp8": lambda: ops.quantize_fp8(xb, None, "e4m3fn", "token", 128,
                                                           [128, 128], True, "default"),
    })
    for n in (4096, 14336):
        w = torch.randn(n, 4096, device=dev, dtype=bf)
        w4 = lowbit.int4_quantize(w, group_size=128)  # canonical: Triton's layout
        layouts = {"cuda": w4.prepack(), "triton": w4}  # the CUDA kernels' own layout
        q8, s8, _ = lowbit.quantize_int8(w, granularity="channel")
        for be in ("cuda", "triton"):
            out[f"w4a16_gemm {be} (N = {n})"] = (
                lambda w4=layouts[be], be=be: lowbit.w4a16_gemm(xb, w4, backend=be))
            out[f"w8a16_gemm {be} (N = {n})"] = (
                lambda q8=q8, s8=s8, be=be: lowbit.w8a16_gemm(xb, q8, s8, backend=be))
        out[f"torch.ops w8a16_gemm (N = {n})"] = (
            lambda q8=q8, s8=s8: ops.w8a16_gemm(xb, q8, s8, None, "default"))
    return out


def gpu_us(fn, calls: int = 20) -> str:
    """GPU time per call of fn in a captured graph of `calls` calls, or "-" where the call
    cannot be captured."""
    try:
        replay = timing.capture_graph(fn, calls=calls)
        return f"{timing.bench(replay, flush_l2=False, rep=50)['median_us'] / calls:.2f}"
    except Exception as e:  # noqa: BLE001 (a row, not the run)
        return f"- ({type(e).__name__})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    fns = cases()
    for f in fns.values():  # prepare every signature
        for _ in range(3):
            f()
    times = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, f in fns.items():
            for _ in range(50):
                f()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.calls):
                f()
            times[k].append((time.perf_counter() - t) / args.calls * 1e6)
            torch.cuda.synchronize()
    add = statistics.median(times["torch.add_"])
    print(f"{'call':42s} {'us (median)':>12s} {'x add_':>7s}  {'range':14s} GPU us (graph)")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"{k:42s} {m:12.2f} {m / add:7.2f}  {min(v):.2f}-{max(v):.2f}".ljust(80)
              + gpu_us(fns[k]))
    print("plans:", _native.stats())


if __name__ == "__main__":
    main()
