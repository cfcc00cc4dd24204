#!/usr/bin/env bash
# The first GPU call of bench/NOTES.md's list "The GPU run planned at 08:40 UTC", steps 1-4,
# as one command from the repo root of a copy of the tree:
#   bash bench/next_run.sh [OUTDIR]      (default $OUT, else ./gpu_out)
# 1 build (bench/gpu_check.sh), 2 the new kernels' GPU tests, 3 the wide kernel against
# decode against cuBLAS (bench/wxa16_ab.sh), 4 `lowbit bench` of the weight-only ops with
# every kernel's row. Each step writes one file under OUTDIR as it goes and runs under a
# timeout, so that a slow step leaves the others' results; summary.txt gets one line per
# step. About 6 minutes on an H100 / H200. The rest of the list (host calls, the compiled
# profile, the INT8/FP8 kernel rows, the whole suite, the sanitizer) is a second call:
#   STEPS="build tests" bash bench/gpu_check.sh $OUT/s, and the commands NOTES gives.
set -u
OUTDIR=${1:-${OUT:-./gpu_out}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
R=$(pwd)
PY=${PYTHON:-python3}
SUMMARY=$OUTDIR/summary.txt
say() { echo "$*" | tee -a "$SUMMARY"; }

LOWBIT_CUDA_ARCHS=${LOWBIT_CUDA_ARCHS:-90a} STEPS=build timeout 300 bash bench/gpu_check.sh "$OUTDIR/b" >/dev/null 2>&1
say "1 build: $(cat "$OUTDIR/b/summary.txt" 2>/dev/null | grep build)"

t=$SECONDS
(cd "${TMPDIR:-/tmp}" && timeout 240 $PY -m pytest -q -n 12 -p no:cacheprovider \
    -k "wide or pinned or mid_chunk or every_code or dequant or k0" \
    "$R/tests/test_cuda_wxa16.py" "$R/tests/test_triton_wxa16.py") >"$OUTDIR/tests.txt" 2>&1
say "2 tests: rc $? in $((SECONDS - t)) s: $(tail -n 1 "$OUTDIR/tests.txt")"
grep -E '^(FAILED|ERROR)' "$OUTDIR/tests.txt" | head -n 10 | tee -a "$SUMMARY"

t=$SECONDS
SHAPES=32x4096x4096,64x4096x4096,64x14336x4096,64x4096x14336,64x28672x8192,128x4096x4096,128x14336x4096,128x28672x8192 \
  BF16=1 timeout 180 bash bench/wxa16_ab.sh tree tree:-DAB_WIDE >"$OUTDIR/wide.txt" 2>&1
say "3 wide A/B: rc $? in $((SECONDS - t)) s (wide.txt)"

t=$SECONDS
(cd "${TMPDIR:-/tmp}" && timeout 300 $PY -m lowbit bench --op w4a16_gemm,w8a16_gemm,w8a16_gemm:g128 \
    --shapes 1x4096x4096,16x4096x4096,32x4096x4096,64x4096x4096,64x14336x4096,64x28672x8192,256x4096x4096,1x28672x8192,16x28672x8192,2048x14336x4096 \
    --kernels --no-host --out "$OUTDIR/w") >"$OUTDIR/wbench.txt" 2>&1
say "4 weight-only bench: rc $? in $((SECONDS - t)) s (w/bench.md)"
