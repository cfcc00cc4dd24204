"""Rows of the Triton INT8 GEMM's table (triton_kernels/heuristics.py, ``INT8_GEMM_TABLE``)
from a tile sweep (``python -m bench.sweep_triton_gemm --op int8 --md SWEEP.md``):

    python -m bench.pick_triton_table SWEEP.md [--apply triton_kernels/heuristics.py]

Per M of the sweep, each Triton config's time over the fastest config of each shape, as a
geometric mean over the shapes of that M; the pick is the config of the least mean, or the
table's own config where it is within KEEP of it (a change must be worth its churn). A
config that failed or was flagged WRONG on any shape of an M is out for that M. The report
gives each shape's pick beside the CUDA kernel and the anchor of the same run.

``--apply`` rewrites the table's rows in that file: the decode rows (M <= 16, <= 64) stay,
each swept M of 128, 256 or 512 gets a row of its own, and the last row (larger M) takes the
pick of the largest swept M above 1024, else stays. The same sweep gives the same rows, so
a GPU run can apply them to its copy of the tree and test what the commit will hold.
"""
from __future__ import annotations

import argparse
import collections
import math
import re
from typing import Dict, List, Tuple

KEEP = 0.02
ROW_MS = (128, 256, 512)  # the M buckets that get rows of their own
_SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")
_CONFIG = re.compile(r"triton (\d+)x(\d+)x(\d+) g(\d+) w(\d+) s(\d+) u(\d+)")


def read_sweep(text: str) -> Dict[str, Dict[str, Tuple[float, bool]]]:
    """shape -> kernel -> (median us, whether it is the table's config); a Triton row that
    failed or was flagged WRONG reads as infinitely slow."""
    rows: Dict[str, Dict[str, Tuple[float, bool]]] = collections.defaultdict(dict)
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not _SHAPE.match(cells[0]):
            continue
        name = re.sub(r" \(\d+ KB\)", "", cells[1])
        try:
            us = float(cells[2])
        except ValueError:
            us = math.inf
        if name.startswith("triton") and "WRONG" in line:
            us = math.inf
        rows[cells[0]][name] = (us, cells[-1].startswith("table"))
    return rows


def pick(rows) -> Tuple[Dict[int, str], List[str]]:
    """(M -> the picked config's name, the report's lines)."""
    by_m: Dict[int, List[str]] = collections.defaultdict(list)
    for shape in rows:
        by_m[int(shape.split("x")[0])].append(shape)
    picks, report = {}, []
    for m in sorted(by_m):
        shapes = sorted(by_m[m])
        names = set.intersection(*({k for k in rows[s] if k.startswith("triton")}
                                   for s in shapes))
        if not names:
            continue
        best = {s: min(rows[s][k][0] for k in names) for s in shapes}

        def mean(k):
            r = [rows[s][k][0] / best[s] for s in shapes]
            if not all(math.isfinite(x) for x in r):
                return math.inf
            return math.exp(sum(map(math.log, r)) / len(r))

        ranked = sorted(names, key=lambda k: (mean(k), k))
        table = [k for k in names if all(rows[s][k][1] for s in shapes)]
        choice = ranked[0]
        if table and mean(table[0]) <= mean(choice) * (1 + KEEP):
            choice = table[0]
        if not math.isfinite(mean(choice)):
            continue
        picks[m] = choice
        report.append(f"M = {m}: {choice} (mean {mean(choice):.3f} of the best; the table's "
                      f"{table[0] if table else '-'}: "
                      f"{mean(table[0]) if table else math.nan:.3f})")
        for s in shapes:
            cuda = [v[0] for k, v in rows[s].items() if k.startswith("sm")]
            anchor = [v[0] for k, v in rows[s].items() if "_int_mm" in k]
            vs = f", {rows[s][choice][0] / cuda[0]:.2f}x the CUDA kernel's" if cuda else ""
            report.append(f"  {s}: {rows[s][choice][0]:.1f} us (best {best[s]:.1f}; CUDA "
                          f"{cuda[0] if cuda else '-'}; anchor {anchor[0] if anchor else '-'}"
                          f"{vs})")
    return picks, report


def config_source(name: str) -> str:
    b_m, b_n, b_k, g, w, s, u = map(int, _CONFIG.search(name).groups())
    return f"GemmConfig({b_m}, {b_n}, {b_k}, {g}, {w}, {s}" + (
        f", k_unroll={u})" if u != 1 else ")")


def apply(source: str, picks: Dict[int, str]) -> str:
    """``source`` (heuristics.py) with INT8_GEMM_TABLE's rows rewritten from ``picks``."""
    head = "INT8_GEMM_TABLE: List[tuple] = [\n"
    start = source.index(head)
    end = source.index("]\n", start) + 2
    old = source[start:end]
    decode = re.findall(r"\((16|64), (GemmConfig\([^)]*\))\)", old)
    last = re.search(r"\(1 << 62, (GemmConfig\([^)]*\))\)", old).group(1)
    lines = [f"    ({m}, {c})," for m, c in decode]
    lines += [f"    ({m}, {config_source(picks[m])})," for m in ROW_MS if m in picks]
    large = [m for m in picks if m > 1024]
    lines.append(f"    (1 << 62, {config_source(picks[max(large)]) if large else last}),")
    return source[:start] + head + "\n".join(lines) + "\n]\n" + source[end:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="the sweep's markdown (sweep_triton_gemm --op int8 --md)")
    ap.add_argument("--apply", metavar="HEURISTICS_PY",
                    help="rewrite INT8_GEMM_TABLE's rows in this file")
    args = ap.parse_args()
    with open(args.sweep) as f:
        picks, report = pick(read_sweep(f.read()))
    print("\n".join(report))
    if args.apply:
        with open(args.apply) as f:
            source = f.read()
        new = apply(source, picks)
        with open(args.apply, "w") as f:
            f.write(new)
        start = new.index("INT8_GEMM_TABLE: List[tuple] = [")
        print(new[start:new.index("]\n", start) + 2])


if __name__ == "__main__":
    main()
