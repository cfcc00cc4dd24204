#!/usr/bin/env bash
# The first GPU call of bench/NOTES.md's list "Next", as one command from the repo root of a
# copy of the tree:
#   bash bench/next_run.sh [OUTDIR]      (default $OUT, else ./gpu_out)
# 1 build (bench/gpu_check.sh); 2 the swap-AB GEMMs' GPU tests (FP8, INT8 and the fused
# linear layers: the batched epilogue); 3 bench/m64_probe.py, the 8-bit GEMMs at M = 1-64
# kernel by kernel (the split as chosen); 4 the racecheck crash in the W8A16 tiled kernel,
# one case at a time with a line per finished case (the last case named in
# racecheck-tiled.log is the one before the crash); 5 the probe with the split forced to 2.
# Each step writes under OUTDIR as it goes and runs under a timeout; summary.txt gets a line
# per step.
set -u
OUTDIR=${1:-${OUT:-./gpu_out}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
R=$(pwd)
PY=${PYTHON:-python3}
SUMMARY=$OUTDIR/summary.txt
say() { echo "$*" | tee -a "$SUMMARY"; }
say "0 $(nvidia-smi --query-gpu=name --format=csv,noheader) $(date -u +%FT%TZ)"

LOWBIT_CUDA_ARCHS=${LOWBIT_CUDA_ARCHS:-90a} STEPS=build timeout 200 bash bench/gpu_check.sh "$OUTDIR/b" >/dev/null 2>&1
say "1 build: $(grep build "$OUTDIR/b/summary.txt" 2>/dev/null)"

t=$SECONDS
(cd "${TMPDIR:-/tmp}" && timeout "${TESTS_S:-170}" $PY -m pytest -q -n 12 -p no:cacheprovider -m gpu \
   "$R/tests/test_cuda_fp8_gemm.py" "$R/tests/test_cuda_int8_gemm.py" "$R/tests/test_fused_linear.py" \
   "$R/tests/test_weight_early.py" -k "swapab or fused or early") >"$OUTDIR/tests-swapab.log" 2>&1
say "2 swapab tests: rc $? in $((SECONDS - t)) s: $(tail -n 1 "$OUTDIR/tests-swapab.log")"

t=$SECONDS
(cd "${TMPDIR:-/tmp}" && timeout 80 $PY "$R/bench/m64_probe.py") >>"$OUTDIR/m64.log" 2>&1
say "3 m64 probe: in $((SECONDS - t)) s (m64.log)"

t=$SECONDS
(cd "${TMPDIR:-/tmp}" && env PYTORCH_NO_CUDA_MEMORY_CACHING=1 CUDA_LAUNCH_BLOCKING=1 \
   timeout "${RACE_S:-100}" compute-sanitizer --tool racecheck --kernel-name kns=lowbit \
   --error-exitcode 3 --print-limit 20 $PY "$R/bench/sanitize.py" --no-cublas \
   --ops w8a16_gemm --kernel cuda_w8a16_gemm_tiled --cases) >"$OUTDIR/racecheck-tiled.log" 2>&1
say "4 racecheck: rc $? in $((SECONDS - t)) s; last case: $(grep ' done$' "$OUTDIR/racecheck-tiled.log" | tail -n 1)"

t=$SECONDS
(cd "${TMPDIR:-/tmp}" && LOWBIT_SWAPAB_SPLIT=2 timeout 80 $PY "$R/bench/m64_probe.py") \
  >>"$OUTDIR/m64.log" 2>&1
say "5 m64 probe, split 2: in $((SECONDS - t)) s (m64.log)"
