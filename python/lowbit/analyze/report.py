"""What ``lowbit analyze`` writes: the table (aligned text for the terminal, markdown for
analyze.md; ``lowbit.bench.table``'s printer), analyze.json, and analyze.png (matplotlib,
optional: without it a line says so and nothing is drawn)."""
from __future__ import annotations

import datetime
import os
import platform
from typing import List, Sequence

from ..bench.table import format_table, num, ratio, write_json

NOT_REPRESENTATIVE = (
    "throughput on a CPU is not representative: the quantized layers run lowbit's NumPy "
    "reference backend, written to define the numbers, not to be fast (fp32/bf16 run torch's "
    "CPU kernels)")


def _mib(v) -> str:
    return f"{v / 2**20:.2f}"


def _kept(r: dict) -> str:
    kept = r.get("kept") or []
    if not kept:
        return ""
    whys = sorted({k["why"] for k in kept})
    return f"{len(kept)} Linear kept in bf16 ({'; '.join(whys)})"


def columns(unit: str):
    return (
        ("precision", lambda r: r["variant"]),
        ("Linear MiB", lambda r: _mib(r["linear_bytes"])),
        ("vs fp32", lambda r: f"{r['linear_vs_fp32']:.2f}x smaller"
         if r["precision"] != "fp32" else ""),
        ("model MiB", lambda r: _mib(r["model_bytes"])),
        ("accuracy %", lambda r: num(r["accuracy"], ".2f")),
        ("drop (points)", lambda r: num(r["drop"], ".2f")),
        ("cosine", lambda r: num(r.get("cosine"), ".5f")),
        (f"{unit}/s", lambda r: num(r["per_s"], ".1f" if r["per_s"] < 100 else ".0f")),
        ("speed-up", lambda r: ratio(r["speedup"])),
        ("max drop", lambda r: num(r["max_drop"], ".1f")),
        ("verdict", lambda r: r["verdict"]),
        ("note", _kept),
    )


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        return f"GPU {p.name} ({p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor})"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f
                         if ln.startswith("model name")), name)
    except OSError:
        pass
    return f"CPU {name} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def _version(module: str) -> str:
    import importlib

    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return "not installed"


def environment(device: str) -> dict:
    import numpy
    import torch

    import lowbit

    return dict(machine=machine(device), device=device, lowbit=lowbit.__version__,
                backend=lowbit.default_backend(), torch=torch.__version__,
                transformers=_version("transformers"), sklearn=_version("sklearn"),
                numpy=numpy.__version__, python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def header(env: dict, argv: Sequence[str], elapsed_s: float) -> List[str]:
    lines = [
        f"# lowbit analyze: {env['machine']}",
        "",
        f"- versions: lowbit {env['lowbit']} (backend choice: {env['backend']}), torch "
        f"{env['torch']}, transformers {env['transformers']}, scikit-learn {env['sklearn']}, "
        f"numpy {env['numpy']}, Python {env['python']}",
        f"- date: {env['date']}; command: lowbit analyze {' '.join(argv)}".rstrip()
        + f"; {elapsed_s:.0f} s",
        "- each row: a copy of the fp32 model; bf16 casts it; fp8/int8/int4 cast it to bf16 "
        "and swap its Linear layers with lowbit.quantize_ (compute dtype bf16)",
        "- verdict: accuracy drop against lowbit.validate's MAX_ACCURACY_DROP (fp8 0.5, int8 "
        "1.0, int4 3.0 points; bf16 held to fp8's 0.5); speed-up = throughput / fp32's, "
        "median of timed passes",
    ]
    if env["device"] == "cpu":
        lines.append(f"- {NOT_REPRESENTATIVE}")
    return lines


def section(case: dict, markdown: bool) -> List[str]:
    rows = case["rows"]
    lines = ["", f"## {case['title']}", "", f"data: {case['source']}",
             f"accuracy: {case['accuracy']}", ""]
    lines.append(format_table(rows, columns(case["unit"]), markdown=markdown))
    lines.append("")
    lines += [f"compute of {r['variant']}: {r['compute']}" for r in rows
              if r["precision"] not in ("fp32", "bf16")]
    for r in rows:
        for k in r.get("kept") or []:
            lines.append(f"{r['variant']}: {k['layer']} kept in bf16: {k['why']}")
    if markdown:
        lines = [("- " + ln if ln and not ln.startswith(("#", "|")) else ln) for ln in lines]
    return lines


def render(env: dict, cases: List[dict], argv, elapsed_s: float) -> tuple:
    """(terminal text, markdown)."""
    head = header(env, argv, elapsed_s)
    text, md = list(head), list(head)
    for c in cases:
        text += section(c, markdown=False)
        md += section(c, markdown=True)
    return "\n".join(text) + "\n", "\n".join(md) + "\n"


def plot(cases: List[dict], path: str, title: str) -> str:
    """Per case: Linear memory, accuracy drop (threshold marked) and speed-up, per row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'lowbit[analyze]')"
    fig, axes = plt.subplots(len(cases), 3, figsize=(13, 3.4 * len(cases)), squeeze=False)
    for ax_row, c in zip(axes, cases):
        rows = c["rows"]
        names = [r["variant"] for r in rows]
        x = range(len(rows))
        colors = ["C2" if r["verdict"] == "PASS" else "C3" if r["verdict"] == "FAIL" else "C0"
                  for r in rows]
        panels = (("Linear layers (MiB)", [r["linear_bytes"] / 2**20 for r in rows]),
                  ("accuracy drop (points)", [r["drop"] for r in rows]),
                  (f"speed-up vs fp32 ({c['unit']}/s)", [r["speedup"] for r in rows]))
        for ax, (label, values) in zip(ax_row, panels):
            ax.bar(x, values, color=colors)
            ax.set_xticks(list(x), names, rotation=20, fontsize=8)
            ax.set_title(f"{c['title']}: {label}" if ax is ax_row[0] else label, fontsize=9)
            ax.grid(True, axis="y", alpha=0.3)
        for i, r in enumerate(rows):  # the allowed drop, as a tick over each row's bar
            if r["max_drop"] is not None:
                ax_row[1].hlines(r["max_drop"], i - 0.4, i + 0.4, colors="k", linestyles="--")
        ax_row[2].axhline(1.0, color="gray", lw=0.8)
        ax_row[2].set_yscale("log")  # the reference backend's rows sit 100x below fp32's
    fig.suptitle(title + "  (green: pass, red: fail, dashed: max drop)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"


def write(out_dir: str, env: dict, cases: List[dict], argv, elapsed_s: float) -> str:
    """Write analyze.json, analyze.md and analyze.png; returns the text to print."""
    os.makedirs(out_dir, exist_ok=True)
    text, md = render(env, cases, argv, elapsed_s)
    write_json(os.path.join(out_dir, "analyze.json"),
               dict(meta=env, argv=list(argv), elapsed_s=elapsed_s, cases=cases))
    with open(os.path.join(out_dir, "analyze.md"), "w") as f:
        f.write(md)
    msg = plot(cases, os.path.join(out_dir, "analyze.png"),
               f"lowbit analyze, {env['machine']}, torch {env['torch']}, {env['date'][:10]}")
    return text + f"\n{msg}\nwrote {os.path.join(out_dir, 'analyze.json')} and analyze.md\n"
