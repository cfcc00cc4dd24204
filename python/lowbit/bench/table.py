"""The one row format and table printer of every lowbit benchmark, and its JSON writer.

A row is a plain dict (what the JSON holds); a table is a list of (header, getter) columns
over rows, printed aligned for a terminal or as markdown for a file. Columns that are empty
in every row are left out, so one column list serves GEMMs and casts alike.
"""
from __future__ import annotations

import json
import math
from typing import Iterable, Sequence

Column = tuple  # (header, getter: row -> str)


def us(v) -> str:
    """A time in microseconds with about three significant digits."""
    if v is None:
        return ""
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 10000 else f"{v:.0f}"


def num(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def ratio(v) -> str:
    """A speed ratio (> 1 is faster), e.g. '1.32x'."""
    return "" if v is None else (f"{v:.2f}x" if v >= 0.1 else f"{v:.2g}x")


def percent(v) -> str:
    return "" if v is None else f"{v:.0%}"


def note(r: dict) -> str:
    """Error first, then the relative error against the anchor, then free text."""
    parts = [r["error"]] if r.get("error") else []
    if r.get("err") is not None:
        parts.append(f"err {r['err']:.1e}")
    if r.get("note"):
        parts.append(r["note"])
    return "; ".join(parts)


def rate(r: dict) -> str:
    """TFLOP/s for a GEMM, TB/s for a memory-bound op (casts)."""
    if r.get("tflops") is not None:
        return f"{r['tflops']:.1f} TFLOP/s"
    if r.get("tbps") is not None:
        return f"{r['tbps']:.2f} TB/s"
    return ""


OP_COLUMNS: Sequence[Column] = (
    ("op", lambda r: r["op"] + (f" [{r['variant']}]" if r.get("variant") else "")),
    ("shape", lambda r: r["shape"]),
    ("impl", lambda r: r["impl"]),
    ("us", lambda r: us(r.get("median_us"))),
    ("rate", rate),
    ("weight TB/s", lambda r: num(r.get("weight_tbps"), ".2f")),
    ("of ceiling", lambda r: f"{percent(r.get('frac'))} {r.get('bound', '')}".strip()),
    ("vs anchor", lambda r: ratio(r.get("vs_anchor"))),
    ("vs bf16", lambda r: ratio(r.get("vs_bf16"))),
    ("note", note),
)

HOST_COLUMNS: Sequence[Column] = (
    ("op", lambda r: r.get("op", "")),
    ("impl", lambda r: r["impl"]),
    ("shape", lambda r: r["shape"]),
    ("eager us/call", lambda r: us(r.get("eager_us"))),
    ("x torch.add_", lambda r: num(r.get("vs_add"), ".2f")),
    ("graph us/call", lambda r: us(r.get("graph_us"))),
    ("note", note),
)

MODEL_COLUMNS: Sequence[Column] = (
    ("model", lambda r: r["model"]),
    ("shape", lambda r: r["shape"]),
    ("precision", lambda r: r.get("precision", "fp8")),
    ("mode", lambda r: r["mode"]),
    ("bf16 ms", lambda r: num(r.get("bf16_ms"), ".3f")),
    ("quantized ms", lambda r: num(r.get("q_ms"), ".3f")),
    ("bf16 /s", lambda r: num(r.get("bf16_per_s"), ".0f")),
    ("quantized /s", lambda r: num(r.get("q_per_s"), ".0f")),
    ("vs bf16", lambda r: ratio(r.get("speedup"))
     + (f" ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})" if r.get("speedup_min") else "")),
    ("cosine", lambda r: num(r.get("cosine"), ".4f")),
    ("note", note),
)


def format_table(rows: Iterable[dict], columns: Sequence[Column], markdown: bool = False) -> str:
    rows = list(rows)
    cells = [[str(get(r)) for _, get in columns] for r in rows]
    keep = [i for i in range(len(columns)) if any(c[i] for c in cells)] or list(range(len(columns)))
    head = [columns[i][0] for i in keep]
    body = [[c[i] for i in keep] for c in cells]
    if markdown:
        esc = lambda s: s.replace("|", "/")  # noqa: E731
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(esc(x) for x in b) + " |" for b in body]
        return "\n".join(lines)
    width = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda b: "  ".join(x.ljust(w) for x, w in zip(b, width)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in width])] + [fmt(b) for b in body])


def _clean(v):
    # JSON has no NaN or infinity: write null, so every reader can load the file.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(_clean(data), f, indent=1, default=str)
        f.write("\n")
