"""The ``lowbit`` command line: ``lowbit analyze`` (the main job, and what ``lowbit`` with no
command runs; it needs the ``lowbit[analyze]`` extra), ``lowbit info`` and ``lowbit bench``."""
from __future__ import annotations

import argparse
import platform
import sys


def _versions():
    import numpy
    import torch

    out = {"python": platform.python_version(), "numpy": numpy.__version__,
           "torch": torch.__version__, "torch CUDA": torch.version.cuda or "none"}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception as e:  # triton is optional: report, never fail
        out["triton"] = f"not available ({type(e).__name__})"
    return out


def kernel_groups(op: str, gpu: bool) -> list[tuple[str | None, list[str]]]:
    """The kernels of `op` grouped by status: [(None, ready kernels), (reason, kernels)...],
    the ready group first, the others in the order their reason first appears."""
    from lowbit import _backend

    groups: dict = {None: []}
    for k in _backend.kernels(op):
        why = k.available() if k.available is not None else None
        if k.backend != "reference" and not gpu:
            why = why or NO_GPU
        groups.setdefault(why, []).append(f"{k.backend}/{k.name}")
    return [(why, names) for why, names in groups.items() if names]


NO_GPU = "torch sees no CUDA device on this machine"
WIDTH = 100


def _fused_line(op: str) -> list:
    """The kernel that runs layer op ``op`` as one launch where it applies, and its switch
    (lowbit/backends/cuda/linear.py), as items for _wrap; empty when this build has none."""
    from .backends.cuda import FUSED_LINEAR, kernel_id
    from .backends.cuda.linear import FUSED_ENV, fused_enabled

    if op not in FUSED_LINEAR or kernel_id(FUSED_LINEAR[op][0]) is None:
        return []
    name, _, gemm = FUSED_LINEAR[op]
    state = "on" if fused_enabled() else "off"
    return [f"cuda/{name}", f"in place of the two kernels where {gemm} would run",
            f"with {FUSED_ENV}=1 ({state} here)"]


def _early_line(op: str) -> list:
    """Whether layer op ``op``'s sm_90a GEMMs load their first weight stages before waiting
    for the quantizer, and the switch (lowbit/backends/cuda/linear.py); empty when this build
    has no such GEMM."""
    from .backends.cuda import FUSED_LINEAR, kernel_id
    from .backends.cuda.linear import (WEIGHT_EARLY_ENV, WEIGHT_EARLY_GEMMS,
                                       WGMMA_EARLY_MAX_M, weight_early)

    if op not in FUSED_LINEAR:
        return []
    family = FUSED_LINEAR[op][2].split("_")[1]  # sm90_<family>_gemm_swapab
    gemms = [g for g in WEIGHT_EARLY_GEMMS
             if g.split("_")[1] == family and kernel_id(g) is not None]
    if not gemms:
        return []
    state = "on" if weight_early(gemms[0]) else "off"
    verb = "starts its" if len(gemms) == 1 else "start their"
    items = [f"{' and '.join(gemms)} {verb} weight loads before the quantizer ends",
             f"with {WEIGHT_EARLY_ENV}=1 ({state} here)"]
    wgmma = [g for g in gemms if g.endswith("_wgmma")]
    # weight_early's own rule says where the row limit applies (the switch unset).
    if wgmma and weight_early(wgmma[0]) and not weight_early(wgmma[0], WGMMA_EARLY_MAX_M + 1):
        items.append(f"{wgmma[0]} to M = {WGMMA_EARLY_MAX_M} while it is unset")
    return items


def _wrap(first: str, indent: int, items: list[str]) -> list[str]:
    """`first` then the items comma-separated, continued on indented lines at WIDTH."""
    lines, line = [], first
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if len(line) + 1 + len(piece) > WIDTH and line.strip():
            lines.append(line)
            line = " " * indent + piece
        else:
            line += ("" if line.endswith(" ") else " ") + piece
    return lines + [line]


def info(stream=None) -> int:
    import torch

    import lowbit
    from lowbit import _backend
    from lowbit._build import build_info
    from lowbit.spec import MODULE_OPS

    stream = stream or sys.stdout  # looked up per call: a captured or replaced stdout
    p = lambda *a: print(*a, file=stream)  # noqa: E731
    p(f"lowbit {lowbit.__version__}")
    b = build_info()
    if not b.get("compiled"):
        p(f"  compiled module: not built ({b.get('error')})")
    else:
        cuda = "yes" if b["cuda"] else "no"
        p(f"  compiled module: lowbit._C, CUDA kernels: {cuda}"
          + (f" (CUDA {b['cuda_version']}, archs {b['cuda_archs']}, cudart static)"
             if b["cuda"] else ""))
        if b.get("cuda_archs_source"):
            p(f"  CUDA archs chosen by: {b['cuda_archs_source']}")
    from lowbit import _native
    p(f"  registered ops in C++ (lowbit._torch_ops): {_native.status()}")
    for k, v in _versions().items():
        p(f"  {k}: {v}")
    gpu = torch.cuda.is_available()
    if gpu:
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            p(f"  GPU {i}: {prop.name}, compute capability {prop.major}.{prop.minor}, "
              f"{prop.multi_processor_count} SMs, {prop.total_memory / 2**30:.0f} GiB, "
              f"native fp8: {lowbit.native_fp8_format(torch.device('cuda', i))}")
    else:
        p("  GPU: none visible to torch")
    p(f"  default backend: {_backend.default_backend()}")
    p("")
    p("op                 backends that can run it here (kernels grouped by status)")
    reasons: list[str] = []
    for op in lowbit.ops.OPS:
        lead = f"  {op:<17}"
        if op in MODULE_OPS:  # composed of the ops above: runs their kernels
            for line in _wrap(lead + "composed:", len(lead) + 2, MODULE_OPS[op].split(", ")):
                p(line)
            for label, items in (("fused:", _fused_line(op)),
                                 ("early weights:", _early_line(op))):
                for line in (_wrap(" " * (len(lead) + 2) + label, len(lead) + 4, items)
                             if items else ()):
                    p(line)
            continue
        for why, names in kernel_groups(op, gpu):
            if why is None:
                status = "ready:"
            else:
                if why not in reasons:
                    reasons.append(why)
                status = f"unavailable [{reasons.index(why) + 1}]:"
            for line in _wrap(lead + status, len(lead) + 2, names):
                p(line)
            lead = " " * len(lead)
    if reasons:
        p("")
        p("why unavailable:")
        for i, why in enumerate(reasons, 1):
            p(f"  [{i}] {why}")
    if gpu:
        p("")
        p("time them against torch on this GPU: lowbit bench --quick (lowbit bench --help)")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["analyze", *argv]  # no command: the main job, with its options
    parser = argparse.ArgumentParser(prog="lowbit", description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    sub.add_parser("info", help="version, build flags, devices, and backends per op")
    sub.add_parser("bench", add_help=False,
                   help="time lowbit's GPU ops (and --model: quantized models) against torch "
                        "(lowbit bench --help)")
    sub.add_parser("analyze", add_help=False,
                   help="quantize a real model at fp32/bf16/fp8/int8/int4 and report memory, "
                        "accuracy and speed (lowbit analyze --help)")
    args, rest = parser.parse_known_args(argv)
    if args.cmd == "bench":
        from lowbit.bench import main as bench_main

        return bench_main(argv[argv.index("bench") + 1:])
    if args.cmd == "analyze":
        from lowbit.analyze import main as analyze_main

        return analyze_main(argv[argv.index("analyze") + 1:])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.cmd == "info":
        return info()
    if args.cmd is None:
        parser.print_help()
        return 2
    parser.error(f"unknown command {args.cmd}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
