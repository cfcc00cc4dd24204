"""One row format and one table format for every lowbit benchmark (STYLE point 11).

A row carries the time (median, p20, p80 in us), the achieved rates (TFLOP/s or TOP/s; GB/s
of weight for GEMMs, of bytes moved for casts) and the fraction of the speed of light: the
larger of the two floors, bytes_moved / copy bandwidth and flops / peak, over the time.
"""
from __future__ import annotations

# H100 SXM datasheet, dense. bf16 is replaced by the measured 8192^3 F.linear rate in a run.
DATASHEET_PEAK_TFLOPS = {"bf16": 989.0, "fp8": 1979.0, "int8": 1979.0}
DATASHEET_BW_GBPS = 3350.0


def make_row(case, impl: str, stats: dict | None, ceilings: dict, *, anchor_us=None,
             bf16_us=None, rel_err=None, error=None, note="") -> dict:
    """`case`: an anchors.Case (shape, flops, bytes); `ceilings`: copy_gbps and peak_tflops."""
    row = dict(section="gemm" if case.flops else "cast", op=case.op, impl=impl,
               shape=case.shape_str, flops=case.flops, weight_bytes=case.weight_bytes,
               bytes_moved=case.bytes_moved, error=error, note=note, rel_err=rel_err)
    if stats is None:
        return row
    t = stats["median_us"] * 1e-6
    t_mem = case.bytes_moved / (ceilings["copy_gbps"] * 1e9)
    t_comp = case.flops / (ceilings["peak_tflops"].get(case.ceiling, 1e30) * 1e12)
    row.update(stats)
    row.update(
        tflops=case.flops / t / 1e12 if case.flops else None,
        gbps=(case.weight_bytes or case.bytes_moved) / t / 1e9,
        floor_us=max(t_mem, t_comp) * 1e6,
        bound="mem" if t_mem >= t_comp else case.ceiling,
        sol=max(t_mem, t_comp) / t,
        vs_anchor=anchor_us / stats["median_us"] if anchor_us else None,
        vs_bf16=bf16_us / stats["median_us"] if bf16_us else None,
    )
    return row


def _num(v, fmt):
    return "" if v is None else format(v, fmt)


def _us(v):
    return "" if v is None else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 10000 else f"{v:.0f}"


def _ratio(v):
    return "" if v is None else f"{v:.2f}" if v >= 0.1 else f"{v:.2g}"


def _note(r):
    parts = [r["error"]] if r.get("error") else []
    if r.get("rel_err") is not None:
        parts.append(f"err {r['rel_err']:.1e}")
    if r.get("note"):
        parts.append(r["note"])
    return "; ".join(parts).replace("|", "/")


MATRIX_COLUMNS = [
    ("op", lambda r: r["op"]),
    ("impl", lambda r: r["impl"]),
    ("shape", lambda r: r["shape"]),
    ("us", lambda r: _us(r.get("median_us"))),
    ("p20-p80", lambda r: f"{_us(r['p20_us'])}-{_us(r['p80_us'])}" if "p20_us" in r else ""),
    ("TFLOP/s", lambda r: _num(r.get("tflops"), ".1f")),
    ("GB/s", lambda r: _num(r.get("gbps"), ".0f")),
    ("SOL", lambda r: f"{r['sol']:.0%} {r['bound']}" if r.get("sol") is not None else ""),
    ("vs anchor", lambda r: _ratio(r.get("vs_anchor"))),
    ("vs bf16", lambda r: _ratio(r.get("vs_bf16"))),
    ("note", _note),
]

HOST_COLUMNS = [
    ("op", lambda r: r["op"]),
    ("impl", lambda r: r["impl"]),
    ("shape", lambda r: r["shape"]),
    ("eager us/call", lambda r: _us(r.get("eager_us"))),
    ("graph us/call", lambda r: _us(r.get("graph_us"))),
    ("overhead us", lambda r: _num(r.get("overhead_us"), ".1f")),
    ("note", _note),
]


def markdown_table(rows: list[dict], columns=MATRIX_COLUMNS) -> str:
    lines = ["| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(f(r) for _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def row_line(r: dict, columns=MATRIX_COLUMNS) -> str:
    """The same fields on one line, for progress output while a run goes."""
    return "  ".join(f"{h}={v}" for h, v in ((h, f(r)) for h, f in columns) if v)
