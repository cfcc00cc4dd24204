"""The two forms of the swap-AB GEMM at M = 33..64 (csrc/common/sm90_gemm_swapab.cuh, Form):
the swapped 128-row tile, and tokens as A with 112 or 96 weight rows per tile (INT8's 112
rows as an n = 32 and an n = 24 wgmma, s8 having no n = 56). The host picks the form per
shape; LOWBIT_SWAPAB_ROWS forces one, read once per process, so each form runs in a process
of its own (tests/swapab_forms_child.py). INT8's int32 sums do
not depend on the form: its outputs must agree bit for bit across forms; FP8's must meet the
SPEC's tolerance against the reference in every form; in every form the fused linear
forward must equal quantize-then-GEMM bit for bit (it runs the form the GEMM runs)."""
import os
import subprocess
import sys

import pytest
import torch

import lowbit
from lowbit_testing import GEMM_TOL, fp8_gemm_operands, rel_fro

HERE = os.path.dirname(os.path.abspath(__file__))


def _run_form(rows, tmp_path):
    path = tmp_path / f"rows{rows}.pt"
    env = dict(os.environ, LOWBIT_SWAPAB_ROWS=str(rows), LOWBIT_FUSED_QUANT="1",
               PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "swapab_forms_child.py"),
                           str(path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(path)


@pytest.mark.gpu
def test_swapab_forms_agree(tmp_path):
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the swap-AB GEMM runs on sm_90a")
    forms = {rows: _run_form(rows, tmp_path) for rows in (128, 112, 96)}
    for rows, res in forms.items():
        assert res.pop("fused_mismatches") == [], f"rows {rows}"
    base = forms[128]
    for rows in (112, 96):
        for key, want in base.items():
            if key.startswith("int8"):
                assert torch.equal(forms[rows][key], want), f"{key}, rows {rows}"
    # FP8 against the float64 reference in every form (the child's operands: the same
    # seeded CPU generator).
    from swapab_forms_child import SHAPES
    for m, n, k in SHAPES:
        for mode in ("tensor", "row"):
            a, b, fa, fb = fp8_gemm_operands(m, n, k, mode, "cpu")
            ref = lowbit.fp8_scaled_mm(a, b, fa, fb, out_dtype=torch.float32,
                                       backend="reference")
            for rows, res in forms.items():
                for fast in (False, True):
                    got = res[f"fp8/{mode}/{fast}/{m}x{n}x{k}"]
                    assert rel_fro(got, ref) <= GEMM_TOL[torch.float32], \
                        f"{mode} fast_accum={fast} {m}x{n}x{k}, rows {rows}"
