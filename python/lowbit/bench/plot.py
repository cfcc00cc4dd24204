"""The PNG of `lowbit bench`: lowbit's speed-up against M, one line per shape.

matplotlib is optional (the "bench" extra): without it `plot_speedup` says so and draws
nothing.
"""
from __future__ import annotations


def series(rows: list[dict]) -> dict:
    """(op, variant) -> {line: [(M, vs_anchor, vs_bf16)]} from lowbit's public-call rows."""
    out: dict = {}
    for r in rows:
        if r.get("role") != "lowbit" or (r.get("vs_anchor") is None and r.get("vs_bf16") is None):
            continue
        line = out.setdefault((r["op"], r.get("variant", "")), {}).setdefault(r["line"], [])
        line.append((r["m"], r.get("vs_anchor"), r.get("vs_bf16")))
    for lines in out.values():
        for pts in lines.values():
            pts.sort()
    return out


def plot_speedup(rows: list[dict], path: str, title: str = "") -> str:
    """Draw the speed-ups of `rows` into `path`; returns one line saying what was done."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib not installed"
    data = series(rows)
    if not data:
        return "no plot: no lowbit row has a speed-up to draw"
    fig, axes = plt.subplots(len(data), 1, figsize=(8, 3.6 * len(data)), squeeze=False)
    for ax, ((op, variant), lines) in zip(axes[:, 0], sorted(data.items())):
        for i, (line, pts) in enumerate(sorted(lines.items())):
            color = f"C{i % 10}"
            ms = [p[0] for p in pts]
            if any(p[1] is not None for p in pts):
                ax.plot(ms, [p[1] for p in pts], "o-", color=color, label=f"{line} vs anchor")
            if any(p[2] is not None for p in pts):
                ax.plot(ms, [p[2] for p in pts], "s--", color=color, label=f"{line} vs bf16")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M (rows)")
        ax.set_ylabel("speed-up (> 1: lowbit faster)")
        ax.set_title(f"{op} [{variant}]" if variant else op)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97 if title else 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"
