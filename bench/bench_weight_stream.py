"""Small-M fp8_scaled_mm as a decode step runs it: back-to-back calls on distinct weights.

    python -m bench.bench_weight_stream [--ms 1,16,32,64] [--nk 4096x4096,...] [--kernels swapab]
                                        [--md PATH]

`lowbit bench --kernels` times one call at a time with the L2 flushed in between: each row then
carries a launch's start, its pipeline fill and the write-back of the flush's dirty lines,
a fixed 5-10 us that dominates a 16 MB weight. A decode step instead runs one linear layer
after another. Here each row is a CUDA graph of calls, one per weight copy (enough copies
that they fill four L2s, so no weight is served from cache), and the time per call is the
replay's time over the number of calls, with no flush. The same graph of plain reads of each
weight (torch's sum, and a kernel that only reads) gives the streaming floor of those bytes
under this method. Weight GB/s counts the N x K fp8 bytes only.

The sm_90a kernels launch as programmatic dependent launches (each starts its setup while
the call before it finishes); their rows are also timed with that off ("no PDL"), which is
how the plain reads and torch's kernels run.
"""
from __future__ import annotations

import argparse
import math

import torch
import triton
import triton.language as tl

from lowbit.bench import matrix, table
from lowbit.bench.cases import fp8_operands, runnable_kernels, scaled_mm_anchor
from lowbit.bench.timing import bench, capture_graph, copy_bandwidth

from lowbit.backends.cuda import gemm as cuda_gemm  # the programmatic-launch switch

L2_FILLS = 4


@triton.jit
def _read_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + tl.program_id(0), tl.sum(tl.load(x_ptr + offs, mask=offs < n, other=0)))


def plain_read(block):
    """A kernel that only reads: BLOCK int32 words a program (16-byte loads), one word out."""
    def run(w):
        x = w.view(torch.int32).view(-1)
        grid = triton.cdiv(x.numel(), block)
        out = torch.empty(grid, dtype=torch.int32, device=x.device)
        _read_kernel[(grid,)](x, out, x.numel(), BLOCK=block, num_warps=4)
    return run


# Plain reads of the weight bytes, for the streaming floor under the same method: torch's
# reductions, and a read-only kernel with 4, 8 and 16 KB a program (the best of them shown).
FLOORS = {
    "read: torch sum (as fp32)": lambda w: w.view(torch.float32).sum(),
}
READ_BLOCKS = (1024, 2048, 4096)


def per_call_us(fns, rep):
    """GPU time per call of the calls `fns`, run back to back in one graph replay."""
    replay = capture_graph(lambda: [f() for f in fns])
    return bench(replay, rep=rep, flush_l2=False)["median_us"] / len(fns)


def rows_for(m, n, k, rep, names=None):
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    copies = max(2, math.ceil(L2_FILLS * l2 / (n * k)))
    a, b, sa, sb = fp8_operands(m, n, k, "row")
    ws = [b] + [torch.empty_like(b).copy_(b) for _ in range(copies - 1)]
    out = []
    for label, op in FLOORS.items():
        out.append((label, per_call_us([lambda w=w: op(w) for w in ws], rep)))
    best = min((per_call_us([lambda w=w, f=plain_read(bl): f(w) for w in ws], rep), bl)
               for bl in READ_BLOCKS)
    out.append((f"read: read-only kernel, {best[1] * 4 // 1024} KB a program", best[0]))
    out.append(("torch._scaled_mm", per_call_us([scaled_mm_anchor(a, w, sa, sb) for w in ws], rep)))
    t_anchor = out[-1][1]
    args = (a, b, sa, sb, None, torch.bfloat16, False)
    for kern in runnable_kernels("fp8_scaled_mm", args, names=names):
        calls = [lambda w=w, kern=kern: kern.fn(a, w, sa, sb, None, torch.bfloat16, False)
                 for w in ws]
        if kern.name.startswith("sm90_") and cuda_gemm.programmatic_launch():
            cuda_gemm.set_programmatic_launch(False)
            try:
                out.append((f"{kern.name}, no PDL", per_call_us(calls, rep)))
            finally:
                cuda_gemm.set_programmatic_launch(True)
        out.append((kern.name, per_call_us(calls, rep)))
    return [dict(shape=f"{m}x{n}x{k}", copies=copies, impl=name, us=us,
                 weight_tbps=n * k / us / 1e6, vs_anchor=t_anchor / us) for name, us in out]


COLUMNS = (
    ("M x N x K", lambda r: r["shape"]),
    ("weights", lambda r: str(r["copies"])),
    ("kernel", lambda r: r["impl"]),
    ("us per call", lambda r: table.us(r["us"])),
    ("weight TB/s", lambda r: table.num(r["weight_tbps"], ".2f")),
    ("vs anchor", lambda r: table.ratio(r["vs_anchor"])),
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,16,32,64")
    ap.add_argument("--rep", type=int, default=30)
    ap.add_argument("--nk", help="comma-separated NxK weight shapes (default: the PERF.md set); "
                                 "N and K multiples of 16, as torch._scaled_mm needs")
    ap.add_argument("--kernels", help="comma-separated name fragments: time only these kernels")
    ap.add_argument("--md", help="also write the table to this markdown file")
    args = ap.parse_args()
    names = [f for f in (args.kernels or "").split(",") if f] or None
    torch.manual_seed(0)
    head = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, copy "
            f"{copy_bandwidth()['gbps'] / 1e3:.2f} TB/s; back-to-back calls in one graph, "
            f"distinct weights filling {L2_FILLS} L2s, no flush")
    print(head, flush=True)
    shapes = [tuple(s) for s in matrix.parse_shapes(args.nk)] if args.nk else matrix.NK
    rows = []
    for n, k in shapes:
        for m in map(int, args.ms.split(",")):
            new = rows_for(m, n, k, args.rep, names)
            print(table.format_table(new, COLUMNS), flush=True)
            rows += new
            torch.cuda.empty_cache()
    md = head + "\n\n" + table.format_table(rows, COLUMNS, markdown=True) + "\n"
    print("\n" + md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
