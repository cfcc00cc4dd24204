#!/usr/bin/env bash
# compute-sanitizer over every CUDA kernel (bench/sanitize.py), on a GPU machine with lowbit
# installed:   bash bench/sanitize.sh [OUTDIR] [sanitize.py args, e.g. --ops int8_mm]
# Runs memcheck and racecheck, each natively and with LOWBIT_ARCH=89 and 80 (the mma.sync
# kernels on a Hopper card); logs go to OUTDIR (default $OUT, else ./sanitize_out), one per run, and a
# line per run to OUTDIR/sanitize.txt. The caching allocator is off so that memcheck sees an
# access past the end of a tensor, not inside a pooled block. racecheck looks at lowbit's
# kernels only (their mangled names hold "lowbit") and leaves out the dequantize-then-cuBLAS
# path (sanitize.py --no-cublas: racecheck crashes inside cuBLAS's kernels there, and the
# dequantize kernel has no shared memory); memcheck runs every kernel.
set -u
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUTDIR=$1; shift; else OUTDIR=${OUT:-./sanitize_out}; fi
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
SUMMARY=$OUTDIR/sanitize.txt
: >"$SUMMARY"
status=0
for tool in memcheck racecheck; do
  for arch in native 89 80; do
    log=$OUTDIR/$tool-$arch.log
    env=(PYTORCH_NO_CUDA_MEMORY_CACHING=1)
    [ "$arch" != native ] && env+=(LOWBIT_ARCH=$arch)
    t=$SECONDS
    # Run from outside the repo so that the installed package is imported.
    only=()
    skip=()
    [ "$tool" = racecheck ] && only=(--kernel-name kns=lowbit) && skip=(--no-cublas)
    (cd "${TMPDIR:-/tmp}" && env "${env[@]}" compute-sanitizer --tool "$tool" "${only[@]}" \
        --error-exitcode 3 --print-limit 200 $PY "$HERE/sanitize.py" "${skip[@]}" "$@") >"$log" 2>&1
    rc=$?
    note=""
    if [ "$tool" = racecheck ] && [ "$rc" = 3 ]; then
      # racecheck does not model mbarrier ordering: a race-free hand-off of plain shared
      # stores through an mbarrier gets hazards too (bench/racecheck_mbarrier.cu; H100,
      # compute-sanitizer 2025.3.1). The wgmma weight-only kernels hand each stage's scales
      # from their metadata warps (stage_metadata) to the consumers that way, so those pairs
      # are the tool's. A run passes when every hazard is such a pair and all were displayed.
      known=$(awk '
        function close_block() { if (inb) { total++; if (meta) k++ } inb = 0 }
        /Error: Race reported between/ { close_block(); inb = 1; meta = /stage_metadata</; next }
        inb && /^=========     and / { if (/stage_metadata</) meta = 1; next }
        { close_block() }
        /RACECHECK SUMMARY:/ { shown = $4 + 0; errs = substr($7, 2) + 0; warns = $9 + 0 }
        END { close_block(); print (total > 0 && k == total && total == shown &&
                                    shown == errs + warns) ? total : 0 }' "$log")
      if [ "$known" -gt 0 ]; then
        rc=0
        note=" ($known hazards, all the wgmma weight-only kernels' metadata hand-off through an mbarrier, which racecheck does not model)"
      fi
    fi
    [ "$rc" != 0 ] && status=1
    echo "$tool arch=$arch: rc $rc in $((SECONDS - t)) s; $(grep -c 'ran ' "$log") kernels ran;" \
         "$(grep -m1 -e 'ERROR SUMMARY' -e 'RACECHECK SUMMARY' "$log" || echo 'no summary line')$note" \
      | tee -a "$SUMMARY"
  done
done
# Every kernel must have run a case in some arch's memcheck pass: a run that checked nothing
# is not clean.
idle=$(cat "$OUTDIR"/memcheck-*.log | awk '$3 == "ran" {ran[$2] += $4 + 0; seen[$2] = 1}
  END {for (k in seen) if (ran[k] == 0) print k}')
if [ -n "$idle" ]; then echo "kernels that ran no case: $idle" | tee -a "$SUMMARY"; status=1; fi
exit $status
