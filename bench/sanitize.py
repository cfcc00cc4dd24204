"""Every CUDA kernel of the registry, run on its own at awkward shapes: the program that
bench/sanitize.sh hands to compute-sanitizer (memcheck, racecheck).

    python bench/sanitize.py [--ops int8_mm,int8_gemm] [--kernel NAME] [--cases] [--list]

For each op and each of its CUDA kernels, the registry is narrowed to that one kernel and the
public op is called on every case below with ``backend="cuda"``; a case the kernel declines
(its ``supports()`` reason) is skipped and counted. Shapes are small (a sanitizer slows every
kernel by 10-100x) and chosen to cross every edge: M = 0, 1 and odd M, N and K that are not
multiples of the tiles, offset and strided inputs. The last lines say which kernels ran how
many cases. ``LOWBIT_ARCH=80`` (or 89) puts the mma.sync kernels on a Hopper card, where
the sm_90a kernels then decline every case: bench/sanitize.sh runs each arch and fails when
a kernel ran no case in any of them, so a sanitizer run never passes by checking nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import sys
from typing import Callable, Dict, List

import torch

import lowbit
from lowbit import _backend as B

DEV = "cuda"
F8 = torch.float8_e4m3fn


@contextlib.contextmanager
def only(kernel):
    """The registry with ``kernel`` as its op's only kernel, and no remembered choice."""
    saved = B._KERNELS[kernel.op]
    B._KERNELS[kernel.op] = [kernel]
    B._generation += 1
    B._choices.clear()
    try:
        yield
    finally:
        B._KERNELS[kernel.op] = saved
        B._generation += 1
        B._choices.clear()


def _x(m, k, offset=0, pad=0):
    """bf16 [m, k] whose first element lies ``offset`` elements into its storage and whose
    rows are ``pad`` elements longer than k: what a sliced activation looks like."""
    base = torch.randn(offset + m * (k + pad), device=DEV, dtype=torch.bfloat16)
    return base[offset:].view(m, k + pad)[:, :k]


def _i8(m, k):
    return torch.randint(-127, 128, (m, k), device=DEV, dtype=torch.int8)


def _f8(m, k):
    return (torch.randn(m, k, device=DEV) * 8).to(F8)


def _scale(rows=None):
    """fp32 scales: [rows, 1], or one per tensor (0-d) when rows is None."""
    shape = () if rows is None else (rows, 1)
    return torch.rand(shape, device=DEV) + 0.5


GEMM_SHAPES = [(1, 136, 256), (17, 264, 4112), (100, 3000, 528), (0, 128, 256),
               (64, 4096, 1024), (300, 520, 2064)]
QUANT_SHAPES = [(0, 256), (1, 4096), (5, 136), (17, 1040), (130, 384)]


def quant_cases(fn: Callable, **extra) -> List[Callable]:
    cases = []
    for m, k in QUANT_SHAPES:
        grans = [("tensor", {}), ("token", {}), ("block", {"block": (1, 128)}),
                 ("block", {"block": (128, 128)})]
        if k % 128 == 0:  # groups must divide K (the op refuses others with a ValueError)
            grans.append(("group", {"group_size": 128}))
        for gran, kw in grans:
            for layout in ((0, 0), (3, 8)):
                def case(m=m, k=k, gran=gran, kw=kw, layout=layout):
                    fn(_x(m, k, *layout), granularity=gran,
                       backend="cuda", **kw, **extra)
                cases.append(case)
        static = dict(extra)
        if not static.get("symmetric", True):  # a static asymmetric scale comes with its zero
            static["zero"] = torch.tensor(3, device=DEV, dtype=torch.int32)
        cases.append(lambda m=m, k=k: fn(_x(m, k), torch.tensor(0.05, device=DEV),
                                         granularity="tensor", backend="cuda", **static))
    return cases


def fp8_cases() -> Dict[str, List[Callable]]:
    c = {"quantize_fp8": quant_cases(lowbit.quantize_fp8),
         "dequantize_fp8": [lambda m=m, k=k: lowbit.dequantize_fp8(
             _f8(m, k), _scale(m), backend="cuda") for m, k in QUANT_SHAPES],
         "fp8_scaled_mm": []}
    for m, n, k in GEMM_SHAPES:
        for rows in (False, True):
            for bias, out in ((False, torch.bfloat16), (True, torch.float16),
                              (True, torch.float32)):
                c["fp8_scaled_mm"].append(
                    lambda m=m, n=n, k=k, rows=rows, bias=bias, out=out: lowbit.fp8_scaled_mm(
                        _f8(m, k), _f8(n, k), _scale(m if rows else None),
                        _scale(n if rows else None),
                        torch.randn(n, device=DEV) if bias else None, out_dtype=out,
                        backend="cuda"))
        c["fp8_scaled_mm"].append(lambda m=m, n=n, k=k: lowbit.fp8_scaled_mm(
            _f8(m, k), _f8(n, k), torch.rand(m, -(-k // 128), device=DEV) + 0.5,
            torch.rand(-(-n // 128), -(-k // 128), device=DEV) + 0.5, backend="cuda"))
    return c


def int8_cases() -> Dict[str, List[Callable]]:
    c = {"quantize_int8": quant_cases(lowbit.quantize_int8, symmetric=True)
         + quant_cases(lowbit.quantize_int8, symmetric=False),
         "dequantize_int8": [], "int8_mm": [], "int8_gemm": []}
    for m, k in QUANT_SHAPES:
        c["dequantize_int8"] += [
            lambda m=m, k=k: lowbit.dequantize_int8(_i8(m, k), _scale(m), backend="cuda"),
            lambda m=m, k=k: lowbit.dequantize_int8(
                _i8(m, k), _scale(m), torch.randint(-128, 128, (m, 1), device=DEV,
                                                    dtype=torch.int32), backend="cuda")]
    for m, n, k in GEMM_SHAPES:
        c["int8_mm"].append(lambda m=m, n=n, k=k: lowbit.int8_mm(_i8(m, k), _i8(n, k),
                                                                 backend="cuda"))
        for rows, zero, bias, out in ((False, False, False, torch.bfloat16),
                                      (True, False, True, torch.float16),
                                      (True, True, True, torch.float32),
                                      (True, True, False, torch.bfloat16)):
            c["int8_gemm"].append(
                lambda m=m, n=n, k=k, rows=rows, zero=zero, bias=bias, out=out: lowbit.int8_gemm(
                    _i8(m, k), _i8(n, k), _scale(m if rows else None), _scale(n if rows else None),
                    torch.randn(n, device=DEV) if bias else None, out_dtype=out,
                    a_zero=torch.randint(-128, 128, (m, 1), device=DEV, dtype=torch.int32)
                    if zero else None, backend="cuda"))
    return c


WXA16_SHAPES = [(1, 8, 128), (3, 3000, 256), (17, 264, 4224), (100, 136, 1152), (0, 64, 128),
                (300, 520, 2048)]


def wxa16_cases() -> Dict[str, List[Callable]]:
    c = {"w4a16_gemm": [], "w8a16_gemm": []}
    for i, (m, n, k) in enumerate(WXA16_SHAPES):
        dtype = (torch.bfloat16, torch.float16)[i % 2]
        for g, zeros, bias in ((32, True, False), (64, False, True), (128, True, True)):
            if k % g:
                continue

            def w4(m=m, n=n, k=k, g=g, zeros=zeros, bias=bias, dtype=dtype):
                w = lowbit.Int4Weight(
                    torch.randint(0, 256, (n, k // 2), device=DEV, dtype=torch.uint8),
                    (torch.rand(n, k // g, device=DEV) * 0.01).to(dtype),
                    torch.randint(0, 16, (n, k // g), device=DEV, dtype=torch.uint8)
                    if zeros else None, g)
                lowbit.w4a16_gemm(_x(m, k).to(dtype), w.prepack(),
                                  torch.randn(n, device=DEV) if bias else None, backend="cuda")
            c["w4a16_gemm"].append(w4)
        for groups in (1, k // 128):
            c["w8a16_gemm"].append(lambda m=m, n=n, k=k, groups=groups, dtype=dtype:
                                   lowbit.w8a16_gemm(_x(m, k).to(dtype), _i8(n, k),
                                                     torch.rand(n, groups, device=DEV) * 0.01,
                                                     backend="cuda"))
    # More than a wave of 256-token tiles with a last wave of at most half the SMs, which
    # the sm_90a wgmma kernel splits alone (WXA16GemmArgs::split_from): M = 1024 on
    # SMs / 4 + 3 row blocks of 128, the last one ragged.
    sms = torch.cuda.get_device_properties(DEV).multi_processor_count
    m, n, k = 1024, 128 * (-(-sms // 4) + 3) - 40, 2048
    c["w4a16_gemm"].append(lambda m=m, n=n, k=k: lowbit.w4a16_gemm(
        _x(m, k), lowbit.Int4Weight(
            torch.randint(0, 256, (n, k // 2), device=DEV, dtype=torch.uint8),
            (torch.rand(n, k // 128, device=DEV) * 0.01).to(torch.bfloat16),
            torch.randint(0, 16, (n, k // 128), device=DEV, dtype=torch.uint8), 128).prepack(),
        torch.randn(n, device=DEV), backend="cuda"))
    c["w8a16_gemm"].append(lambda m=m, n=n, k=k: lowbit.w8a16_gemm(
        _x(m, k), _i8(n, k), torch.rand(n, 1, device=DEV) * 0.01, backend="cuda"))
    return c


def int4_quantize_cases() -> Dict[str, List[Callable]]:
    c = []
    for i, (n, k) in enumerate([(1, 128), (37, 384), (300, 4224), (0, 128)]):
        dtype = (torch.bfloat16, torch.float16, torch.float32)[i % 3]
        w = torch.randn(n, k, device=DEV).to(dtype)
        buf = torch.zeros(n * k + 5, device=DEV, dtype=dtype)
        buf[5:] = w.reshape(-1)
        # contiguous (vector loads), column-major and a misaligned offset (element loads)
        for v in (w, w.t().contiguous().t(), buf[5:].view(n, k)):
            for g, sym in ((32, True), (128, False)):
                c.append(lambda v=v, g=g, sym=sym: lowbit.int4_quantize(
                    v, group_size=g, symmetric=sym, backend="cuda"))
    return {"int4_quantize": c}


# Kernels whose path ends in a cuBLAS call (dequantize, then F.linear). racecheck crashes
# inside cuBLAS's own nvjet kernels there ("Internal Sanitizer Error ... hardware exception",
# H200, 2026-12-03) even when told to look at lowbit's kernels only, and their lowbit part,
# the dequantize kernel, has no shared memory to race on: racecheck runs leave them out
# (--no-cublas); memcheck runs them.
CUBLAS_KERNELS = ("cuda_w4a16_gemm_dequant", "cuda_w8a16_gemm_dequant")
FUSED_OPS = ("fp8_linear", "int8_linear")


# The layer ops' quantizer-in-the-GEMM kernels (lowbit.backends.cuda.linear.FUSED_LINEAR):
# not registry kernels of one op, so each case is a whole layer forward with
# LOWBIT_FUSED_QUANT=1, counted as run where lowbit.explain names the fused kernel. M <= 64
# (their range); N and K off the tiles; rows padded (strided) and not; bf16 and fp16; static
# and dynamic activation scales; bias or not.
FUSED_SHAPES = [(1, 136, 256), (3, 3000, 4112), (17, 264, 1040), (64, 520, 2064)]


def fused_cases() -> Dict[str, List[Callable]]:
    c = {"fp8_linear": [], "int8_linear": []}
    for i, (m, n, k) in enumerate(FUSED_SHAPES):
        for dtype, static, bias, pad in ((torch.bfloat16, False, True, 0),
                                         (torch.float16, True, False, 8)):
            def fp8(m=m, n=n, k=k, dtype=dtype, static=static, bias=bias, pad=pad):
                return lowbit.fp8_linear, (
                    _x(m, k, 0, pad).to(dtype), _f8(n, k), _scale(n),
                    torch.randn(n, device=DEV).to(dtype) if bias else None,
                    torch.tensor(0.05, device=DEV) if static else None)

            def int8(m=m, n=n, k=k, dtype=dtype, static=static, bias=bias, pad=pad):
                return lowbit.int8_linear, (
                    _x(m, k, 0, pad).to(dtype), _i8(n, k), _scale(n),
                    torch.randn(n, device=DEV).to(dtype) if bias else None,
                    torch.tensor(0.05, device=DEV) if static else None)
            c["fp8_linear"].append(fp8)
            c["int8_linear"].append(int8)
    return c


def run_fused(op: str, cases: List[Callable]) -> None:
    """Each case's layer forward with the fused kernel on, where explain says it takes it."""
    import os

    from lowbit.backends.cuda.linear import FUSED_ENV, FUSED_LINEAR

    name = FUSED_LINEAR[op][0]
    saved = os.environ.get(FUSED_ENV)
    os.environ[FUSED_ENV] = "1"
    ran = declined = 0
    try:
        for case in cases:
            fn, args = case()
            if lowbit.explain(fn, *args, backend="cuda").kernel != name:
                declined += 1
                continue
            fn(*args, backend="cuda")
            ran += 1
        torch.cuda.synchronize()
    finally:
        if saved is None:
            os.environ.pop(FUSED_ENV, None)
        else:
            os.environ[FUSED_ENV] = saved
    print(f"{op:16s} {name:32s} ran {ran:3d}, declined {declined:3d}", flush=True)


def all_cases() -> Dict[str, List[Callable]]:
    cases = fp8_cases()
    cases.update(int8_cases())
    cases.update(wxa16_cases())
    cases.update(int4_quantize_cases())
    cases.update(fused_cases())
    return cases


def _describe(case: Callable) -> str:
    """A case's bound values (its lambda's defaults: m, n, k, dtype...)."""
    params = inspect.signature(case).parameters.values()
    return ", ".join(f"{p.name}={p.default}" for p in params if p.default is not p.empty)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", default="", help="comma-separated ops (default: every op here)")
    p.add_argument("--list", action="store_true", help="list the kernels and case counts")
    p.add_argument("--kernel", default="",
                   help="comma-separated kernel names: only these (default: every CUDA kernel)")
    p.add_argument("--cases", action="store_true",
                   help="a line per case once it has run (synchronized), so that a sanitizer "
                        "error or a crash falls after the last case named")
    p.add_argument("--no-cublas", action="store_true",
                   help=f"leave out the kernels that end in a cuBLAS call ({', '.join(CUBLAS_KERNELS)})")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 1
    cases = all_cases()
    ops = [o for o in args.ops.split(",") if o] or list(cases)
    bad = [o for o in ops if o not in cases]
    if bad:
        p.error(f"--ops: unknown {bad}; known: {sorted(cases)}")
    for op in ops:
        if op in FUSED_OPS:
            if args.list:
                print(f"{op:16s} (fused layer kernel) {len(cases[op])} cases")
            else:
                run_fused(op, cases[op])
            continue
        wanted = [n for n in args.kernel.split(",") if n]
        for kernel in [k for k in B.kernels(op) if k.backend == "cuda"
                       and (not wanted or k.name in wanted)]:
            why = kernel.available() if kernel.available else None
            if args.no_cublas and kernel.name in CUBLAS_KERNELS:
                print(f"{op:16s} {kernel.name:32s} left out (--no-cublas)", flush=True)
                continue
            if why:
                print(f"{op:16s} {kernel.name:32s} not available here: {why}")
                continue
            if args.list:
                print(f"{op:16s} {kernel.name:32s} {len(cases[op])} cases")
                continue
            ran = declined = 0
            with only(kernel):
                for i, case in enumerate(cases[op]):
                    try:
                        case()
                    except NotImplementedError:
                        declined += 1
                        continue
                    ran += 1
                    if args.cases:
                        torch.cuda.synchronize()
                        print(f"{op:16s} {kernel.name:32s} case {i} ({_describe(case)}) done",
                              flush=True)
                torch.cuda.synchronize()
            print(f"{op:16s} {kernel.name:32s} ran {ran:3d}, declined {declined:3d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
