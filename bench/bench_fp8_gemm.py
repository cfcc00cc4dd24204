"""Each fp8_scaled_mm kernel of lowbit against torch._scaled_mm, shape by shape, on one GPU.

    python -m bench.bench_fp8_gemm [--ms 1,16,64,128,512,4096] [--modes row,block] [--fast]
                                   [--cube] [--kernels wgmma,swapab] [--md PATH]

Every registered CUDA and Triton kernel that supports a shape is timed by calling it directly
(no op dispatch, so small-M rows show kernel time, not Python time), with the L2 flushed
between repetitions, beside the anchor: `torch._scaled_mm` with the same scales (rowwise,
or tensorwise) and bf16 output, without fast accumulation. Block-scaled rows (1x128 for a,
128x128 for b) have no torch anchor on every version: they are compared with the rowwise
anchor of the same shape, which does fewer scale multiplies. `--fast` times fast accumulation
on both sides (no fp32 promotion). `err` is the relative
Frobenius difference from the anchor (block rows: from lowbit's reference semantics run by
the first kernel, so it reads 0 there).
"""
from __future__ import annotations

import argparse

import torch

import lowbit  # noqa: F401  (registers the kernels)
from lowbit._backend import kernels

from .anchors import rel_err
from .timing import bench, copy_bandwidth

SHAPES_NK = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]
def operands(m, n, k, mode):
    """fp8 a [M, K], b [N, K] and fp32 scales of `mode` (row, tensor or block), on the GPU."""
    a = (torch.randn(m, k, device="cuda") * 2).to(torch.float8_e4m3fn)
    b = (torch.randn(n, k, device="cuda") * 2).to(torch.float8_e4m3fn)
    if mode == "row":
        sa = torch.rand(m, 1, device="cuda") + 0.5
        sb = torch.rand(n, 1, device="cuda") + 0.5
    elif mode == "tensor":
        sa, sb = torch.tensor(0.7, device="cuda"), torch.tensor(1.3, device="cuda")
    else:
        sa = torch.rand(m, -(-k // 128), device="cuda") + 0.5
        sb = torch.rand(-(-n // 128), -(-k // 128), device="cuda") + 0.5
    return a, b, sa, sb


def anchor(a, b, sa, sb, mode, fast):
    """torch._scaled_mm with the same scales (rowwise ones for block mode), bf16 out."""
    if mode == "block":
        sa = torch.ones(a.shape[0], 1, device="cuda")
        sb = torch.ones(b.shape[0], 1, device="cuda")
    if mode == "tensor":
        return lambda: torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16,
                                        use_fast_accum=fast)
    return lambda: torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.bfloat16,
                                    use_fast_accum=fast)


def runnable_kernels(args, backends=("cuda", "triton"), names=None):
    """The registered fp8_scaled_mm kernels of `backends` that run `args` on this machine
    (only those whose name contains one of `names`, when given)."""
    for kern in kernels("fp8_scaled_mm"):
        if kern.backend not in backends:
            continue
        if names and not any(n in kern.name for n in names):
            continue
        if kern.available is not None and kern.available():
            continue
        if kern.supports and kern.supports(*args):
            continue
        yield kern


def rows_for(m, n, k, mode, rep, fast=False, names=None):
    a, b, sa, sb = operands(m, n, k, mode)
    args = (a, b, sa, sb, None, torch.bfloat16, fast)
    flops = 2.0 * m * n * k
    weight = n * k
    out = []
    anchor_fn = anchor(a, b, sa, sb, mode, fast)
    ref = anchor_fn()
    t_anchor = bench(anchor_fn, rep=rep, rep_ms=300)["median_us"]
    out.append(("torch._scaled_mm", t_anchor, None))
    first = None
    for kern in runnable_kernels(args, names=names):
        fn = lambda kern=kern: kern.fn(*args)
        res = fn()
        if mode == "block":
            first = res if first is None else first
            err = rel_err(res, first)
        else:
            err = rel_err(res, ref)
        out.append((kern.name, bench(fn, rep=rep, rep_ms=300)["median_us"], err))
    lines = []
    for name, us, err in out:
        lines.append(
            f"| {m}x{n}x{k} | {mode}{' fast' if fast else ''} | {name} | {us:.1f} | {flops / us / 1e6:.0f} | "
            f"{weight / us / 1e3:.0f} | {t_anchor / us:.2f} | "
            f"{'' if err is None else f'{err:.1e}'} |")
    return lines


def kernel_filter(arg):
    """The name fragments of a comma-separated --kernels value, or None for every kernel."""
    return [f for f in (arg or "").split(",") if f] or None


def card_line():
    """The first line of a table: the card, torch's version and the copy bandwidth."""
    return (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
            f"copy {copy_bandwidth()['gbps']:.0f} GB/s")


def print_table(head, groups, md=None):
    """Prints `head`, then each group of rows as soon as it is measured; all of it to `md`."""
    print("\n".join(head), flush=True)
    lines = list(head)
    for new in groups:
        print("\n".join(new), flush=True)
        lines += new
        torch.cuda.empty_cache()
    if md:
        with open(md, "w") as f:
            f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,16,32,64,128,512,4096")
    ap.add_argument("--modes", default="row")
    ap.add_argument("--cube", action="store_true", help="add 8192^3")
    ap.add_argument("--rep", type=int, default=50)
    ap.add_argument("--fast", action="store_true", help="fast_accum on both sides")
    ap.add_argument("--kernels", help="comma-separated name fragments: time only these kernels "
                    "(block rows' err is then against the first of them)")
    ap.add_argument("--md")
    args = ap.parse_args()
    names = kernel_filter(args.kernels)
    torch.manual_seed(0)
    head = [
        card_line(),
        "",
        "| M x N x K | scales | kernel | us | TFLOP/s | weight GB/s | vs anchor | err |",
        "|---|---|---|---|---|---|---|---|",
    ]
    shapes = [(m, n, k) for n, k in SHAPES_NK for m in map(int, args.ms.split(","))]
    if args.cube:
        shapes.append((8192, 8192, 8192))

    def groups():
        for mode in args.modes.split(","):
            for m, n, k in shapes:
                try:
                    yield rows_for(m, n, k, mode, args.rep, args.fast, names)
                except Exception as e:  # a failed row is reported, the table goes on
                    yield [f"| {m}x{n}x{k} | {mode} | error | {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160]} | | | | |"]

    print_table(head, groups(), args.md)


if __name__ == "__main__":
    main()
