"""What ``lowbit analyze`` writes: the table (aligned text for the terminal, markdown for
analyze.md; ``lowbit.bench.table``'s printer), analyze.json, and analyze.png (matplotlib,
optional: without it a line says so and nothing is drawn)."""
from __future__ import annotations

import datetime
import os
import platform
from typing import List, Optional, Sequence

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
    return _bullets(lines) if markdown else lines


def _bullets(lines: List[str]) -> List[str]:
    """Markdown: every line that is neither a heading nor a table row becomes a bullet."""
    return [("- " + ln if ln and not ln.startswith(("#", "|")) else ln) for ln in lines]


def _watts(r: dict) -> str:
    if "ms" not in r:
        return ""
    return num(r.get("watts"), ".0f") or "n/a"


def timing_columns(unit: str):
    """The GPU timing table's columns; the article's only where a row has its numbers."""
    return (
        ("shape", lambda r: r["shape"]),
        ("mode", lambda r: r["mode"]),
        ("precision", lambda r: r["precision"]),
        ("ms", lambda r: num(r.get("ms"), ".3f")),
        (f"{unit}/s", lambda r: num(r.get("per_s"), ".0f")),
        ("vs bf16", lambda r: ratio(r.get("speedup")) + (
            f" ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})"
            if r.get("speedup_min") is not None else "")),
        ("Linear MiB", lambda r: _mib(r["linear_bytes"]) if "linear_bytes" in r else ""),
        ("model MiB", lambda r: _mib(r["model_bytes"]) if "model_bytes" in r else ""),
        ("avg W", _watts),
        ("mJ/sample", lambda r: num(r.get("mj_per_sample"), ".3g")),
        ("cosine", lambda r: num(r.get("cosine"), ".4f")),
        ("A100 /s", lambda r: num(r.get("article_per_s"), ",")),
        ("A100 vs FP16", lambda r: ratio(r.get("article_speedup"))),
        ("A100 GB", lambda r: num(r.get("article_gb"), ".1f")),
        ("A100 W", lambda r: num(r.get("article_w"), "d")),
        ("note", lambda r: r.get("error", "")),
    )


def timing_section(t: Optional[dict], markdown: bool) -> List[str]:
    """The GPU timing section (``gpu.run``'s dict), or the line that says why it was
    skipped (``{"skipped": why}``); nothing for None."""
    if not t:
        return []
    if "skipped" in t:
        lines = ["", "## GPU timing: skipped", "", t["skipped"]]
        return _bullets(lines) if markdown else lines
    from .gpu import ARTICLE, ARTICLE_CARD

    if t.get("power_source"):
        extra = [f"idle {t['idle_w']:.0f} W" if t.get("idle_w") is not None else "",
                 f"power limit {t['power_limit_w']:.0f} W" if t.get("power_limit_w") else "",
                 f"NVML names the board {t['power_card']}" if t.get("power_card") else ""]
        how = "; ".join([t["power_source"], *filter(None, extra)])
        power_line = (f"avg W: the board's average power during each row's timed runs "
                      f"(joules / seconds over its rounds), from {how}")
    else:
        power_line = f"avg W: n/a: {t.get('power_why')}"
    fp32 = ARTICLE["fp32"]
    lines = ["", f"## GPU timing on {t['card']}", "",
             f"precisions: {', '.join(t['precisions'])}, each a copy of the bf16 model with its "
             "Linear layers swapped (random weights; cosine: the output's cosine with bf16's)",
             f"each row: median of {t['rounds']} interleaved rounds (every precision once per "
             f"round, about {t['measure_s']:g} s of back-to-back forwards each); vs bf16 = bf16's "
             "median time / the row's (range: the per-round ratios); mJ/sample = avg W x time "
             "per sample",
             power_line,
             f"A100 columns: the article's table (BERT-large, batch 32, {ARTICLE_CARD}) as "
             "printed; its FP16 row stands beside bf16 and its speed-ups are against that row; "
             f"its FP32 row ({fp32[0]:,}/s, {fp32[1]:.1f} GB, {fp32[2]} W) has no row here",
             "the article does not say its sequence length; this table's BERT rows are 32 x 128 "
             "tokens, and its memory column is the article's, not the weights measured here"]
    layers = {r["precision"]: r["layers"] for r in t["rows"] if r.get("layers")}
    lines += [f"{p}: {text}" for p, text in layers.items()]
    for name in dict.fromkeys(r["workload"] for r in t["rows"]):
        rows = [r for r in t["rows"] if r["workload"] == name]
        note = next((r["note"] for r in rows if r.get("note")), "")
        lines += ["", f"### {name}" + (f": {note}" if note else ""), "",
                  format_table(rows, timing_columns(rows[0].get("unit", "samples")),
                               markdown=markdown)]
    return _bullets(lines) if markdown else lines


def render(env: dict, cases: List[dict], argv, elapsed_s: float,
           timing: Optional[dict] = None) -> tuple:
    """(terminal text, markdown); ``timing``: the GPU timing section (``timing_section``)."""
    head = header(env, argv, elapsed_s)
    text, md = list(head), list(head)
    for c in cases:
        text += section(c, markdown=False)
        md += section(c, markdown=True)
    text += timing_section(timing, markdown=False)
    md += timing_section(timing, markdown=True)
    return "\n".join(text) + "\n", "\n".join(md) + "\n"


def _timing_panels(ax_row, timing: dict) -> None:
    """Speed-up vs bf16, average power and energy per sample, per timed shape and mode, one
    bar per precision."""
    rows = [r for r in timing["rows"] if r.get("ms") is not None]
    groups = list(dict.fromkeys((r["workload"], r["shape"], r["mode"]) for r in rows))
    precisions = [p for p in timing["precisions"] if any(r["precision"] == p for r in rows)]
    width = 0.8 / len(precisions)
    panels = (("speedup", "GPU: speed-up vs bf16"), ("watts", "GPU: average board power (W)"),
              ("mj_per_sample", "GPU: energy per sample (mJ)"))
    for j, p in enumerate(precisions):
        by = {(r["workload"], r["shape"], r["mode"]): r for r in rows if r["precision"] == p}
        xs = [i + (j - (len(precisions) - 1) / 2) * width for i in range(len(groups))]
        for ax, (key, _) in zip(ax_row, panels):
            ax.bar(xs, [by.get(g, {}).get(key) or 0.0 for g in groups], width, label=p,
                   color=f"C{j}")
    for ax, (_, label) in zip(ax_row, panels):
        ax.set_xticks(range(len(groups)), [" ".join(g) for g in groups], rotation=25,
                      fontsize=7, ha="right")
        ax.set_title(label, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    ax_row[0].axhline(1.0, color="gray", lw=0.8)
    ax_row[0].legend(fontsize=7)
    if any(r.get("mj_per_sample") for r in rows):
        ax_row[2].set_yscale("log")  # a decode step's energy per token is 100x a prefill's
    else:
        for ax in ax_row[1:]:
            ax.set_title(ax.get_title() + ": n/a (no power reading)", fontsize=9)


def plot(cases: List[dict], path: str, title: str, timing: Optional[dict] = None) -> str:
    """Per case: Linear memory, accuracy drop (threshold marked) and speed-up, per row; and
    with GPU timing rows, a row of their speed-up, power and energy per sample."""
    timed = bool(timing and any(r.get("ms") is not None for r in timing.get("rows", ())))
    if not cases and not timed:
        return "no plot: no accuracy case ran"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'lowbit[analyze]')"
    n = len(cases) + timed
    fig, axes = plt.subplots(n, 3, figsize=(13, 3.4 * n), squeeze=False)
    if timed:
        _timing_panels(axes[-1], timing)
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


def write(out_dir: str, env: dict, cases: List[dict], argv, elapsed_s: float,
          timing: Optional[dict] = None) -> str:
    """Write analyze.json, analyze.md and analyze.png; returns the text to print."""
    os.makedirs(out_dir, exist_ok=True)
    text, md = render(env, cases, argv, elapsed_s, timing)
    write_json(os.path.join(out_dir, "analyze.json"),
               dict(meta=env, argv=list(argv), elapsed_s=elapsed_s, cases=cases,
                    timing=timing))
    with open(os.path.join(out_dir, "analyze.md"), "w") as f:
        f.write(md)
    msg = plot(cases, os.path.join(out_dir, "analyze.png"),
               f"lowbit analyze, {env['machine']}, torch {env['torch']}, {env['date'][:10]}",
               timing)
    return text + f"\n{msg}\nwrote {os.path.join(out_dir, 'analyze.json')} and analyze.md\n"
