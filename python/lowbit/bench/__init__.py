"""`lowbit bench`: lowbit's GPU ops and quantized models timed against torch on this GPU.

- ``timing``: the one timing helper (CUDA events, L2 flush, CUDA-graph replay, host time);
- ``table``: the one row and table format, and the JSON writer;
- ``matrix``: the PERF.md benchmark matrix and ``--shapes`` parsing;
- ``cases``: each op with its torch anchors (an op joins the benchmark as one entry there);
- ``models``: the end-to-end rows (``--model bert-large``, ``--model llama-mlp``);
- ``plot``: speed-up against M (matplotlib, optional);
- ``run``: the command line, ``main(argv) -> exit code``.

Importing this package needs neither a GPU nor matplotlib.
"""


def main(argv=None) -> int:
    from .run import main as _main

    return _main(argv)
