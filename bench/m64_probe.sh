#!/usr/bin/env bash
# The 8-bit GEMMs at M = 1-64 (bench/m64_probe.py): times with the swap-AB kernel's K split
# as chosen and forced to 1-4, then ncu's view of the swap-AB and Triton kernels at
# 1 x 4096 x 4096 and 64 x 4096 x 4096. Run from the repo root after the build:
#   bash bench/m64_probe.sh [OUTDIR]
set -u
OUTDIR=${1:-${OUT:-./gpu_out}}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
for s in "" 1 2 3 4; do
  LOWBIT_SWAPAB_SPLIT=$s timeout 150 $PY bench/m64_probe.py ${SHAPES:+--shapes $SHAPES} \
    >>"$OUTDIR/m64_times.log" 2>&1
done
timeout 200 ncu --clock-control none -k regex:'swapab|fp8_gemm|int8_gemm|nvjet|gemm' \
  --section SpeedOfLight --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis \
  $PY bench/m64_probe.py --once --kernels swapab,triton --shapes 1x4096x4096,64x4096x4096 \
  >"$OUTDIR/m64_ncu.log" 2>&1
echo "ncu rc $?" >>"$OUTDIR/m64_ncu.log"
