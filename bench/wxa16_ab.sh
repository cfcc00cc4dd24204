#!/usr/bin/env bash
# A/B the decode kernels of csrc/wxa16/wxa16_gemm.cuh on a GPU machine, in one process each,
# without building the package (bench/wxa16_ab.cu says what is timed):
#   bash bench/wxa16_ab.sh VARIANT[:FLAGS] ...
# VARIANT: "tree" (this tree's csrc), or a folder holding wxa16/wxa16_gemm.cuh (a copy to
# compare, e.g. `git show REV:csrc/wxa16/wxa16_gemm.cuh`), found before csrc on the include
# path; FLAGS: comma-separated nvcc flags for that build (e.g. -DNAME=1 for a switch the
# copy reads; -DAB_WIDE, -DAB_WGMMA and -DLOWBIT_WXA16_TRACE: see wxa16_ab.cu). Builds every
# variant in parallel (about 20 s), then runs them in turn; prints each build's kernel
# registers and spills (decode, wide or wgmma), then the timings. ARCH (default sm_90a).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
CSRC=$HERE/../csrc
ARCH=${ARCH:-sm_90a}
TMP=$(mktemp -d)
# The bf16 baseline ($BF16, see wxa16_ab.cu) where the toolkit has cuBLAS.
BLAS=()
echo '#include <cublas_v2.h>' | nvcc -E -x cu - >/dev/null 2>&1 && BLAS=(-DWITH_CUBLAS -lcublas)
i=0
for v in "$@"; do
  dir=${v%%:*}; flags=""; [ "$v" != "$dir" ] && flags=$(echo "${v#*:}" | tr ',' ' ')
  inc=(); [ "$dir" != tree ] && inc=(-I"$dir")
  # shellcheck disable=SC2086
  nvcc -std=c++17 -O3 -arch="$ARCH" "${inc[@]}" -I"$CSRC" $flags -Xptxas -v \
    -o "$TMP/ab$i" "$HERE/wxa16_ab.cu" "${BLAS[@]}" >"$TMP/ab$i.log" 2>&1 || echo "build of $v failed (log: $TMP/ab$i.log)" &
  i=$((i + 1))
done
wait
i=0
for v in "$@"; do
  echo "== $v: $(grep -A3 'Compiling entry.*\(decode\|wgmma\)_kernel' "$TMP/ab$i.log" | awk '
    /bytes spill stores/ {n++; s = $5 + 0; if (s > 0) spilled++; if (s > ms) ms = s}
    /Used [0-9]+ registers/ {for (j = 1; j <= NF; j++) if ($j == "Used" && $(j + 1) + 0 > mr) mr = $(j + 1) + 0}
    END {printf "%d kernels, at most %d registers, %d spill (at most %d bytes)", n, mr, spilled, ms}')"
  [ -x "$TMP/ab$i" ] && "$TMP/ab$i" "$v"
  i=$((i + 1))
done
