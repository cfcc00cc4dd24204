#!/usr/bin/env python3
"""The benchmark matrix of PERF.md: the torch anchors, and lowbit's candidates beside them.

    python bench/run_bench.py --out DIR [--quick] [--only gemm,cast,host,anchors,OP...]

Writes DIR/bench.json (every number, with the card, versions, date and measured ceilings)
and DIR/bench.md (the same as markdown tables); prints the tables at the end.
Anchors and candidates run in the same process on the same card: only ratios measured
together are results (PERF.md, Method). lowbit's kernels enter as candidates registered in
bench/candidates.py; the one timing helper is bench/timing.py, the one table format
bench/report.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time

import torch

if __package__ in (None, ""):
    # Run as a script: import bench/ as a package, then take the repo root off sys.path again,
    # since its triton_kernels/ folder would shadow Triton's own library of that name.
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, _root)
    from bench import anchors, candidates, report, timing
    sys.path.remove(_root)
else:
    from . import anchors, candidates, report, timing

NK = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]  # (N, K) of Llama-3 8B/70B layers
MS = [1, 16, 32, 64, 128, 512, 4096]
CUBE = (8192, 8192, 8192)
CAST_SHAPES = [(16384, 16384), (4096, 4096)]  # 2^28 elements; and one that fits in L2
TOKEN_SHAPES = [(16384, 8192), (4096, 4096)]  # per-token int8
HOST_SHAPE = (1, 4096, 4096)  # PERF target: eager within 10 us of graph replay here
HOST_TARGET_US = 10.0
GRAPH_CALLS = 20
QUICK = dict(nk=[(4096, 4096)], ms=[1, 16, 128, 4096], cube=False,
             cast=[(4096, 4096)], token=[(4096, 4096)], rep=30)
SECTIONS = ("gemm", "cast", "host")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time the torch anchors of PERF.md and lowbit's candidates on one GPU.")
    p.add_argument("--out", required=True, help="output folder for bench.json and bench.md")
    p.add_argument("--quick", action="store_true",
                   help="reduced matrix (one shape, 4 M, small casts, 30 reps): a smoke test")
    p.add_argument("--only", default="",
                   help="comma list: sections (gemm, cast, host), 'anchors' (no lowbit rows), "
                        "and/or substrings of op names (e.g. int4,scaled_mm)")
    p.add_argument("--ms", default="", help="comma list of M for the GEMM rows (default: PERF.md's)")
    p.add_argument("--backends", default="cuda,triton",
                   help="lowbit backends timed as candidates (default cuda,triton; 'auto' too)")
    p.add_argument("--rep", type=int, default=None, help="repetitions per row (default 100, quick 30)")
    p.add_argument("--flush", choices=("write", "read"), default="write",
                   help="L2 flush between reps: write 256 MB (do_bench's way, default) or read "
                        "256 MB (leaves clean lines: no write-back charged to the next kernel)")
    p.add_argument("--rep-ms", type=float, default=1000.0,
                   help="cap on timed milliseconds per row, so slow rows take fewer reps (min 5)")
    args = p.parse_args(argv)
    tokens = [t.strip() for t in args.only.split(",") if t.strip()]
    args.sections = [t for t in tokens if t in SECTIONS] or list(SECTIONS)
    args.anchors_only = "anchors" in tokens
    args.op_filters = [t for t in tokens if t not in SECTIONS and t != "anchors"]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.rep = args.rep or (QUICK["rep"] if args.quick else 100)
    return args


def environment() -> dict:
    p = torch.cuda.get_device_properties(0)
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = None
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.split("\n")[0].strip()
    except Exception:  # noqa: BLE001
        driver = None
    return dict(
        flush=timing.FLUSH_MODE, card=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
        l2_mb=round(getattr(p, "L2_cache_size", 0) / 2**20, 1), memory_gib=round(p.total_memory / 2**30, 1),
        driver=driver, torch=torch.__version__, cuda=torch.version.cuda, triton=triton_version,
        python=platform.python_version(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        lowbit=candidates.lowbit_status(), argv=sys.argv[1:],
    )


def measure_ceilings() -> dict:
    # The bf16 cube goes first: its 500 ms warm-up also brings the clocks up before any row.
    peak = dict(report.DATASHEET_PEAK_TFLOPS)
    c = dict(bf16_source="datasheet")
    case = anchors.linear_bf16(*CUBE)
    if case.error:
        c["bf16_error"] = case.error
    else:
        stats = timing.bench(case.fn, warmup_ms=500, rep=50)
        peak["bf16"] = case.flops / (stats["median_us"] * 1e-6) / 1e12
        c["bf16_source"] = "measured, 8192^3 F.linear"
    case.release()
    copy = timing.copy_bandwidth()
    c.update(copy_gbps=copy["gbps"], copy_bytes=copy["bytes"], peak_tflops=peak)
    return c


class Runner:
    def __init__(self, args, ceilings):
        self.args, self.ceilings = args, ceilings
        self.rows, self.host_rows, self.skipped, self.anchor_check = [], [], {}, {}

    def wants(self, op: str) -> bool:
        return not self.args.op_filters or any(f in op for f in self.args.op_filters)

    def _emit(self, row, table):
        table.append(row)
        cols = report.HOST_COLUMNS if table is self.host_rows else report.MATRIX_COLUMNS
        print(report.row_line(row, cols), flush=True)

    def _time(self, fn):
        return timing.bench(fn, rep=self.args.rep, rep_ms=self.args.rep_ms)

    def _candidates(self, case):
        """Yield (impl, fn, rel_err, error) per lowbit candidate; fn is None when it failed."""
        if self.args.anchors_only:
            return
        for build in candidates.CANDIDATES.get(case.op, []):
            for backend in self.args.backends:
                impl = f"lowbit.{build.bench_name}[{backend}]"
                try:
                    fn = build(case, backend)
                    out = fn()
                    torch.cuda.synchronize()
                except NotImplementedError as e:
                    self.skipped.setdefault(f"{impl}: {anchors.error_text(e)}", []).append(case.shape_str)
                    continue
                except Exception as e:  # noqa: BLE001
                    yield impl, None, None, anchors.error_text(e)
                    continue
                err = anchors.rel_err(out, case.out) if build.compare else None
                del out
                yield impl, fn, err, None

    def matrix_rows(self, case, bf16_us=None):
        """The anchor's row, then one per candidate; returns the anchor's row."""
        kw = dict(bf16_us=bf16_us)
        row = self._measured_row(case, "torch", case.fn, case.error, **kw)
        self._emit(row, self.rows)
        for impl, fn, err, error in self._candidates(case):
            r = self._measured_row(case, impl, fn, error, anchor_us=row.get("median_us"),
                                   rel_err=err, **kw)
            self._emit(r, self.rows)
        case.release()
        return row

    def _measured_row(self, case, impl, fn, error, anchor_us=None, **kw):
        stats = None
        if error is None:
            try:
                stats = self._time(fn)
            except Exception as e:  # noqa: BLE001
                error = anchors.error_text(e)
        if impl == "torch" and stats:
            anchor_us = stats["median_us"]
        return report.make_row(case, impl, stats, self.ceilings, anchor_us=anchor_us, error=error, **kw)

    def gemm(self):
        ms = [int(m) for m in self.args.ms.split(",") if m] or (QUICK["ms"] if self.args.quick else MS)
        shapes = [(m, n, k) for n, k in (QUICK["nk"] if self.args.quick else NK) for m in ms]
        if not self.args.quick and not self.args.ms:
            shapes.append(CUBE)
        for M, N, K in shapes:
            bf16_us = None
            for op, runner in anchors.GEMM_ANCHORS.items():
                if op == "linear_bf16" or self.wants(op):  # bf16 always: the vs_bf16 column
                    row = self.matrix_rows(runner(M, N, K), bf16_us)
                    if op == "linear_bf16":
                        bf16_us = row.get("median_us")

    def cast(self):
        q = self.args.quick
        token, other = (QUICK["token"], QUICK["cast"]) if q else (TOKEN_SHAPES, CAST_SHAPES)
        for R, C in sorted(set(token + other), key=lambda s: (-s[0] * s[1], s)):
            for op, runner in anchors.CAST_ANCHORS.items():
                if self.wants(op) and (R, C) in (token if op.startswith("int8_token") else other):
                    self.matrix_rows(runner(R, C))

    def host(self):
        M, N, K = HOST_SHAPE
        for op, runner in anchors.GEMM_ANCHORS.items():
            if not self.wants(op):
                continue
            case = runner(32 if op == "int_mm" else M, N, K)  # _int_mm refuses M <= 16
            self._emit(self._host_row(case, "torch", case.fn, case.error), self.host_rows)
            for impl, fn, _, error in self._candidates(case):
                self._emit(self._host_row(case, impl, fn, error), self.host_rows)
            case.release()

    def _host_row(self, case, impl, fn, error):
        row = report.make_row(case, impl, None, self.ceilings, error=error)
        if error is None:
            try:
                row["eager_us"] = timing.eager_host_us(fn)
                # One replay of GRAPH_CALLS captured calls: the launch cost of the replay
                # itself is shared, so this is the GPU time per call.
                replay = timing.capture_graph(fn, calls=GRAPH_CALLS)
                row["graph_us"] = timing.eager_host_us(replay, n=20) / GRAPH_CALLS
                row["overhead_us"] = row["eager_us"] - row["graph_us"]
                if row["overhead_us"] > HOST_TARGET_US:
                    row["note"] = f"over the {HOST_TARGET_US:.0f} us target"
            except Exception as e:  # noqa: BLE001 - e.g. an op that syncs cannot be captured
                row["error"] = anchors.error_text(e)
        return row


def _check_text(check: dict) -> str:
    return ", ".join(f"{op} {v:.1e}" if isinstance(v, float) else f"{op} {v}" for op, v in check.items())


def write_outputs(out_dir, env, ceilings, runner, elapsed_s, complete):
    data = dict(meta=env, ceilings=ceilings, anchor_check=runner.anchor_check, rows=runner.rows, host=runner.host_rows,
                skipped={k: len(v) for k, v in runner.skipped.items()}, elapsed_s=elapsed_s,
                complete=complete)
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)
    pk = ceilings.get("peak_tflops", {})
    md = [
        f"# lowbit benchmark: {env['card']}",
        "",
        f"- card: {env['card']} (sm {env['capability']}, {env['sms']} SMs, {env['l2_mb']} MB L2, "
        f"{env['memory_gib']} GiB), driver {env['driver']}",
        f"- versions: torch {env['torch']} (CUDA {env['cuda']}), triton {env['triton']}, "
        f"Python {env['python']}",
        f"- date: {env['date']}; command: run_bench.py {' '.join(env['argv'])}; "
        f"{elapsed_s:.0f} s{'' if complete else '; INCOMPLETE (interrupted)'}",
        f"- lowbit: {env['lowbit']}",
        f"- ceilings: copy {ceilings.get('copy_gbps', 0):.0f} GB/s (read + written); "
        f"bf16 {pk.get('bf16', 0):.0f} TFLOP/s ({ceilings.get('bf16_source')}); "
        f"fp8 {pk.get('fp8', 0):.0f}, int8 {pk.get('int8', 0):.0f} TOP/s (datasheet)",
        f"- anchor check (relative error against float64 at 64x256x512): "
        f"{_check_text(runner.anchor_check) or 'not run'}",
        f"- method: CUDA events, median of n reps after warm-up, L2 flush between reps "
        f"({timing.FLUSH_MODE} 256 MB); "
        "GB/s = weight bytes / time for GEMMs (int4: packed nibbles), bytes moved / time for casts; "
        "SOL = max(bytes moved / copy BW, flops / peak) / time, with the bound that sets it; "
        "vs anchor / vs bf16 = that row's time / this row's (> 1 is faster); TOP/s for int8; "
        "err = relative Frobenius error against the anchor's output",
    ]
    gemm = [r for r in runner.rows if r["section"] == "gemm"]
    cast = [r for r in runner.rows if r["section"] == "cast"]
    if gemm:
        md += ["", "## GEMM: a [M, K] x w [N, K]^T (shape M x N x K)", "", report.markdown_table(gemm)]
    if cast:
        md += ["", "## Casts and quantization, bf16 in (shape rows x cols)", "", report.markdown_table(cast)]
    if runner.host_rows:
        md += ["", f"## Host overhead: back-to-back calls, no L2 flush (target: eager within "
                   f"{HOST_TARGET_US:.0f} us of graph replay)", "",
               report.markdown_table(runner.host_rows, report.HOST_COLUMNS)]
    if runner.skipped:
        md += ["", "## Skipped candidates", ""]
        md += [f"- {k} ({len(v)} rows)" for k, v in runner.skipped.items()]
    text = "\n".join(md) + "\n"
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(f"run_bench.py: no CUDA device (torch {torch.__version__}, "
              "torch.cuda.is_available() is False). These benchmarks time GPU kernels: run them "
              "on an NVIDIA GPU, e.g. through bench/gpu_check.sh. Nothing was measured.",
              file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    # A `timeout` (SIGTERM) still gets the rows measured so far written out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.manual_seed(0)
    timing.FLUSH_MODE = args.flush
    t0 = time.time()
    env = environment()
    print(f"{env['card']}: torch {env['torch']}, CUDA {env['cuda']}, triton {env['triton']}; "
          f"lowbit {env['lowbit']}", flush=True)
    ceilings, complete = {}, False
    runner = Runner(args, ceilings)
    try:
        ceilings.update(measure_ceilings())
        print(f"copy {ceilings['copy_gbps']:.0f} GB/s; bf16 {ceilings['peak_tflops']['bf16']:.0f} "
              f"TFLOP/s ({ceilings['bf16_source']})", flush=True)
        if "gemm" in args.sections or "host" in args.sections:
            runner.anchor_check = anchors.check_gemm_anchors()
            print(f"anchor check: {_check_text(runner.anchor_check)}", flush=True)
        for section in args.sections:
            getattr(runner, section)()
        complete = True
    finally:
        text = write_outputs(args.out, env, ceilings, runner, time.time() - t0, complete)
        print("\n" + text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
