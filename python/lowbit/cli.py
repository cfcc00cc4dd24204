"""The ``lowbit`` command line. ``lowbit`` alone runs its default job, ``lowbit info``."""
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


def info(stream=sys.stdout) -> int:
    import torch

    import lowbit
    from lowbit import _backend
    from lowbit._build import build_info

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
    for k, v in _versions().items():
        p(f"  {k}: {v}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            p(f"  GPU {i}: {prop.name}, compute capability {prop.major}.{prop.minor}, "
              f"{prop.multi_processor_count} SMs, {prop.total_memory / 2**30:.0f} GiB")
    else:
        p("  GPU: none visible to torch")
    p(f"  default backend: {_backend.default_backend()}")
    p("")
    p("op                 backends that can run it here")
    gpu = torch.cuda.is_available()
    for op in lowbit.ops.OPS:
        names = []
        for k in _backend.kernels(op):
            why = k.available() if k.available is not None else None
            if k.backend != "reference" and not gpu:
                why = why or "no GPU"
            names.append(f"{k.backend}/{k.name}" + (f" [unavailable: {why}]" if why else ""))
        p(f"  {op:<17}{', '.join(names)}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lowbit", description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    sub.add_parser("info", help="version, build flags, devices, and backends per op")
    args = parser.parse_args(argv)
    if args.cmd in (None, "info"):
        return info()
    parser.error(f"unknown command {args.cmd}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
