#!/usr/bin/env bash
# The GPU calls of bench/NOTES.md's list "Next" (after "The swap-AB epilogue's latency"), one
# command each from the repo root of a copy of the tree:
#   bash bench/next_run.sh suite [OUTDIR]   build, then the whole GPU suite (a call of its
#                                           own: more than 460 s on an H200; SUITE_S caps it;
#                                           SHARD=i/n runs the i-th of n shards: 0/2 and 1/2
#                                           in two calls cover it, LOWBIT_TEST_SHARD)
#   bash bench/next_run.sh forms [OUTDIR]   build, then the swap-AB forms' tests and
#                                           bench/m64_probe.py with each form forced
#                                           (FORMS_SHAPES, FORMS_ROWS="auto 112" narrow it)
#   bash bench/next_run.sh probe [OUTDIR]   build, then the forms' probe (as `forms`, without
#                                           the tests), ncu at N = 14336 (as `race`, without
#                                           the racecheck steps), and W4A16 at M = 64: every
#                                           kernel's time, ncu of the wgmma and decode kernels
#   bash bench/next_run.sh trace [OUTDIR]   no package build: bench/wxa16_ab.sh times decode
#                                           and the wgmma weight-only kernel, then traces
#                                           the wgmma kernel's phases (three builds, or
#                                           TRACE_VARIANTS; TRACE_SHAPES; about 40 s)
#   bash bench/next_run.sh wx [OUTDIR]      build, the weight-only kernels' GPU tests
#                                           (test_cuda_wxa16.py), `trace`, then every
#                                           weight-only kernel's time at M = 16-64 on the
#                                           four benchmark weights (WX_SHAPES): the rows of
#                                           heuristics.TABLE for w4a16 / w8a16; then FP8 /
#                                           INT8 swap-AB against Triton at M = 32-64 on
#                                           K = 4096 weights (about 350 s)
#   bash bench/next_run.sh stages [OUTDIR]  the swap-AB ring's depth: for each of STAGES
#                                           (default "12 5 8") a build with
#                                           LOWBIT_SWAPAB_MAX_STAGES set, then the probe at
#                                           STAGES_SHAPES (about 80 s a depth)
#   bash bench/next_run.sh swtrace [OUTDIR] a build with the swap-AB phase trace
#                                           (-DLOWBIT_SWAPAB_TRACE), bench/swapab_trace.py
#                                           at SWTRACE_SHAPES for SWTRACE_OPS (default
#                                           fp8,int8), then the default build again
#                                           (about 2.5 minutes)
#   bash bench/next_run.sh wxsweep [OUTDIR] build, then bench/sweep_triton_wxa16.py (the
#                                           Triton weight-only GEMM's configs at M = 32-64;
#                                           WXSWEEP_ARGS, e.g. "--bits 4"; 450 s at most)
#   bash bench/next_run.sh triton [OUTDIR]  build, the weight-only GPU tests (Triton and CUDA),
#                                           `lowbit bench --kernels` on the weight-only ops
#                                           (every kernel's row: Triton against CUDA;
#                                           TBENCH_SHAPES), then bench/sweep_triton_wxa16.py
#                                           at M = 128-256 with 128-row tiles and no K split
#                                           (TSWEEP_SHAPES, TSWEEP_ARGS; about 300 s in all)
#   bash bench/next_run.sh ab [OUTDIR]      the weight-only wgmma kernel of this tree against
#                                           the copy in abx/old/wxa16/ (made before the call,
#                                           e.g. `git show main:csrc/wxa16/sm90_wxa16_gemm_
#                                           wgmma.cu`), group 128 and GROUP=64 (AB_SHAPES),
#                                           while the package builds; then the GPU tests of
#                                           the weight-only kernels and of the kernel choice
#                                           (test_cuda_wxa16, test_triton_wxa16, test_int4,
#                                           test_heuristics, test_auto_gpu; about 300 s)
#   bash bench/next_run.sh verify [OUTDIR]  the harness's K parts against the split in one
#                                           tree (-DLOWBIT_WXA16_NO_PARTS) at VERIFY_SHAPES,
#                                           then build, the decode tests (test_cuda_wxa16 -k
#                                           "k_parts or split_launches or decode"), the
#                                           quantizers' programmatic-launch tests and the
#                                           swap-AB, fused and early-weight tests (about 250 s)
#   bash bench/next_run.sh siblings [OUTDIR] build, the sibling groups' GPU tests
#                                           (test_siblings.py, test_bench_models.py -k fused),
#                                           then `lowbit bench --model bert-large` at
#                                           SIB_PRECISIONS (default fp8,fp8+fused,int8,
#                                           int8+fused; eager, compiled and graph, 5 rounds;
#                                           about 300 s)
#   bash bench/next_run.sh moe [OUTDIR]      build, QuantizedExperts' GPU tests, then `lowbit
#                                           bench --model mixtral-moe` at MOE_PRECISIONS
#                                           (default fp8,int8,int4; MOE_ROUNDS 3; MOE_S
#                                           300 s at most)
#   bash bench/next_run.sh grouped [OUTDIR]  build, QuantizedExperts' GPU tests (the grouped
#                                           path's among them), bench/sweep_experts.py (its
#                                           tiles, fp8 at M = 1 and 16, int8 at 1),
#                                           bench/profile_moe.py at M = 1-64 with the grouped
#                                           path allowed 256 pairs (where it beats the loop),
#                                           then `lowbit bench --model mixtral-moe` (fp8,
#                                           int8; about 400 s in all)
#   bash bench/next_run.sh cq [OUTDIR]       build, the compiled quantizer's GPU tests
#                                           (test_compiled_quant.py), BERT-large's compiled
#                                           forward profiled without and with
#                                           LOWBIT_COMPILED_QUANT=inductor, then `lowbit bench
#                                           --model bert-large --precision fp8` with it
#                                           (about 450 s)
#   bash bench/next_run.sh int8 [OUTDIR]    build, every INT8 GPU test file (CUDA and Triton
#                                           kernels, Int8Linear, auto's picks), then the
#                                           INT8 family's table (`lowbit bench --op
#                                           int8_gemm,quantize_int8,int8_linear
#                                           --kernels`, the PERF.md matrix; about 450 s)
#   bash bench/next_run.sh int8tune [OUTDIR] build, the Triton INT8 tile sweep at M = 128
#                                           and 512 on 4096 x 4096 and 4096 x 14336 (the
#                                           cells that trail the CUDA kernel most;
#                                           INT8TUNE_SHAPES replaces them), its rows
#                                           written into this tree's
#                                           triton_kernels/heuristics.py and the installed
#                                           copy (bench/pick_triton_table.py --apply), then
#                                           test_triton_int8.py and int8_gemm's rows at
#                                           M = 128-512 under them (about 350 s). The
#                                           edited heuristics.py is left in OUTDIR: the
#                                           same sweep gives the same file here.
#   bash bench/next_run.sh pingpong [OUTDIR] build, the FP8 wgmma GEMM's two schedules
#                                           bit for bit (test_wgmma_schedule.py) and its
#                                           tests under LOWBIT_WGMMA_SCHEDULE=pingpong, then
#                                           `lowbit bench --op fp8_scaled_mm:row` at
#                                           M >= 4096 (PING_SHAPES) in processes that
#                                           alternate cooperative and ping-pong,
#                                           PING_ROUNDS (default 2) of each (about 300 s)
#   bash bench/next_run.sh early [OUTDIR]   build, the early-weight tests (test_weight_early.py:
#                                           swap-AB and, above M = 64, wgmma), then
#                                           `lowbit bench --op int8_linear,fp8_linear` at
#                                           M = 128-4096 (EARLY_SHAPES) in processes that
#                                           alternate LOWBIT_EARLY_WEIGHTS=0 and 1, two
#                                           rounds (about 250 s)
#   bash bench/next_run.sh pending [OUTDIR] build, the GPU tests of what landed after 9df9dd9
#                                           without a GPU run (the loop's capture error, the
#                                           dequantizers' prepared launches and C++ plans,
#                                           the Triton INT8 tiles, the Triton weight-only
#                                           GEMM's split summed in its own launch),
#                                           then `lowbit bench`'s host table at 1 x 4096 x
#                                           4096 (rows against torch.add_ in interleaved
#                                           rounds; about 200 s)
#   bash bench/next_run.sh untested [OUTDIR] build, then the GPU tests of what landed after
#                                           965ea05 without a GPU run (the eager quantizer
#                                           entries' dropped zero points, the weight-only
#                                           split scratch in one module; 240 s at most),
#                                           then the host table as `pending` (about 400 s
#                                           in all).
#   bash bench/next_run.sh order [OUTDIR]   the wgmma GEMM's producer issuing a stage's a
#                                           tile first (-DLOWBIT_WGMMA_A_FIRST) against the
#                                           default: builds alternating, fp8_scaled_mm:row
#                                           and int8_gemm at M >= 4096 (ORDER_SHAPES), two
#                                           rounds, ending on the default build (about
#                                           450 s)
#   bash bench/next_run.sh race [OUTDIR]    build, then the racecheck crash narrowed: the W8A16
#                                           kernels' cases whole, then W4A16 + W8A16, each in
#                                           a process of its own (a line per finished case:
#                                           the last one named in a log is the case before a
#                                           crash), then bench/m64_probe.py and ncu on
#                                           the swap-AB / Triton kernels at N = 14336
# OUTDIR defaults to $OUT, else ./gpu_out. Each step writes under OUTDIR as it goes and runs
# under a timeout; summary.txt gets a line per step. SKIP_BUILD=1: no build first (the
# package an earlier step installed, e.g. `stages`, which ends on the default build). PACK=1:
# on exit, everything under OUTDIR but summary.txt goes into OUTDIR/out.tgz (the device
# tool brings back at most 8 files of a call). The
# next session's first call (bench/NOTES.md, "### Next", items 1-2): `bash bench/next_run.sh
# grouped $OUT`, about 400 s.
set -u
WHAT=${1:-suite}
case $WHAT in
  suite | forms | probe | trace | wx | stages | swtrace | wxsweep | triton | race | ab | verify | \
    siblings | moe | grouped | cq | pending | int8 | int8tune | pingpong | early | untested | \
    order) ;;
  *) echo "next_run.sh: unknown step '$WHAT' (see the comment at the top)" >&2; exit 2 ;;
esac
OUTDIR=${2:-${OUT:-./gpu_out}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
R=$(pwd)
PY=${PYTHON:-python3}
SUMMARY=$OUTDIR/summary.txt
say() { echo "$*" | tee -a "$SUMMARY"; }
pack() {
  [ -n "${PACK:-}" ] || return 0
  tar czf "$OUTDIR/out.tgz" -C "$OUTDIR" --exclude=./out.tgz --exclude=./summary.txt . &&
    find "$OUTDIR" -mindepth 1 -maxdepth 1 ! -name summary.txt ! -name out.tgz -exec rm -rf {} +
}
trap pack EXIT
say "0 $WHAT: $(nvidia-smi --query-gpu=name --format=csv,noheader) $(date -u +%FT%TZ)"
# The package built with extra nvcc flags ($1; empty: none), the log appended to $2. The flags
# stay in the build folder's CMake cache until a build passes others (gpu_check.sh's passes none).
build_with() {
  LOWBIT_CUDA_ARCHS=${LOWBIT_CUDA_ARCHS:-90a} timeout 200 $PY -m pip install \
    --no-build-isolation -q -C "cmake.define.CMAKE_CUDA_FLAGS=$1" . >>"$2" 2>&1
}
# The swap-AB GEMM's tests (its forms, every scale mode and epilogue, the fused linear
# kernels, the early weight loads) under a timeout of $1 s, extra pytest flags $2, log $3.
swapab_tests() {
  # shellcheck disable=SC2086
  (cd "${TMPDIR:-/tmp}" && timeout "$1" $PY -m pytest -q $2 -p no:cacheprovider \
     "$R/tests/test_swapab_forms.py" "$R/tests/test_cuda_fp8_gemm.py" \
     "$R/tests/test_cuda_int8_gemm.py" "$R/tests/test_fused_linear.py" \
     "$R/tests/test_weight_early.py" -k "forms or swapab or fused or early") >"$3" 2>&1
}
# A summary step that runs GPU tests: its label $1 (e.g. "2 experts tests"), a timeout of $2
# s, the log $3, then pytest's arguments (the files, -n, -k ...).
tests_step() {
  local label=$1 limit=$2 log=$3 t=$SECONDS
  shift 3
  (cd "${TMPDIR:-/tmp}" && timeout "$limit" $PY -m pytest -q -p no:cacheprovider "$@") \
    >"$log" 2>&1
  say "$label: rc $? in $((SECONDS - t)) s: $(tail -n 1 "$log")"
}
# `lowbit bench --op $4 --shapes $5 --no-host` in processes that alternate the values $2 (a
# space-separated list) of the environment variable $1, $3 rounds, each process under a
# timeout of $6 s with --rep-ms $7; its rows under OUTDIR/<variable>_<value>_<round>.
ab_rounds() {
  local var=$1 values=$2 rounds=$3 ops=$4 shapes=$5 limit=$6 rep=$7 round v t
  for round in $(seq "$rounds"); do
    for v in $values; do
      t=$SECONDS
      (cd "${TMPDIR:-/tmp}" && env "$var=$v" timeout "$limit" lowbit bench --op "$ops" \
         --no-host --rep-ms "$rep" --shapes "$shapes" --out "$OUTDIR/${var}_${v}_$round") \
        >"$OUTDIR/${var}_${v}_$round.log" 2>&1
      say "3 $var=$v, round $round: rc $? in $((SECONDS - t)) s"
    done
  done
}
# Summary step 3 of `untested` and `pending`: `lowbit bench`'s host table at 1 x 4096 x 4096
# (every op against torch.add_ in interleaved rounds) under OUTDIR/host.
host_table() {
  local t=$SECONDS
  (cd "${TMPDIR:-/tmp}" && timeout 150 lowbit bench --op all --shapes 1x4096x4096 \
     --rep-ms 30 --out "$OUTDIR/host") >"$OUTDIR/host.log" 2>&1
  say "3 host table: rc $? in $((SECONDS - t)) s ($OUTDIR/host/bench.md)"
}
# Summary step 1: the default build, its log $1 (none under SKIP_BUILD). A failed build ends
# the run with the log's tail: the steps after would time the package an earlier call installed.
first_build() {
  if [ -n "${SKIP_BUILD:-}" ]; then
    say "1 build: skipped (SKIP_BUILD)"
    return
  fi
  local t=$SECONDS rc
  build_with "" "$1"
  rc=$?
  say "1 build: rc $rc in $((SECONDS - t)) s"
  [ "$rc" = 0 ] || { tail -n 20 "$1"; exit 1; }
}

if [ "$WHAT" = verify ]; then
  # bench/NOTES.md, "The swap-AB epilogue in one round", ### Next, item 1: what landed without
  # a GPU run. The harness needs no build; the parts the rule takes must not lose to the split.
  t=$SECONDS
  SHAPES=${VERIFY_SHAPES:-1x4096x4096,2x8000x4224,2x14000x4224,1x14336x4096,2x5000x4224} \
    BF16=1 timeout 90 bash bench/wxa16_ab.sh tree:-DLOWBIT_WXA16_NO_PARTS tree \
    >"$OUTDIR/parts_ab.log" 2>&1
  say "1 harness, split against parts: rc $? in $((SECONDS - t)) s (parts_ab.log)"
  t=$SECONDS
  build_with "" "$OUTDIR/build.log"
  say "2 build: rc $? in $((SECONDS - t)) s"
  t=$SECONDS
  (cd "${TMPDIR:-/tmp}" && timeout 90 $PY -m pytest -q -n 14 -p no:cacheprovider \
     "$R/tests/test_cuda_wxa16.py" "$R/tests/test_cuda_fp8_quant.py" \
     -k "k_parts or split_launches or decode or programmatic") \
    >"$OUTDIR/decode_tests.log" 2>&1
  say "3 decode tests: rc $? in $((SECONDS - t)) s: $(grep -E 'passed|failed' "$OUTDIR/decode_tests.log" | tail -n 1)"
  t=$SECONDS
  swapab_tests 200 "-n 14" "$OUTDIR/swapab_tests.log"
  say "4 swap-AB tests: rc $? in $((SECONDS - t)) s: $(grep -E 'passed|failed' "$OUTDIR/swapab_tests.log" | tail -n 1)"
  exit 0
fi

# The wgmma weight-only kernel's trace (bench/wxa16_ab.sh, no package build), as summary
# step $1. Where the wgmma W4A16 / W8A16 kernel's time goes (issue 15's M = 64): decode, the
# wgmma kernel, its phase trace. TRACE_VARIANTS replaces the builds, e.g. with
# "DIR:-DAB_WGMMA" added for a copy of the kernel to compare (bench/wxa16_ab.sh says how).
trace_step() {
  local t=$SECONDS
  # shellcheck disable=SC2086
  SHAPES=${TRACE_SHAPES:-16x4096x4096,64x4096x4096,64x14336x4096} BF16=1 timeout 120 \
    bash bench/wxa16_ab.sh ${TRACE_VARIANTS:-tree tree:-DAB_WGMMA \
    tree:-DAB_WGMMA,-DLOWBIT_WXA16_TRACE} >"$OUTDIR/wgmma_trace.txt" 2>&1
  say "$1 trace: rc $? in $((SECONDS - t)) s (wgmma_trace.txt)"
}

if [ "$WHAT" = trace ]; then
  trace_step 1
  exit 0
fi

if [ "$WHAT" = ab ]; then
  [ -f abx/old/wxa16/sm90_wxa16_gemm_wgmma.cu ] || { say "ab: no abx/old/wxa16 copy"; exit 2; }
  t=$SECONDS
  first_build "$OUTDIR/build_ab.log" &
  build_pid=$!
  shapes=${AB_SHAPES:-64x14336x4096,128x4096x4096,128x14336x4096,256x14336x4096,1024x14336x4096}
  v="abx/old:-DAB_WGMMA tree:-DAB_WGMMA"
  # shellcheck disable=SC2086
  SHAPES=$shapes BF16=1 timeout 120 bash bench/wxa16_ab.sh $v $v >"$OUTDIR/ab128.txt" 2>&1
  say "2 A/B, group 128: rc $? at $((SECONDS - t)) s (ab128.txt)"
  # shellcheck disable=SC2086
  GROUP=64 SHAPES=$shapes timeout 90 bash bench/wxa16_ab.sh $v >"$OUTDIR/ab64.txt" 2>&1
  say "3 A/B, group 64: rc $? at $((SECONDS - t)) s (ab64.txt)"
  wait "$build_pid" || exit 1
  t=$SECONDS
  (cd "${TMPDIR:-/tmp}" && timeout "${AB_TEST_S:-240}" $PY -m pytest -q -n 12 \
     -p no:cacheprovider "$R/tests/test_cuda_wxa16.py" "$R/tests/test_triton_wxa16.py" \
     "$R/tests/test_int4.py" "$R/tests/test_heuristics.py" "$R/tests/test_auto_gpu.py") \
    >"$OUTDIR/ab_tests.log" 2>&1
  say "4 tests: rc $? in $((SECONDS - t)) s: $(grep -E 'passed|failed' "$OUTDIR/ab_tests.log" | tail -n 1)"
  exit 0
fi

if [ "$WHAT" = wx ]; then
  # Time limits within one 600 s call: build 200, tests 110, trace 120, probes 100 + 60.
  first_build "$OUTDIR/build_wx.log"
  t=$SECONDS
  (cd "${TMPDIR:-/tmp}" && timeout "${WX_TEST_S:-110}" $PY -m pytest -q -x -n 8 \
     -p no:cacheprovider "$R/tests/test_cuda_wxa16.py") >"$OUTDIR/wx_tests.log" 2>&1
  say "2 tests: rc $? in $((SECONDS - t)) s: $(grep -E 'passed|failed' "$OUTDIR/wx_tests.log" | tail -n 1)"
  trace_step 3
  t=$SECONDS
  shapes=16x4096x4096,32x4096x4096,48x4096x4096,64x4096x4096,32x14336x4096,48x14336x4096
  shapes=${WX_SHAPES:-$shapes,64x14336x4096,64x4096x14336,48x28672x8192,64x28672x8192}
  (cd "${TMPDIR:-/tmp}" && timeout 100 $PY "$R/bench/m64_probe.py" \
     --ops w4a16_gemm:prepacked,w8a16_gemm --kernels w4a16,w8a16 --shapes "$shapes") \
    >"$OUTDIR/wx_probe.log" 2>&1
  say "4 probe: rc $? in $((SECONDS - t)) s (wx_probe.log)"
  # FP8 / INT8 at M = 32-64 on K = 4096 weights of growing N: whether Triton's kernel leads
  # the swap-AB GEMM beyond the one shape first measured (bench/NOTES.md, "### Next").
  t=$SECONDS
  shapes=32x8192x4096,64x8192x4096,32x14336x4096,48x14336x4096,64x14336x4096
  (cd "${TMPDIR:-/tmp}" && timeout 60 $PY "$R/bench/m64_probe.py" --kernels swapab,triton \
     --shapes "$shapes,32x28672x4096,64x28672x4096") >"$OUTDIR/mx_probe.log" 2>&1
  say "5 swap-AB / Triton probe: rc $? in $((SECONDS - t)) s (mx_probe.log)"
  exit 0
fi

if [ "$WHAT" = triton ]; then
  # Time limits within one 600 s call: build 200, tests 120, bench 90, sweep the rest.
  first_build "$OUTDIR/build_triton.log"
  t=$SECONDS
  (cd "${TMPDIR:-/tmp}" && timeout 120 $PY -m pytest -q -n 10 -p no:cacheprovider \
     "$R/tests/test_triton_wxa16.py" "$R/tests/test_cuda_wxa16.py") >"$OUTDIR/tests.log" 2>&1
  say "2 tests: rc $? in $((SECONDS - t)) s: $(grep -E 'passed|failed' "$OUTDIR/tests.log" | tail -n 1)"
  t=$SECONDS
  shapes=1x4096x4096,16x14336x4096,32x4096x4096,64x4096x4096,64x14336x4096,64x28672x8192
  shapes=$shapes,128x4096x4096,128x14336x4096,256x4096x4096,256x14336x4096,1024x14336x4096
  shapes=${TBENCH_SHAPES:-$shapes}
  (cd "${TMPDIR:-/tmp}" && timeout 120 lowbit bench --op w4a16_gemm,w8a16_gemm --kernels \
     --no-host --shapes "$shapes" --out "$OUTDIR/bench") >"$OUTDIR/bench.log" 2>&1
  say "3 bench: rc $? in $((SECONDS - t)) s (bench.log)"
  t=$SECONDS
  # shellcheck disable=SC2086
  (cd "$R" && timeout "${TSWEEP_S:-150}" $PY -m bench.sweep_triton_wxa16 --rep-ms 12 \
     --shapes "${TSWEEP_SHAPES:-128x4096x4096,128x14336x4096,256x4096x4096,256x14336x4096}" \
     ${TSWEEP_ARGS---splits 1}) >"$OUTDIR/tsweep.txt" 2>&1
  say "4 sweep: rc $? in $((SECONDS - t)) s: $(grep -c BEST "$OUTDIR/tsweep.txt") shapes done"
  exit 0
fi

if [ "$WHAT" = stages ]; then
  # Whether the weight bytes in flight set the swap-AB GEMM's rate (bench/NOTES.md: 23 KB/us
  # a CTA with 128 KB in flight at M = 1, 17 with 112 KB at M = 64; DRAM at 58-69%). The
  # flag changes every swap-AB kernel's ring, so each depth is a build of its own; the last
  # build is left installed, so the list ends where the next step wants it (8: the default).
  shapes=${STAGES_SHAPES:-1x4096x4096,16x4096x4096,64x4096x4096,1x14336x4096,64x14336x4096}
  n=1
  for d in ${STAGES:-12 5 8}; do
    t=$SECONDS
    build_with "-DLOWBIT_SWAPAB_MAX_STAGES=$d" "$OUTDIR/build_stages$d.log"
    rc=$?
    (cd "${TMPDIR:-/tmp}" && timeout 80 $PY "$R/bench/m64_probe.py" --kernels swapab,triton \
       --shapes "$shapes" | sed "s/^/stages=$d /") >>"$OUTDIR/stages.log" 2>&1
    say "$n stages $d: build rc $rc, in $((SECONDS - t)) s"
    n=$((n + 1))
  done
  exit 0
fi

if [ "$WHAT" = swtrace ]; then
  # Where a swap-AB launch's microseconds go (bench/NOTES.md: M = 1 at 4096^2 trails Triton's
  # kernel by about 2 us; +9k cycles a CTA from M = 1 to 64 at 14336 x 4096).
  t=$SECONDS
  for flags in -DLOWBIT_SWAPAB_TRACE ""; do
    build_with "$flags" "$OUTDIR/build_swtrace.log"
    say "1 build [${flags:-default}]: rc $? at $((SECONDS - t)) s"
    [ -z "$flags" ] && break
    (cd "${TMPDIR:-/tmp}" && timeout 120 $PY "$R/bench/swapab_trace.py" \
       ${SWTRACE_SHAPES:+--shapes "$SWTRACE_SHAPES"} --ops "${SWTRACE_OPS:-fp8,int8}") \
      >"$OUTDIR/swapab_trace.txt" 2>&1
    say "2 swapab_trace.py: rc $? at $((SECONDS - t)) s (swapab_trace.txt)"
  done
  exit 0
fi

if [ "$WHAT" = order ]; then
  # bench/NOTES.md, "What landed without a GPU run, run", ### Next, item 1: the wgmma GEMM's
  # producer issuing a stage's a tile before its b tile (-DLOWBIT_WGMMA_A_FIRST) against the
  # default, FP8 and INT8 at M >= 4096, builds alternating, two rounds, each round's
  # experiment first so that the step ends on the default build. A failed build is not timed.
  shapes=${ORDER_SHAPES:-4096x4096x4096,4096x14336x4096,4096x4096x14336,8192x8192x8192}
  n=1
  for round in 1 2; do
    for flags in -DLOWBIT_WGMMA_A_FIRST ""; do
      t=$SECONDS
      build_with "$flags" "$OUTDIR/build_order.log"
      rc=$?
      tag=main
      [ -n "$flags" ] && tag=a_first
      if [ "$rc" != 0 ]; then
        say "$n order [$tag] round $round: build rc $rc in $((SECONDS - t)) s, not timed"
        n=$((n + 1))
        continue
      fi
      (cd "${TMPDIR:-/tmp}" && timeout 70 lowbit bench --op fp8_scaled_mm:row,int8_gemm \
         --no-host --rep-ms 30 --shapes "$shapes" --out "$OUTDIR/order_${tag}_$round") \
        >"$OUTDIR/order_${tag}_$round.log" 2>&1
      say "$n order [$tag] round $round: build rc $rc, bench rc $? in $((SECONDS - t)) s"
      n=$((n + 1))
    done
  done
  exit 0
fi

if [ -n "${SKIP_BUILD:-}" ]; then
  say "1 build: skipped (SKIP_BUILD: the package installed by an earlier step)"
else
  LOWBIT_CUDA_ARCHS=${LOWBIT_CUDA_ARCHS:-90a} STEPS=build timeout 200 bash bench/gpu_check.sh "$OUTDIR/b" >/dev/null 2>&1
  say "1 build: $(grep build "$OUTDIR/b/summary.txt" 2>/dev/null)"
fi

if [ "$WHAT" = siblings ]; then
  # bench/NOTES.md, "Sibling Linears as one layer": its GPU tests, then issue 18's BERT rows
  # with and without the q/k/v groups.
  tests_step "2 sibling tests" 90 "$OUTDIR/siblings_tests.log" "$R/tests/test_siblings.py" \
    "$R/tests/test_experts.py" "$R/tests/test_bench_models.py" -k "cuda or fused or experts"
  t=$SECONDS
  (cd "${TMPDIR:-/tmp}" && timeout "${SIB_S:-300}" lowbit bench --model bert-large --rounds 5 \
     --precision "${SIB_PRECISIONS:-fp8,fp8+fused,int8,int8+fused}" --out "$OUTDIR/bert") \
    >"$OUTDIR/bert.log" 2>&1
  say "3 bert-large: rc $? in $((SECONDS - t)) s ($OUTDIR/bert/bench.md)"
  exit 0
fi

if [ "$WHAT" = moe ]; then
  # bench/NOTES.md, "MoE experts quantized": the GPU cases of QuantizedExperts, then the
  # Mixtral block's rows (the per-expert loop against bf16 grouped_mm).
  tests_step "2 experts tests" 90 "$OUTDIR/moe_tests.log" "$R/tests/test_experts.py" \
    "$R/tests/test_bench_models.py" -k "cuda or experts"
  t=$SECONDS
  (cd "${TMPDIR:-/tmp}" && timeout "${MOE_S:-300}" lowbit bench --model mixtral-moe \
     --rounds "${MOE_ROUNDS:-3}" --precision "${MOE_PRECISIONS:-fp8,int8,int4}" \
     --out "$OUTDIR/moe") >"$OUTDIR/moe.log" 2>&1
  say "3 mixtral-moe: rc $? in $((SECONDS - t)) s ($OUTDIR/moe/bench.md)"
  exit 0
fi

if [ "$WHAT" = grouped ]; then
  # bench/NOTES.md, "The grouped path measured", ### Next, items 1-2.
  tests_step "2 experts tests" 120 "$OUTDIR/experts_tests.log" -n 12 "$R/tests/test_experts.py"
  # (a tile's first launch compiles it: about 1-2 s each; int8 at M = 1 only)
  for run in "fp8 1,16 120" "int8 1 80"; do
    set -- $run
    t=$SECONDS
    timeout "$3" $PY -m bench.sweep_experts --precision "$1" --m "$2" \
      >"$OUTDIR/sweep_$1.txt" 2>&1
    say "3 sweep_experts $1: rc $? in $((SECONDS - t)) s (sweep_$1.txt)"
  done
  t=$SECONDS
  timeout 80 $PY -m bench.profile_moe --precision fp8 --m 1,16,32,64 --max-pairs 256 \
    >"$OUTDIR/profile_moe.txt" 2>&1
  say "4 profile_moe: rc $? in $((SECONDS - t)) s (profile_moe.txt)"
  # (the op table at M = 1: where the eager block's host time goes; both blocks compiled)
  t=$SECONDS
  timeout 120 $PY -m bench.profile_moe --precision fp8 --m 1 --compile \
    >"$OUTDIR/profile_moe_m1.txt" 2>&1
  say "4b profile_moe M = 1: rc $? in $((SECONDS - t)) s (profile_moe_m1.txt)"
  t=$SECONDS
  (cd "${TMPDIR:-/tmp}" && timeout 150 lowbit bench --model mixtral-moe --rounds 3 \
     --precision fp8,int8 --out "$OUTDIR/moe") >"$OUTDIR/moe.log" 2>&1
  say "5 mixtral-moe: rc $? in $((SECONDS - t)) s ($OUTDIR/moe/bench.md)"
  exit 0
fi

if [ "$WHAT" = int8 ]; then
  # The INT8 family whole, from one tree: its GPU tests, then its table with every anchor.
  tests_step "2 int8 tests" 240 "$OUTDIR/int8_tests.log" -n 12 \
    "$R/tests/test_cuda_int8_gemm.py" "$R/tests/test_cuda_int8_quant.py" \
    "$R/tests/test_triton_int8.py" "$R/tests/test_int8_linear.py" \
    "$R/tests/test_int8_kernels.py" "$R/tests/test_auto_gpu.py"
  t=$SECONDS
  (cd "${TMPDIR:-/tmp}" && timeout 300 lowbit bench --op int8_gemm,quantize_int8,int8_linear \
     --kernels --no-host --rep-ms 50 --out "$OUTDIR/int8") >"$OUTDIR/int8.log" 2>&1
  say "3 int8 table: rc $? in $((SECONDS - t)) s ($OUTDIR/int8/bench.md)"
  exit 0
fi

if [ "$WHAT" = int8tune ]; then
  # bench/NOTES.md, "A session without a device", ### Next, item 1.
  t=$SECONDS
  timeout 150 $PY -m bench.sweep_triton_gemm --op int8 --rep-ms 15 --md "$OUTDIR/int8tri.md" \
    --shapes "${INT8TUNE_SHAPES:-128x4096x4096,128x4096x14336,512x4096x4096,512x4096x14336}" \
    >"$OUTDIR/int8tri.log" 2>&1
  say "2 sweep_triton_gemm --op int8: rc $? in $((SECONDS - t)) s (int8tri.md)"
  $PY -m bench.pick_triton_table "$OUTDIR/int8tri.md" --apply triton_kernels/heuristics.py \
    >"$OUTDIR/pick.txt" 2>&1
  say "3 pick_triton_table --apply: rc $? ($OUTDIR/pick.txt)"
  cp triton_kernels/heuristics.py "$OUTDIR/heuristics.py"
  installed=$(cd "${TMPDIR:-/tmp}" && $PY -c \
    "import lowbit, os; print(os.path.dirname(lowbit.__file__))")
  cp triton_kernels/heuristics.py "$installed/triton_kernels/heuristics.py"
  tests_step "4 triton int8 tests" 100 "$OUTDIR/int8_tests.log" -n 12 \
    "$R/tests/test_triton_int8.py"
  t=$SECONDS
  (cd "${TMPDIR:-/tmp}" && timeout 90 lowbit bench --op int8_gemm --kernels --no-host \
     --rep-ms 20 --out "$OUTDIR/int8" --shapes \
     128x4096x4096,128x4096x14336,256x4096x4096,256x4096x14336,512x4096x4096,512x4096x14336,512x14336x4096) \
    >"$OUTDIR/int8.log" 2>&1
  say "5 int8_gemm rows: rc $? in $((SECONDS - t)) s ($OUTDIR/int8/bench.md)"
  exit 0
fi

if [ "$WHAT" = pingpong ]; then
  # Issue 16 asks for the ping-pong consumer schedule measured against the cooperative one
  # (bench/NOTES.md, "INT8 and FP8: the rows below their targets").
  if [ -z "${NO_TESTS:-}" ]; then
    tests_step "2 schedule tests" 150 "$OUTDIR/ping_tests.log" \
      "$R/tests/test_wgmma_schedule.py"
  fi
  LOWBIT_WGMMA_SCHEDULE=pingpong tests_step "2b fp8 GEMM tests, ping-pong" 150 \
    "$OUTDIR/ping_gemm_tests.log" -n 12 "$R/tests/test_cuda_fp8_gemm.py" -k "wgmma or large"
  ab_rounds LOWBIT_WGMMA_SCHEDULE "cooperative pingpong" "${PING_ROUNDS:-2}" fp8_scaled_mm:row \
    "${PING_SHAPES:-4096x4096x4096,4096x14336x4096,4096x4096x14336,4096x28672x8192,8192x8192x8192}" \
    100 50
  exit 0
fi

if [ "$WHAT" = early ]; then
  # The wgmma GEMM's early weight loads (a layer's forward above M = 64): bits, then time.
  [ -z "${NO_TESTS:-}" ] && tests_step "2 early-weight tests" 150 "$OUTDIR/early_tests.log" \
    -n 8 "$R/tests/test_weight_early.py"
  ab_rounds LOWBIT_EARLY_WEIGHTS "0 1" 2 int8_linear,fp8_linear \
    "${EARLY_SHAPES:-128x4096x4096,128x4096x14336,256x4096x4096,512x14336x4096,4096x4096x4096}" \
    45 20
  exit 0
fi

if [ "$WHAT" = untested ]; then
  # What landed after 965ea05 without a GPU run (bench/NOTES.md, the last "### Next"): the
  # eager quantizer entries without the dropped zero points, the split scratch both
  # weight-only backends now keep in one place, the Triton decode kernel's new constexpr.
  tests_step "2 untested GPU tests" 240 "$OUTDIR/untested_tests.log" -n 12 \
    "$R/tests/test_native_ops.py" "$R/tests/test_triton_wxa16.py" \
    "$R/tests/test_cuda_wxa16.py" "$R/tests/test_triton_bind.py" \
    -k "quantize_int8_plans or int4_quantize_plans or split or scratch or graphs or decode or bind"
  host_table
  exit 0
fi

if [ "$WHAT" = pending ]; then
  # bench/NOTES.md, "Every family's table at 9df9dd9", ### Next, item 1.
  tests_step "2 experts capture tests" 120 "$OUTDIR/experts_tests.log" \
    "$R/tests/test_experts.py" -k "capture"
  tests_step "2 dequantizer tests" 120 "$OUTDIR/dequant_tests.log" -n 8 \
    "$R/tests/test_cuda_fp8_quant.py" "$R/tests/test_cuda_int8_quant.py" \
    "$R/tests/test_native_ops.py" -k "dequantiz or registered"
  tests_step "2 triton int8 tests" 150 "$OUTDIR/int8_tests.log" -n 12 \
    "$R/tests/test_triton_int8.py"
  tests_step "2 triton weight-only tests (the split summed in its launch)" 150 \
    "$OUTDIR/wx_tests.log" -n 12 "$R/tests/test_triton_wxa16.py" "$R/tests/test_triton_bind.py"
  host_table
  exit 0
fi

if [ "$WHAT" = cq ]; then
  # bench/NOTES.md, "The grouped kernel's weights read in 16-byte pieces", ### Next, item 3.
  tests_step "2 compiled-quant tests" 90 "$OUTDIR/cq_tests.log" -n 12 \
    "$R/tests/test_compiled_quant.py"
  for cq in "" inductor; do
    t=$SECONDS
    LOWBIT_COMPILED_QUANT=$cq timeout 130 $PY -m bench.profile_bert --modes compile --top 10 \
      >"$OUTDIR/profile_bert_${cq:-default}.txt" 2>&1
    say "3 profile_bert compiled, LOWBIT_COMPILED_QUANT=${cq:-unset}: rc $? in $((SECONDS - t)) s"
  done
  t=$SECONDS
  (cd "${TMPDIR:-/tmp}" && LOWBIT_COMPILED_QUANT=inductor timeout 150 lowbit bench \
     --model bert-large --rounds 3 --precision fp8 --out "$OUTDIR/bert") >"$OUTDIR/bert.log" 2>&1
  say "4 bert-large with it: rc $? in $((SECONDS - t)) s ($OUTDIR/bert/bench.md)"
  exit 0
fi

if [ "$WHAT" = suite ]; then
  t=$SECONDS
  LOWBIT_TEST_SHARD=${SHARD:-} STEPS=tests timeout "${SUITE_S:-500}" bash bench/gpu_check.sh \
    "$OUTDIR/s" >/dev/null 2>&1
  say "2 suite${SHARD:+ shard $SHARD}: rc $? in $((SECONDS - t)) s: $(grep -E 'passed|failed' "$OUTDIR/s/tests.log" | tail -n 1)"
  exit 0
fi

if [ "$WHAT" = forms ] || [ "$WHAT" = probe ]; then
  # The swap-AB GEMM's two forms at M = 33..64: their tests, then the probe per form.
  if [ "$WHAT" = forms ]; then
    t=$SECONDS
    swapab_tests "${FORMS_TEST_S:-200}" "-x -n 8" "$OUTDIR/forms_tests.log"
    say "2 tests: rc $? in $((SECONDS - t)) s: $(grep -E 'passed|failed' "$OUTDIR/forms_tests.log" | tail -n 1)"
  fi
  shapes=1x4096x4096,16x4096x4096,33x4096x4096,48x4096x4096,64x4096x4096,64x6144x4096
  shapes=${FORMS_SHAPES:-$shapes,1x14336x4096,64x14336x4096,64x4096x14336,64x28672x8192}
  for r in ${FORMS_ROWS:-auto 128 112 96}; do
    t=$SECONDS
    k=swapab
    [ "$r" = auto ] && k=swapab,triton r=
    (cd "${TMPDIR:-/tmp}" && LOWBIT_SWAPAB_ROWS=$r timeout 80 $PY "$R/bench/m64_probe.py" \
       --kernels $k --shapes "$shapes" \
       | sed "s/^/rows=${r:-auto} /") >>"$OUTDIR/forms_m64.log" 2>&1
    say "3 probe rows=${r:-auto}: in $((SECONDS - t)) s"
  done
  [ "$WHAT" = forms ] && exit 0
fi

if [ "$WHAT" = wxsweep ]; then
  t=$SECONDS
  (cd "$R" && timeout "${WXSWEEP_S:-450}" $PY -m bench.sweep_triton_wxa16 ${WXSWEEP_ARGS:-}) \
    >"$OUTDIR/wxsweep.txt" 2>&1
  say "2 wxsweep: rc $? in $((SECONDS - t)) s: $(grep -c BEST "$OUTDIR/wxsweep.txt") shapes done"
  exit 0
fi

n=2
[ "$WHAT" = race ] && for ops in w8a16_gemm w4a16_gemm,w8a16_gemm; do
  t=$SECONDS
  log=$OUTDIR/racecheck-${ops//,/+}.log
  (cd "${TMPDIR:-/tmp}" && env PYTORCH_NO_CUDA_MEMORY_CACHING=1 CUDA_LAUNCH_BLOCKING=1 \
     timeout "${RACE_S:-150}" compute-sanitizer --tool racecheck --kernel-name kns=lowbit \
     --error-exitcode 3 --print-limit 20 $PY "$R/bench/sanitize.py" --no-cublas \
     --ops "$ops" --cases) >"$log" 2>&1
  say "$n racecheck $ops: rc $? in $((SECONDS - t)) s; last case: $(grep ' done$' "$log" | tail -n 1)"
  n=$((n + 1))
done

if [ "$WHAT" = race ]; then
  t=$SECONDS
  (cd "${TMPDIR:-/tmp}" && timeout 100 $PY "$R/bench/m64_probe.py" --kernels swapab,triton \
     --shapes 1x4096x4096,16x4096x4096,32x4096x4096,48x4096x4096,64x4096x4096,1x14336x4096,16x14336x4096,64x14336x4096,64x4096x14336) \
     >>"$OUTDIR/m64.log" 2>&1
  say "$n m64 probe: in $((SECONDS - t)) s (m64.log)"
  n=$((n + 1))
fi

# The 64 x 14336 x 4096 row (no K split, 112 CTAs): ncu's view of the swap-AB and Triton
# kernels there and at M = 1 on the same weight.
t=$SECONDS
(cd "${TMPDIR:-/tmp}" && timeout 120 ncu --clock-control none -k regex:'swapab|fp8_gemm' \
   --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
   --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
   $PY "$R/bench/m64_probe.py" --once --kernels swapab,triton --shapes 64x14336x4096,1x14336x4096) \
   >"$OUTDIR/ncu14336.log" 2>&1
say "$n ncu 14336: rc $? in $((SECONDS - t)) s (ncu14336.log)"
n=$((n + 1))

# W4A16 at M = 64 (issue 15's 2.0x): every kernel's time, then ncu's view of the wgmma
# kernel beside the decode kernel that `auto` runs there.
t=$SECONDS
(cd "${TMPDIR:-/tmp}" && timeout 90 $PY "$R/bench/m64_probe.py" --ops w4a16_gemm:prepacked \
   --kernels w4a16 --shapes 16x4096x4096,64x4096x4096,64x14336x4096,128x4096x4096) \
   >"$OUTDIR/w4a16_m64.log" 2>&1
say "$n w4a16 probe: rc $? in $((SECONDS - t)) s (w4a16_m64.log)"
n=$((n + 1))
t=$SECONDS
(cd "${TMPDIR:-/tmp}" && timeout 120 ncu --clock-control none -k regex:'wxa16_wgmma|wxa16_decode' \
   --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
   --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section SchedulerStats \
   $PY "$R/bench/m64_probe.py" --once --ops w4a16_gemm:prepacked \
   --kernels w4a16_gemm_wgmma,w4a16_gemm_decode \
   --shapes 64x4096x4096) >"$OUTDIR/ncu_w4a16.log" 2>&1
say "$n ncu w4a16: rc $? in $((SECONDS - t)) s (ncu_w4a16.log)"
