"""The CUDA programs under bench/ still build against csrc/: bench/wxa16_ab.cu (the
weight-only kernels' A/B harness, which includes the kernels' headers and the sm_90a
kernel's source, in its decode and wgmma forms, each also with its phase trace) and bench/racecheck_mbarrier.cu (the
racecheck probe bench/sanitize.sh's hazard filter rests on). A change to a kernel's
internals that breaks them shows here instead of on the next GPU machine. Compiled only
(no link, no GPU); skips without nvcc.
"""
import os
import shutil
import subprocess

import pytest

NVCC = shutil.which("nvcc")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(NVCC is None, reason="needs nvcc")


@pytest.mark.parametrize("program,flags", [
    ("wxa16_ab.cu", []),
    ("wxa16_ab.cu", ["-DAB_WGMMA"]),
    ("wxa16_ab.cu", ["-DLOWBIT_WXA16_DECODE_TRACE"]),
    ("wxa16_ab.cu", ["-DAB_WGMMA", "-DLOWBIT_WXA16_TRACE"]),
    ("racecheck_mbarrier.cu", ["-DLOWBIT_SM90A"]),
], ids=["wxa16_ab-decode", "wxa16_ab-wgmma", "wxa16_ab-decode-trace", "wxa16_ab-wgmma-trace",
        "racecheck_mbarrier"])
def test_bench_program_builds(program, flags, tmp_path):
    cmd = [NVCC, "-std=c++17", "-O1", "-arch=sm_90a", "-I" + os.path.join(ROOT, "csrc"),
           *flags, "-c", "-o", str(tmp_path / "out.o"), os.path.join(ROOT, "bench", program)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
