"""`lowbit bench`: time lowbit's GPU ops against torch on this machine's GPU.

It measures the card's copy bandwidth and bf16 matmul rate (the ceilings), then times every
op that has a GPU kernel here beside its torch anchors over the PERF.md matrix (or
``--shapes``), then the host time of one eager call at decode size against ``torch.add_``,
and with ``--model`` whole models against bf16. Writes bench.json, bench.md and bench.png
into ``--out``. Only ratios measured in the same run are results.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import platform
import signal
import sys
import time

from . import matrix
from .cases import OPS, error_text

DEFAULT_OUT = "lowbit-bench"
# lowbit.nn module -> the ops whose host rows bring its module rows along
_HOST_MODULES = {"Fp8Linear": {"fp8_scaled_mm", "fp8_linear"},
                 "Int8Linear": {"int8_gemm", "int8_linear"},
                 "Int4Linear": {"w4a16_gemm"}}
GRAPH_CALLS = 20  # calls per captured graph in the host table: the replay's own launch is shared


def parse_args(argv=None) -> argparse.Namespace:
    from .models import MODELS

    p = argparse.ArgumentParser(
        prog="lowbit bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="ops and variants (the first ones run by default): " + "; ".join(
            f"{o.op}: {', '.join(o.variants)} (default {', '.join(o.default)})" for o in OPS.values()))
    p.add_argument("--op", default=None, action="append",
                   help="comma list of ops, or op:variant (e.g. fp8_scaled_mm:block), or 'all' "
                        "(default: every op with a GPU kernel here, unless --model is given); "
                        "may be given more than once")
    p.add_argument("--shapes", default=None,
                   help="comma list instead of the PERF.md matrix: M x N x K for GEMMs (casts "
                        "take M x K), or rows x cols for casts only; e.g. 1x4096x4096,16384x8192")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: one weight shape (4096 x 4096), M = 1, 16, 128, 4096, 30 reps")
    p.add_argument("--model", default=None,
                   help=f"comma list of {', '.join(MODELS)}, or 'all': bf16 against every Linear "
                        "in FP8, eager, compiled and CUDA graph")
    p.add_argument("--kernels", action="store_true",
                   help="also time every GPU kernel that runs each case, called directly")
    p.add_argument("--no-host", action="store_true", help="leave out the host-time table")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    p.add_argument("--rep", type=int, default=None, help="timed repetitions per row (default 100; --quick 30)")
    p.add_argument("--rep-ms", type=float, default=500.0,
                   help="at most this many ms of timed calls per row (slow rows take fewer reps, at least 5)")
    p.add_argument("--precision", default="fp8",
                   help="comma list of the model rows' precisions: fp8, int8 (W8A8 layers, "
                        "per-token activations), int4 (W4A16, group 128), w8a16 (weight-only "
                        "int8), each also as <precision>+fused (sibling layers that read one "
                        "input fused: lowbit.fuse_siblings); default fp8")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per model row (default 7; --quick 3)")
    p.add_argument("--flush", choices=("write", "read"), default="write",
                   help="how the L2 is flushed between timed reps: 'write' (default: a 256 MB "
                        "zero_, as triton's do_bench, whose dirty lines' write-back the next "
                        "timed call pays) or 'read' (a sum over the buffer: clean lines, as "
                        "in a decode step whose kernels before mostly read weights)")
    args = p.parse_args(argv)
    args.rep = args.rep or (30 if args.quick else 100)
    args.rounds = args.rounds or (3 if args.quick else 7)
    from .models import PRECISIONS
    args.precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    for prec in args.precisions:
        if prec not in PRECISIONS:
            raise ValueError(f"--precision: unknown precision {prec!r}; known: "
                             f"{', '.join(PRECISIONS)}")
    try:
        args.jobs = select_ops(None if args.op is None else ",".join(args.op),
                               args.model is not None)
        args.models = select_models(args.model, MODELS)
        args.shape_list = matrix.parse_shapes(args.shapes) if args.shapes else None
    except ValueError as e:
        p.error(str(e))
    return args


def select_ops(text, have_model: bool) -> list[tuple[str, str]]:
    """--op -> [(op, variant)]. None: every op's default variants, or none beside --model."""
    if text is None:
        text = "" if have_model else "all"
    jobs: list[tuple[str, str]] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item == "all":
            pairs = [(o.op, v) for o in OPS.values() for v in o.default]
        else:
            op, _, variant = item.partition(":")
            if op not in OPS:
                raise ValueError(f"--op: unknown op {op!r}; known: {', '.join(OPS)}")
            if variant and variant not in OPS[op].variants:
                raise ValueError(f"--op: {op} has no variant {variant!r}; "
                                 f"it has {', '.join(OPS[op].variants)}")
            pairs = [(op, variant)] if variant else [(op, v) for v in OPS[op].default]
        jobs += [j for j in pairs if j not in jobs]
    return jobs


def select_models(text, models) -> list[str]:
    if not text:
        return []
    names = list(models) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    for n in names:
        if n not in models:
            raise ValueError(f"--model: unknown model {n!r}; known: {', '.join(models)}")
    return names


def shapes_for(kind: str, args) -> list[tuple]:
    gemms = args.shape_list if args.shape_list else matrix.gemm_shapes(args.quick)
    if kind == "gemm":
        return [s for s in gemms if len(s) == 3]
    if kind == "weight":  # the weights [N, K] of the GEMM shapes, then rows x cols given
        return matrix.weight_shapes(gemms)
    extra = [] if (args.shape_list or args.quick) else list(matrix.BIG_CASTS)
    return matrix.cast_shapes(gemms, tuple(extra) + tuple(s for s in gemms if len(s) == 2))


@contextlib.contextmanager
def _environment(values: dict):
    """os.environ with `values` set for the block (a kernel switch for a whole row)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _fused_layer_rows(case) -> list:
    """A layer op's forward three ways where a fused kernel would run it (--kernels): the
    fused one (LOWBIT_FUSED_QUANT=1), its two kernels (=0), and the two with the GEMM's early
    weight loads (LOWBIT_EARLY_WEIGHTS=1), timed in the same run."""
    from .cases import LAYER_GEMM

    if case.op not in LAYER_GEMM:
        return []
    from lowbit.backends.cuda.linear import FUSED_ENV, WEIGHT_EARLY_ENV as EARLY

    with _environment({FUSED_ENV: "1"}):
        try:
            fused = case.chosen()
        except Exception:  # noqa: BLE001 - the plain row reports why nothing runs
            return []
    if "linear_swapab" not in fused:
        return []
    return [(f"{fused} ({FUSED_ENV}=1)", {FUSED_ENV: "1"}),
            (f"two kernels ({FUSED_ENV}=0)", {FUSED_ENV: "0", EARLY: "0"}),
            (f"two kernels, early weights ({EARLY}=1)", {FUSED_ENV: "0", EARLY: "1"})]


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def progress_bar(total: int):
    """tqdm on stderr, or nothing when tqdm is not installed."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="row", mininterval=1.0, dynamic_ncols=True, file=sys.stderr)


def environment() -> dict:
    import torch

    import lowbit
    from lowbit import _native
    from lowbit._build import build_info

    p = torch.cuda.get_device_properties(0)
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - triton is optional
        triton_version = None
    b = build_info()
    return dict(
        card=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
        l2_mb=round(getattr(p, "L2_cache_size", 0) / 2**20, 1), memory_gib=round(p.total_memory / 2**30, 1),
        torch=torch.__version__, cuda=torch.version.cuda, triton=triton_version,
        python=platform.python_version(), lowbit=lowbit.__version__,
        lowbit_build={k: b.get(k) for k in ("compiled", "cuda", "cuda_version", "cuda_archs",
                                            "cuda_archs_source", "error") if b.get(k) is not None},
        native_ops=_native.status(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


class Bench:
    """The rows of one run, and how each is measured."""

    def __init__(self, args, ceilings: dict):
        self.args, self.ceilings = args, ceilings
        self.rows: list[dict] = []
        self.host: list[dict] = []
        self.models: list[dict] = []
        self.skipped: list[str] = []
        self._anchor_rows: dict = {}

    # -------------------------------------------------------------------- op matrix
    def _stats(self, fn) -> dict:
        from . import timing

        return timing.bench(fn, rep=self.args.rep, rep_ms=self.args.rep_ms)

    def _row(self, case, impl: str, role: str, stats=None, counts=None, **extra) -> dict:
        """One row; `counts` overrides the case's bytes and ceiling (an anchor in bf16)."""
        c = dict(flops=case.flops, bytes_moved=case.bytes_moved, weight_bytes=case.weight_bytes,
                 ceiling=case.ceiling)
        c.update(counts or {})
        row = dict(op=case.op, variant=case.variant, shape=matrix.shape_str(case.shape),
                   m=case.shape[0],
                   line=("N x K " if len(case.shape) == 3 else "cols ") + matrix.shape_str(case.shape[1:]),
                   impl=impl, role=role, **c)
        row.update(extra)
        if stats:
            row.update(stats)
            t = stats["median_us"] * 1e-6
            t_mem = c["bytes_moved"] / (self.ceilings["copy_gbps"] * 1e9)
            peak = self.ceilings["peak_tflops"].get(c["ceiling"])
            t_comp = c["flops"] / (peak * 1e12) if c["flops"] and peak else 0.0
            row.update(
                tflops=c["flops"] / t / 1e12 if c["flops"] else None,
                tbps=None if c["flops"] else c["bytes_moved"] / t / 1e12,
                weight_tbps=c["weight_bytes"] / t / 1e12 if c["weight_bytes"] else None,
                frac=max(t_mem, t_comp) / t, bound="mem" if t_mem >= t_comp else "compute")
        return row

    def _measure(self, fn):
        """(output, stats, error) of one callable: the first call surfaces errors."""
        from . import timing

        try:
            out = fn()
            timing.synchronize()
            return out, self._stats(fn), None
        except Exception as e:  # noqa: BLE001 - a failure is a row, never an abort
            return None, None, error_text(e)

    def run_case(self, case) -> None:
        ref, t_same, t_bf16, anchor_rows = None, None, None, []
        for a in case.anchors:
            key = (case.op, a.label, case.variant if a.role == "same" else "", case.shape)
            row = self._anchor_rows.get(key)  # the bf16 anchor: once per shape, not per variant
            if row is None:
                out, stats, error = self._measure(a.fn)
                row = self._row(case, a.label, "anchor" if a.role == "same" else a.role, stats,
                                a.counts, error=error)
                if a.role == "same" and a.compare and ref is None:
                    ref = out
                del out
                self._anchor_rows[key] = row
                anchor_rows.append(row)
            t = row.get("median_us")
            if a.role == "same" and t_same is None:
                t_same = t
            if a.role == "bf16" and t_bf16 is None:
                t_bf16 = t
        try:
            lowbit_rows = [(f"lowbit ({case.chosen()})", case.public(), "lowbit")]
        except Exception as e:  # noqa: BLE001 - no kernel runs these inputs: the row says why
            self.rows += anchor_rows
            self.rows.append(self._row(case, "lowbit", "lowbit", error=error_text(e)))
            return
        envs = {}  # row -> the environment it is timed under
        if self.args.kernels:
            from .cases import prepared_call, runnable_kernels

            lowbit_rows += [(f"{k.backend}/{k.name}", prepared_call(k, case.args), "kernel")
                            for k in runnable_kernels(case.op, case.args)]
            for impl, env in _fused_layer_rows(case):
                envs[impl] = env
                lowbit_rows.append((impl, case.public(), "kernel"))
        for r in anchor_rows:
            if r["role"] != "bf16":
                r["vs_bf16"] = _speedup(t_bf16, r.get("median_us"))
        self.rows += anchor_rows
        for impl, fn, role in lowbit_rows:
            with _environment(envs.get(impl, {})):
                out, stats, error = self._measure(fn)
            t = stats["median_us"] if stats else None
            self.rows.append(self._row(
                case, impl, role, stats, error=error, err=(rel_err_or_none(out, ref)),
                vs_anchor=_speedup(t_same, t), vs_bf16=_speedup(t_bf16, t)))
            del out

    def run_ops(self, bar) -> None:
        import torch

        for op, variant in self.args.jobs:
            ob = OPS[op]
            for shape in shapes_for(ob.kind, self.args):
                bar.set_postfix_str(f"{op} [{variant}] {matrix.shape_str(shape)}")
                try:
                    case = ob.build(variant, shape)
                except Exception as e:  # noqa: BLE001 - e.g. out of memory at a shape
                    self.rows.append(dict(op=op, variant=variant, shape=matrix.shape_str(shape),
                                          impl="(operands)", role="error", error=error_text(e)))
                else:
                    self.run_case(case)
                    del case
                torch.cuda.empty_cache()
                bar.update()

    # -------------------------------------------------------------------- host time
    def _host_row(self, impl: str, shape: str, fn, op: str = "", ref=None) -> dict:
        """One host-time row: ``fn``'s eager wall time per call and its CUDA-graph time;
        with ``ref`` (the torch.add_ call), timed against it in interleaved rounds, its
        ratio the median of the rounds' (timing.paired_host_us)."""
        from . import timing

        row = dict(op=op, impl=impl, shape=shape)
        try:
            if ref is None:
                row["eager_us"] = timing.eager_host_us(fn)
            else:
                row["eager_us"], row["add_us"], row["vs_add"] = timing.paired_host_us(fn, ref)
            replay = timing.capture_graph(fn, calls=GRAPH_CALLS)
            row["graph_us"] = timing.eager_host_us(replay, n=20) / GRAPH_CALLS
        except Exception as e:  # noqa: BLE001 - e.g. an op that syncs cannot be captured
            row["error"] = error_text(e)
        return row

    def run_host(self, ops, bar) -> None:
        """Eager wall time per call, back to back, of each op at decode size and its
        anchors, against torch.add_ in the same process; graph = GPU time per call."""
        import torch

        from lowbit import _native

        from .cases import DEVICE, runnable_kernels

        m, n, k = matrix.HOST_GEMM
        x = torch.ones(m, k, device=DEVICE, dtype=torch.bfloat16)
        y = torch.zeros_like(x)
        add = lambda: y.add_(x)  # noqa: E731  (every row's reference)
        self.host.append(self._host_row("torch.add_", matrix.shape_str(x.shape), add))
        self.host[0]["vs_add"] = 1.0 if self.host[0].get("eager_us") else None
        for op in ops:
            ob = OPS[op]
            shape = matrix.HOST_GEMM if ob.kind == "gemm" else (m, k)
            case = ob.build(ob.default[0], shape)
            shape = matrix.shape_str(shape) + f" [{case.variant}]"
            fns = [(a.label, a.fn) for a in case.anchors]
            fns.append((f"lowbit.{op}", case.public()))
            for backend in sorted({k.backend for k in runnable_kernels(op, case.args)}):
                fns.append((f"lowbit.{op}(backend={backend!r})", case.public(backend)))
            # (which implementation serves it: the C++ one where lowbit._torch_ops does)
            served = " [C++]" if _native.serves(op) else ""
            fns.append((f"torch.ops.lowbit.{op}{served}", case.dispatcher()))
            for impl, fn in fns:
                self.host.append(self._host_row(impl, shape, fn, op, add))
            bar.update()
        modules = [name for name, wants in _HOST_MODULES.items() if wants & set(ops)]
        if modules:
            self._host_modules(modules, add)

    def _host_modules(self, modules, add) -> None:
        """Each quantized module of ``modules`` (``lowbit.nn`` class names) beside the bf16
        nn.Linear it replaces, at the decode size, eager and compiled: a quantized module's
        forward should cost no more host time than nn.Linear's, both ways. ``add``: the
        torch.add_ call each row is timed against."""
        import torch

        import lowbit.nn

        from .cases import DEVICE, compiled

        m, n, k = matrix.HOST_GEMM
        shape = matrix.shape_str(matrix.HOST_GEMM)
        lin = torch.nn.Linear(k, n, device=DEVICE, dtype=torch.bfloat16)
        x = torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16)
        layers = [("nn.Linear bf16", lin)]
        for name in modules:
            try:
                layers.append((f"lowbit.nn.{name}", getattr(lowbit.nn, name).from_linear(lin)))
            except Exception as e:  # noqa: BLE001
                self.host.append(dict(op="module", impl=f"lowbit.nn.{name}", shape=shape,
                                      error=error_text(e)))
        with torch.no_grad():
            for label, layer in layers:
                self.host.append(self._host_row(label, shape, functools.partial(layer, x),
                                                "module", add))
                self.host.append(self._host_row(f"torch.compile({label})", shape,
                                                functools.partial(compiled(layer), x), "module",
                                                add))

    # -------------------------------------------------------------------- models
    def run_models(self, bar) -> None:
        from .models import MODELS

        def step(label):
            bar.set_postfix_str(label)
            bar.update()

        for name in self.args.models:
            runner, _ = MODELS[name]
            self.models += runner(self.args.rounds, step, self.args.precisions)


def _speedup(t_ref, t):
    return t_ref / t if t_ref and t else None


def rel_err_or_none(out, ref):
    from .cases import rel_err

    return None if out is None or ref is None else rel_err(out, ref)


def measure_ceilings() -> dict:
    from . import timing

    peak = timing.matmul_peak()
    copy = timing.copy_bandwidth()
    # fp8 tensor cores run at twice the bf16 rate on sm_89/sm_90 (datasheets): the fp8
    # ceiling is that multiple of the bf16 rate measured here, not a datasheet figure.
    return dict(copy_gbps=copy["gbps"], bf16_tflops=peak["tflops"], bf16_shape=peak["shape"],
                peak_tflops={"bf16": peak["tflops"], "fp8": 2 * peak["tflops"],
                             "int8": 2 * peak["tflops"]})


def header_lines(env: dict, ceilings: dict, argv, elapsed_s: float, complete: bool) -> list[str]:
    b = env.get("lowbit_build", {})
    lines = [
        f"# lowbit bench: {env['card']}",
        "",
        f"- card: {env['card']} (compute capability {env['capability']}, {env['sms']} SMs, "
        f"{env['l2_mb']} MB L2, {env['memory_gib']} GiB)",
        f"- versions: lowbit {env['lowbit']} (CUDA kernels: {'yes' if b.get('cuda') else 'no'}"
        + (f", archs {b.get('cuda_archs')}" if b.get("cuda") else "") + f"), torch {env['torch']} "
        f"(CUDA {env['cuda']}), triton {env['triton']}, Python {env['python']}",
        f"- date: {env['date']}; command: lowbit bench {' '.join(argv)}; {elapsed_s:.0f} s"
        + ("" if complete else "; INCOMPLETE (interrupted or failed)"),
    ]
    if env.get("native_ops"):
        lines.append(f"- registered ops in C++ (lowbit._torch_ops): {env['native_ops']}")
    if ceilings:
        lines.append(f"- ceilings measured here: copy {ceilings['copy_gbps'] / 1e3:.2f} TB/s (bytes "
                     f"read + written); bf16 matmul {ceilings['bf16_tflops']:.0f} TFLOP/s "
                     f"({ceilings['bf16_shape']} F.linear); fp8 and int8 taken as twice that")
    lines.append(
        "- method: CUDA events, median of up to N reps after warm-up, L2 flushed between reps "
        f"(a 256 MB {env.get('l2_flush', 'write')}); "
        "rate = TFLOP/s for GEMMs, TB/s of bytes moved for casts; weight TB/s = weight bytes / "
        "time; of ceiling = max(bytes / copy, flops / peak) / time; vs anchor, vs bf16 = that "
        "time / this time (> 1: faster); err = relative Frobenius error against the anchor")
    return lines


def report(bench: Bench, env: dict, argv, elapsed_s: float, complete: bool) -> tuple[str, str]:
    """(text for the terminal, markdown for bench.md): the same tables."""
    from . import table

    head = header_lines(env, bench.ceilings, argv, elapsed_s, complete)
    sections = []
    if bench.rows:
        sections.append(("Ops: lowbit against torch (GEMM shapes M x N x K, casts rows x cols)",
                         bench.rows, table.OP_COLUMNS))
    if bench.host:
        from .timing import HOST_ROUNDS

        sections.append(("Host time: eager calls back to back (no L2 flush), each row timed "
                         f"against torch.add_ in {HOST_ROUNDS} interleaved rounds (medians; "
                         "x torch.add_ is the median of the rounds' ratios); graph = GPU time "
                         f"per call in a CUDA graph of {GRAPH_CALLS} calls",
                         bench.host, table.HOST_COLUMNS))
    if bench.models:
        sections.append(("Models: bf16 against every Linear quantized (Fp8Linear or Int8Linear, "
                         "w8a8 per-token); "
                         "median of interleaved rounds (range of the per-round speed-ups)",
                         bench.models, table.MODEL_COLUMNS))
    text, md = list(head), list(head)
    for title, rows, cols in sections:
        text += ["", f"## {title}", "", table.format_table(rows, cols)]
        md += ["", f"## {title}", "", table.format_table(rows, cols, markdown=True)]
    if bench.skipped:
        text += ["", *bench.skipped]
        md += ["", *(f"- {s}" for s in bench.skipped)]
    return "\n".join(text) + "\n", "\n".join(md) + "\n"


def write_outputs(out_dir, bench: Bench, env, argv, elapsed_s, complete) -> str:
    from . import table
    from .plot import plot_speedup

    text, md = report(bench, env, argv, elapsed_s, complete)
    table.write_json(os.path.join(out_dir, "bench.json"), dict(
        meta=env, argv=list(argv), ceilings=bench.ceilings, ops=bench.rows, host=bench.host,
        models=bench.models, skipped=bench.skipped, elapsed_s=elapsed_s, complete=complete))
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write(md)
    msg = "no plot: no op was timed"
    if bench.rows:
        msg = plot_speedup(bench.rows, os.path.join(out_dir, "bench.png"),
                           f"{env['card']}, torch {env['torch']}")
    return text + f"\n{msg}\nwrote {os.path.join(out_dir, 'bench.json')} and bench.md\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from . import timing

    timing.FLUSH_MODE = args.flush
    why = timing.no_gpu_reason()
    if why:
        print(f"lowbit bench: nothing measured: {why}. lowbit bench times lowbit's GPU kernels "
              "against torch on an NVIDIA GPU; run it on a machine with one "
              "(`lowbit info` lists what this machine has).", file=sys.stderr)
        return 2
    import torch

    os.makedirs(args.out, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still writes the rows so far
    torch.manual_seed(0)
    t0 = time.time()
    env = dict(environment(), l2_flush=args.flush)
    print(f"lowbit bench on {env['card']}: torch {env['torch']} (CUDA {env['cuda']}), "
          f"triton {env['triton']}, lowbit {env['lowbit']}", flush=True)
    ops = []
    for op, _ in args.jobs:
        if op not in ops:
            ops.append(op)
    bench = Bench(args, {})
    from .cases import gpu_kernels

    for op in list(ops):
        if not gpu_kernels(op):
            ops.remove(op)
            bench.skipped.append(f"{op}: skipped, no GPU kernel of it can run here (`lowbit info` says why)")
    args.jobs = [j for j in args.jobs if j[0] in ops]
    from .models import MODELS

    total = sum(len(shapes_for(OPS[op].kind, args)) for op, _ in args.jobs)
    total += (0 if args.no_host or not ops else len(ops)) + sum(
        MODELS[m][1] for m in args.models) * len(args.precisions)
    complete = False
    bar = progress_bar(total)
    try:
        bar.set_postfix_str("ceilings: copy bandwidth, bf16 matmul")
        bench.ceilings.update(measure_ceilings())
        bench.run_ops(bar)
        if ops and not args.no_host:
            bench.run_host(ops, bar)
        bench.run_models(bar)
        complete = True
    except KeyboardInterrupt:
        print("\ninterrupted: writing the rows measured so far", file=sys.stderr)
    finally:
        bar.close()
        print("\n" + write_outputs(args.out, bench, env, argv, time.time() - t0, complete), flush=True)
    return 0 if complete else 1
