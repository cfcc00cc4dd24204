#!/usr/bin/env bash
# The first GPU call of bench/NOTES.md's list "Next" (after "The next GPU run, measured"),
# as one command from the repo root of a copy of the tree:
#   bash bench/next_run.sh [OUTDIR]      (default $OUT, else ./gpu_out)
# 1 build (bench/gpu_check.sh); 2 the racecheck crash in the W8A16 tiled kernel, one case at
# a time with a line per finished case, natively and at LOWBIT_ARCH=80 (the last case named
# in racecheck-tiled-*.log is the one before the crash), and memcheck of the same cases for
# contrast; 3 the whole GPU suite (it took more than 460 s on an H200: give it the rest of
# the call, or a call of its own). Each step writes under OUTDIR as it goes and runs under a
# timeout; summary.txt gets a line per step.
set -u
OUTDIR=${1:-${OUT:-./gpu_out}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
R=$(pwd)
PY=${PYTHON:-python3}
SUMMARY=$OUTDIR/summary.txt
say() { echo "$*" | tee -a "$SUMMARY"; }

LOWBIT_CUDA_ARCHS=${LOWBIT_CUDA_ARCHS:-90a} STEPS=build timeout 300 bash bench/gpu_check.sh "$OUTDIR/b" >/dev/null 2>&1
say "1 build: $(grep build "$OUTDIR/b/summary.txt" 2>/dev/null)"

for tool in racecheck memcheck; do
  for arch in native 80; do
    env=(PYTORCH_NO_CUDA_MEMORY_CACHING=1 CUDA_LAUNCH_BLOCKING=1)
    [ "$arch" != native ] && env+=(LOWBIT_ARCH=$arch)
    only=()
    [ "$tool" = racecheck ] && only=(--kernel-name kns=lowbit)
    log=$OUTDIR/$tool-tiled-$arch.log
    t=$SECONDS
    (cd "${TMPDIR:-/tmp}" && env "${env[@]}" timeout 120 compute-sanitizer --tool "$tool" \
        "${only[@]}" --error-exitcode 3 --print-limit 20 $PY "$R/bench/sanitize.py" \
        --no-cublas --ops w8a16_gemm --kernel cuda_w8a16_gemm_tiled --cases) >"$log" 2>&1
    say "2 $tool $arch: rc $? in $((SECONDS - t)) s; last case: $(grep ' done$' "$log" | tail -n 1)"
  done
done

t=$SECONDS
LOWBIT_CUDA_ARCHS=${LOWBIT_CUDA_ARCHS:-90a} STEPS=tests timeout "${SUITE_S:-300}" \
  bash bench/gpu_check.sh "$OUTDIR/s" >/dev/null 2>&1
say "3 suite: rc $? in $((SECONDS - t)) s: $(grep -E 'passed|failed' "$OUTDIR/s/tests.log" | tail -n 1)"
