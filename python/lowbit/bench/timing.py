"""The one timing helper of every lowbit benchmark (`lowbit bench` and the tools in bench/).

GPU time comes from CUDA events around each repetition, after a warm-up, with the L2 flushed
between repetitions so that a weight that fits in the 50 MB L2 is not served from cache (the
method of triton.testing.do_bench). Host overhead is measured separately: `eager_host_us`
is the wall time per call of back-to-back calls (`paired_host_us`: against a reference call in
interleaved rounds), `graph_bench` the GPU time of a CUDA-graph
replay (no Python, no dispatcher). Only torch is imported, and CUDA is looked for at call
time, so this module imports on a CPU-only machine.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

L2_FLUSH_BYTES = 256 << 20  # 5x the H100's 50 MB L2 (and 4x the H200's 60 MB)
# "write" (buf.zero_(), as triton's do_bench) leaves the L2 full of dirty lines, whose
# write-back is then charged to the timed kernel; "read" (a sum over the buffer) leaves clean
# lines, closer to a decode step whose previous kernels mostly read weights.
FLUSH_MODE = "write"
_flush_bufs: dict[int, torch.Tensor] = {}


def no_gpu_reason() -> str | None:
    """None when torch sees a CUDA device, else a sentence saying why it does not."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None); "
                "install a CUDA build of torch")
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device "
            "(torch.cuda.is_available() is False: no NVIDIA GPU, driver, or visible device)")


def require_cuda() -> None:
    why = no_gpu_reason()
    if why:
        raise RuntimeError(f"no CUDA device: {why}; the benchmarks time GPU kernels")


def synchronize() -> None:
    torch.cuda.synchronize()


def flush_l2(mode: str | None = None) -> None:
    """Evict the L2 with 256 MB of traffic ("write" or "read"; default FLUSH_MODE).
    Enqueued on the current stream, not synchronized."""
    require_cuda()
    dev = torch.cuda.current_device()
    buf = _flush_bufs.get(dev)
    if buf is None:
        buf = _flush_bufs[dev] = torch.ones(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    if (mode or FLUSH_MODE) == "read":
        buf.sum()
    else:
        buf.zero_()


_flush_l2 = flush_l2  # bench() has a keyword of the same name


def _quantile(sorted_vals: list[float], q: float) -> float:
    # Nearest-rank on a sorted list; no numpy needed.
    return sorted_vals[min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))]


def _estimate_ms(fn: Callable[[], Any], n: int = 3) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return max(start.elapsed_time(end) / n, 1e-4)


def bench(
    fn: Callable[[], Any],
    *,
    warmup_ms: float = 25,
    rep: int = 100,
    rep_ms: float | None = None,
    flush_l2: bool = True,
) -> dict:
    """GPU time of `fn()`: median and 20th/80th percentiles over `n` repetitions, in us.

    `rep` is the number of repetitions; with `rep_ms`, as many as fit in that many
    milliseconds of fn's time, at least 5 and at most `rep` (slow rows stay affordable).
    The L2 flush is enqueued before each start event, outside the timed region. While the
    flush runs on the GPU the host enqueues fn, so launch latency is hidden unless fn's host
    work outlasts the flush (about 0.1 ms); then the time includes it, as it would in eager use.
    """
    require_cuda()
    fn()  # first call: lazy init, autotuning, torch.compile
    torch.cuda.synchronize()
    est = _estimate_ms(fn)
    for _ in range(max(1, min(1000, int(warmup_ms / est)))):
        fn()
    n = rep if rep_ms is None else max(5, min(rep, int(rep_ms / est)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    torch.cuda.synchronize()
    for i in range(n):
        if flush_l2:
            _flush_l2()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    us = sorted(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))
    return dict(median_us=_quantile(us, 0.5), p20_us=_quantile(us, 0.2), p80_us=_quantile(us, 0.8), n=n)


def capture_graph(fn: Callable[[], Any], warmup: int = 3, calls: int = 1) -> Callable[[], None]:
    """Capture `calls` back-to-back calls of fn in one CUDA graph; returns the replay callable.

    Warm-up runs on a side stream first, as torch requires, so that lazy initialisation
    (cuBLAS handles, workspaces, autotuning) happens outside the capture. With calls > 1 the
    replay's own launch cost (a few us) is shared: the GPU time per call of a tiny kernel.
    """
    require_cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    torch.cuda.synchronize()
    return graph.replay  # the bound method keeps the graph (and its memory pool) alive


def graph_bench(fn: Callable[[], Any], **bench_kwargs) -> dict:
    """GPU time of fn as a CUDA-graph replay: `bench` over the replays (same keywords)."""
    return bench(capture_graph(fn), **bench_kwargs)


def eager_host_us(fn: Callable[[], Any], *, n: int = 200, warmup: int = 10) -> float:
    """Wall time per call, in us, of n back-to-back calls synchronized once at the end.

    This is max(host time per call, GPU time per call): when it exceeds the graph-replay time
    of the same calls, the difference is host overhead (Python, dispatcher, allocation).
    No L2 flush here, so compare with `eager_host_us(capture_graph(fn))`, not a flushed number.
    """
    require_cuda()
    for _ in range(warmup):
        fn()
    return wall_us(fn, n)


HOST_ROUNDS = 5  # paired_host_us's rounds (lowbit bench's host table names the count)


def paired_host_us(fn: Callable[[], Any], ref: Callable[[], Any], *,
                   rounds: int = HOST_ROUNDS, n: int = 200, warmup: int = 10) -> tuple:
    """(fn's wall us per call, ref's, fn / ref) as eager_host_us times them, in ``rounds``
    interleaved rounds (ref's n calls, then fn's), each the median over the rounds; the
    ratio is the median of the rounds' own ratios.

    A host-bound call's wall time follows the host's state (clock, other processes, the
    allocator), which drifts over a run: a ratio of two timings taken apart moves with it,
    one taken round by round does not, and one slow round does not move the median."""
    require_cuda()
    for _ in range(warmup):
        ref()
        fn()
    fs, rs, qs = [], [], []
    for _ in range(rounds):
        r = wall_us(ref, n)
        f = wall_us(fn, n)
        fs.append(f)
        rs.append(r)
        qs.append(f / r if r > 0 else float("nan"))
    return statistics.median(fs), statistics.median(rs), statistics.median(qs)


def wall_us(fn: Callable[[], Any], n: int) -> float:
    """Wall time per call, in us, of n back-to-back calls of fn (synchronized before and
    after): what a host-bound model's throughput is made of. No warm-up, no flush."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def copy_bandwidth(nbytes: int = 1 << 30, rep: int = 50) -> dict:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written, in GB/s."""
    require_cuda()
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    stats = bench(lambda: dst.copy_(src), rep=rep, flush_l2=False)  # 1 GB does not fit in L2
    gbps = 2 * nbytes / (stats["median_us"] * 1e3)
    del src, dst
    return dict(gbps=gbps, bytes=2 * nbytes, **stats)


def matmul_peak(n: int = 8192, rep: int = 50) -> dict:
    """bf16 matmul rate of an n^3 F.linear, in TFLOP/s: the compute ceiling measured here.
    Its long warm-up also brings the clocks up before anything else is timed."""
    require_cuda()
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, n, device="cuda", dtype=torch.bfloat16) * 0.02
    stats = bench(lambda: torch.nn.functional.linear(x, w), warmup_ms=500, rep=rep)
    del x, w
    return dict(tflops=2 * n**3 / (stats["median_us"] * 1e-6) / 1e12, shape=f"{n}^3", **stats)
