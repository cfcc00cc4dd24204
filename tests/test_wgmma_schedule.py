"""The sm_90a wgmma FP8 GEMM's ping-pong schedule (LOWBIT_WGMMA_SCHEDULE=pingpong,
csrc/common/sm90_gemm_wgmma.cuh) against the cooperative one: each output element is summed
in the same order by both (the same steps, promoted in the same order, the same epilogue), so
every output must agree bit for bit, for both scale modes, every out dtype, with and without
bias, on TMA-stored and directly stored outputs; and meet the SPEC's tolerance against the
reference. The variable is read once per process, so each schedule runs in a process of its
own (tests/wgmma_schedule_child.py), which also reports the kernel instantiation it launched.
Only 16-bit outputs of promoted (not fast_accum) per-row or per-tensor GEMMs have the ping-pong
schedule: the fp32 and fast_accum keys run the cooperative kernel in both processes."""
import os
import re
import subprocess
import sys

import pytest
import torch

import lowbit
from lowbit.backends.cuda import kernel_id
from lowbit_testing import GEMM_TOL, fp8_gemm_operands, rel_fro

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(schedule, tmp_path):
    path = tmp_path / f"{schedule or 'cooperative'}.pt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    env.pop("LOWBIT_WGMMA_SCHEDULE", None)
    if schedule:
        env["LOWBIT_WGMMA_SCHEDULE"] = schedule
    proc = subprocess.run([sys.executable, os.path.join(HERE, "wgmma_schedule_child.py"),
                           str(path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(path)


@pytest.mark.gpu
@pytest.mark.skipif(kernel_id("sm90_fp8_gemm_wgmma") is None,
                    reason="lowbit._C built without the sm_90a kernels")
def test_pingpong_gives_the_bits_of_the_cooperative_schedule(tmp_path):
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the wgmma GEMM runs on sm_90a")
    coop, ping = _run(None, tmp_path), _run("pingpong", tmp_path)
    assert _schedules(coop.pop("kernels")) == ["false"]
    assert _schedules(ping.pop("kernels")) == ["true"]
    assert coop.keys() == ping.keys()
    for key, want in coop.items():
        assert torch.equal(ping[key], want), key
    from wgmma_schedule_child import SHAPES
    for m, n, k in SHAPES:
        for mode in ("tensor", "row"):
            a, b, sa, sb = fp8_gemm_operands(m, n, k, mode, "cpu", seed=m + n + k)
            ref = lowbit.fp8_scaled_mm(a, b, sa, sb, out_dtype=torch.float32,
                                       backend="reference")
            for dtype in (torch.bfloat16, torch.float16):
                got = ping[f"{m}x{n}x{k}/{mode}/{dtype}/False"]
                assert rel_fro(got, ref) <= GEMM_TOL[dtype], (m, n, k, mode, dtype)


def _schedules(names):
    """The last template argument (kPing) of each wgmma kernel name: "true" or "false", from
    the demangled name (..., 2, false, true>) or the mangled one (...ELb0ELb1EE...)."""
    got = []
    for name in names:
        demangled = re.search(r"sm90_gemm_wgmma_kernel<([^>]*)>", name)
        if demangled:
            got.append(demangled.group(1).split(",")[-1].strip())
        else:
            mangled = re.search(r"Lb([01])EEEv", name)
            got.append({"0": "false", "1": "true"}[mangled.group(1)] if mangled else name)
    return got
