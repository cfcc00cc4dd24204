#!/usr/bin/env bash
# One command for a GPU machine, run from the repo root of a copy of the tree:
#   bash bench/gpu_check.sh [OUTDIR] [lowbit bench args, e.g. --quick]
# builds and installs lowbit, prints `lowbit info`, runs the GPU tests, runs `lowbit bench`
# (ops against torch, host time, and the models), then the development benchmarks that
# `lowbit bench` does not cover, and ends with a summary (only the last lines of output may
# reach the caller).
# OUTDIR: the first argument, else $OUT, else ./gpu_out. Files written there (8, at most 8
# come back): summary.txt build.log info.txt tests.log bench.log bench.json bench.md bench.png
# (bench.log: the output of `lowbit bench` and of the kbench step).
# Environment: PYTHON (default python3), LOWBIT_CUDA_ARCHS (passed to the build),
# STEPS (default "build info sass tests bench kbench"; e.g. STEPS="bench" on a machine already
# set up), BENCH_ARGS (default "--op all --model all"; the script's own extra arguments are
# added after it), KBENCH (the kbench step's tools, default "weight_stream cuda_fp8_quant":
# bench/bench_weight_stream.py, the small-M GEMMs as a decode step runs them, and
# bench/bench_cuda_fp8_quant.py, both fp8 encoders of the CUDA quantizers),
# TEST_FILTER (a pytest -k expression for the tests step, e.g. "not swapab_matches_reference"
# to leave out the 2268-case swapab matrix when the whole suite would not fit one call),
# TEST_WORKERS (pytest-xdist processes for the tests step, default 12; 1: no xdist).
# A step's failure is recorded and the next step still runs (no set -e).
set -u

if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUTDIR=$1; shift; else OUTDIR=${OUT:-./gpu_out}; fi
PY=${PYTHON:-python3}
STEPS=${STEPS:-build info sass tests bench kbench}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)  # the bench steps run from another folder
SUMMARY=$OUTDIR/summary.txt
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
want() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
T0=$SECONDS

echo "== (a) machine and versions"
nvidia-smi || say "nvidia-smi failed (rc $?)"
say "python: $($PY -c 'import sys; print(sys.version.split()[0], sys.executable)' 2>&1)"
say "torch:  $($PY -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda, "| cuda available:", torch.cuda.is_available(), "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")' 2>&1 | tail -n 1)"
say "triton: $($PY -c 'import triton; print(triton.__version__)' 2>&1 | tail -n 1)"
say "nvcc:   $(nvcc --version 2>&1 | grep -o 'release [0-9.]*' || echo 'not found')"

BUILD_RC=skipped
if want build; then
  echo "== (b) build and install (LOWBIT_CUDA_ARCHS=${LOWBIT_CUDA_ARCHS:-default}) -> $OUTDIR/build.log"
  t=$SECONDS
  {
    # No network there: build requirements missing from the image (scikit-build-core,
    # pybind11) can travel as wheels in .whl/ (see the device notes).
    if ls .whl/*.whl >/dev/null 2>&1; then
      $PY -m pip install --no-index --no-deps .whl/*.whl || echo "wheel install from .whl/ failed"
    fi
    # No extra nvcc flags: an experiment's (next_run.sh build_with) would otherwise stay in
    # the build folder's CMake cache and build into this package unseen.
    $PY -m pip install --no-build-isolation -v -C "cmake.define.CMAKE_CUDA_FLAGS=" .
  } >"$OUTDIR/build.log" 2>&1
  BUILD_RC=$?
  say "build: rc $BUILD_RC in $((SECONDS - t)) s (log: build.log)"
  if [ "$BUILD_RC" != 0 ]; then
    echo "-- last lines of build.log:"; tail -n 25 "$OUTDIR/build.log"
  fi
fi

INFO_RC=skipped
if want info; then
  echo "== (c) lowbit info -> $OUTDIR/info.txt"
  # Run outside the repo root so that `import lowbit` finds the installed package.
  (cd "${TMPDIR:-/tmp}" && $PY -m lowbit info) >"$OUTDIR/info.txt" 2>&1
  INFO_RC=$?
  if [ "$INFO_RC" != 0 ] && command -v lowbit >/dev/null; then
    echo "-- python -m lowbit info: rc $INFO_RC; trying the lowbit script" >>"$OUTDIR/info.txt"
    (cd "${TMPDIR:-/tmp}" && lowbit info) >>"$OUTDIR/info.txt" 2>&1
    INFO_RC=$?
  fi
  cat "$OUTDIR/info.txt"
  say "info: rc $INFO_RC (info.txt)"
fi

if want sass; then
  # Which tensor-core instructions the built kernels use: QGMMA/HGMMA/IGMMA are wgmma
  # (sm_90a), QMMA/HMMA/IMMA are mma.sync; LDSM is ldmatrix, LDGSTS cp.async, LDG.E.128 16-byte loads.
  so=$(cd "${TMPDIR:-/tmp}" && $PY -c 'import lowbit._C as c; print(c.__file__)' 2>/dev/null)
  if [ -n "$so" ] && command -v cuobjdump >/dev/null; then
    cuobjdump -sass "$so" >"$OUTDIR/sass.txt" 2>&1
    say "sass: $(grep -oE '\b(QGMMA|HGMMA|IGMMA|QMMA|HMMA|IMMA|LDSM|LDGSTS|UTMALDG|LDG\.E\.128|LDG\.E\.ENL2\.128)[A-Z0-9_.]*' "$OUTDIR/sass.txt" | sed 's/\..*//' | sort | uniq -c | tr -s ' \n' ' ')"
    rm -f "$OUTDIR/sass.txt"
  fi
fi

TESTS_RC=skipped
if want tests; then
  echo "== (d) GPU tests -> $OUTDIR/tests.log"
  t=$SECONDS
  KFILTER=()
  [ -n "${TEST_FILTER:-}" ] && KFILTER=(-k "$TEST_FILTER")
  # The host-side reference computations take most of the time: with pytest-xdist, one run
  # spread over TEST_WORKERS processes (default 12; all share the GPU); without it, two
  # pytest processes side by side (the GEMM file, everything else).
  WORKERS=${TEST_WORKERS:-12}
  if [ "$WORKERS" -gt 1 ] && $PY -c 'import xdist' >/dev/null 2>&1; then
    # --durations: the whole suite takes two device calls; the log says which tests cost most.
    $PY -m pytest tests -m gpu -q -rs -p no:cacheprovider -n "$WORKERS" --durations=40 \
      ${KFILTER[@]+"${KFILTER[@]}"} >"$OUTDIR/tests.log" 2>&1
    rc_rest=$?
    rc_gemm=$rc_rest
  else
    $PY -m pytest tests/test_cuda_fp8_gemm.py -m gpu -q -rs -p no:cacheprovider ${KFILTER[@]+"${KFILTER[@]}"} >"$OUTDIR/tests_gemm.log" 2>&1 &
    pid=$!
    $PY -m pytest tests -m gpu -q -rs -p no:cacheprovider ${KFILTER[@]+"${KFILTER[@]}"} --ignore=tests/test_cuda_fp8_gemm.py >"$OUTDIR/tests.log" 2>&1
    rc_rest=$?
    wait $pid
    rc_gemm=$?
    cat "$OUTDIR/tests_gemm.log" >>"$OUTDIR/tests.log" && rm -f "$OUTDIR/tests_gemm.log"
  fi
  # With a filter one side may select nothing (pytest's 5): that side did not fail.
  if [ -n "${TEST_FILTER:-}" ]; then
    [ "$rc_rest" = 5 ] && [ "$rc_gemm" != 5 ] && rc_rest=0
    [ "$rc_gemm" = 5 ] && [ "$rc_rest" != 5 ] && rc_gemm=0
  fi
  TESTS_RC=$(( rc_rest > rc_gemm ? rc_rest : rc_gemm ))
  [ "$TESTS_RC" = 5 ] && TESTS_RC="5(no tests collected)"  # pytest's code for "nothing ran"
  say "tests: rc $TESTS_RC in $((SECONDS - t)) s: $(grep -E '(passed|failed|error|skipped|no tests ran)' "$OUTDIR/tests.log" | tr '\n' ';')"
  if [ "${TESTS_RC%%(*}" != 0 ]; then
    grep -E '^(FAILED|ERROR)' "$OUTDIR/tests.log" | head -n 20 | tee -a "$SUMMARY"
  fi
fi

BENCH_RC=skipped
if want bench; then
  echo "== (e) lowbit bench ${BENCH_ARGS:---op all --model all} $* -> $OUTDIR/bench.{json,md,png,log}"
  t=$SECONDS
  # Outside the repo root, so that `import lowbit` finds the installed package.
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of words
  (cd "${TMPDIR:-/tmp}" && PYTHONUNBUFFERED=1 $PY -m lowbit bench --out "$OUTDIR" \
      ${BENCH_ARGS:---op all --model all} "$@") >"$OUTDIR/bench.log" 2>&1
  BENCH_RC=$?
  say "bench: rc $BENCH_RC in $((SECONDS - t)) s (bench.md, bench.json, bench.png; log: bench.log)"
  if [ "$BENCH_RC" != 0 ]; then
    echo "-- last lines of bench.log:"; tail -n 25 "$OUTDIR/bench.log"
  fi
fi

KBENCH_RC=skipped
if want kbench; then
  echo "== (e2) development benchmarks (${KBENCH:-weight_stream cuda_fp8_quant}) -> $OUTDIR/bench.log"
  t=$SECONDS
  KBENCH_RC=0
  for tool in ${KBENCH:-weight_stream cuda_fp8_quant}; do
    case $tool in
      weight_stream) cmd=(-m bench.bench_weight_stream --kernels swapab,triton) ;;
      *) cmd=(-m "bench.bench_$tool") ;;
    esac
    echo "== bench/bench_$tool.py" >>"$OUTDIR/bench.log"
    PYTHONUNBUFFERED=1 $PY "${cmd[@]}" >>"$OUTDIR/bench.log" 2>&1 || KBENCH_RC=$?
  done
  say "kbench: rc $KBENCH_RC in $((SECONDS - t)) s (appended to bench.log)"
fi

# The table first and the summary last: a caller may see only the tail of the output.
if [ -f "$OUTDIR/bench.md" ]; then
  echo; cat "$OUTDIR/bench.md"
fi
echo
echo "== (f) summary ($((SECONDS - T0)) s in all; files in $OUTDIR)"
echo "steps: build=$BUILD_RC info=$INFO_RC tests=$TESTS_RC kbench=$KBENCH_RC bench=$BENCH_RC" >>"$SUMMARY"
cat "$SUMMARY"
for rc in "$BUILD_RC" "$INFO_RC" "$TESTS_RC" "$KBENCH_RC" "$BENCH_RC"; do
  case "$rc" in 0 | skipped | "5(no tests collected)") ;; *) exit 1 ;; esac
done
exit 0
