"""The machine code of the Triton weight-only GEMM's main loop, compiled for a GPU from any
machine (no device needed): per form, the instructions of its longest loop by opcode.

    python bench/triton_sass.py [--arch 90]

Forms (tests/test_triton_wxa16.py's, which the GPU-target tests compile): decode (16 x 64 x
128 tiles, 4 warps, a K split's fp32 partials) and tiled (128 x 128 x 64, 8 warps) for int4
with zero points in groups and int8 per channel, int8 in groups tiled; bf16 activations,
K a multiple of BLOCK_K (EVEN_K), aligned pointers, as a launch specializes them. At decode sizes the
kernel is bound by instruction issue, so the loop's length and mix (conversions, byte
permutes, address arithmetic against the mma count) are what a change is judged by before
a GPU times it (bench/NOTES.md, "The Triton weight-only GEMMs' decode loop").
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from test_triton_wxa16 import _compile  # noqa: E402  (the forms the target tests compile)


def loop_mix(cubin: bytes) -> tuple:
    """(instructions of the kernel, of its longest loop, that loop's opcode counts)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run(["cuobjdump", "-sass", f.name], capture_output=True,
                              text=True, check=True).stdout
    code = [(int(m.group(1), 16), m.group(2))
            for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = [(int(t.group(1), 16), at) for at, ins in code if "BRA" in ins
             for t in [re.search(r"BRA\s+(?:`\(\S+\)\s*)?0x([0-9a-f]+)", ins)]
             if t and int(t.group(1), 16) < at]
    lo, hi = max(loops, key=lambda span: span[1] - span[0]) if loops else (0, -1)
    body = [ins for at, ins in code if lo <= at <= hi]
    ops = collections.Counter(
        (ins.split()[1] if ins.startswith("@") else ins.split()[0]).split(".")[0]
        for ins in body)
    return len(code), len(body), ops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90, help="sm_XX to compile for")
    args = ap.parse_args()
    for name, bits, per_channel, decode in (("int4 grouped decode", 4, False, True),
                                            ("int4 grouped tiled", 4, False, False),
                                            ("int8 channel decode", 8, True, True),
                                            ("int8 grouped tiled", 8, False, False)):
        c = _compile(("cuda", args.arch, 32), bits, per_channel, decode)
        total, loop, ops = loop_mix(c.asm["cubin"])
        mix = ", ".join(f"{op} {n}" for op, n in ops.most_common(10))
        print(f"{name}: {total} instructions, main loop {loop} ({mix}); "
              f"{c.metadata.shared} B shared")


if __name__ == "__main__":
    main()
