"""Run by tests/test_swapab_forms.py in a process of its own, under LOWBIT_SWAPAB_ROWS (read
once per process): the M = 33..64 GEMMs of the CUDA backend in the form that variable forces,
saved to the path given, and the fused linear forward checked against quantize-then-GEMM
here (it must run the same form). Not a test module: pytest does not collect it."""
import sys

import torch
from torch import nn

import lowbit
from lowbit.nn import Fp8Linear, Int8Linear
from lowbit_testing import fp8_gemm_operands

# M = 33..64 on weights whose tiles are whole, ragged (N = 100, 3000), one tile, many tiles
# per CTA (28672: the CTAs stride), a K split and none (K = 144), K ending mid-step (4112).
SHAPES = [(33, 4096, 4096), (64, 4096, 4112), (48, 14336, 1024), (64, 3000, 144),
          (40, 100, 4096), (64, 28672, 1152), (57, 6144, 2048)]


def gemms():
    out = {}
    g = torch.Generator(device="cuda").manual_seed(0)
    for m, n, k in SHAPES:
        name = f"{m}x{n}x{k}"
        qa = torch.randint(-128, 128, (m, k), device="cuda", generator=g, dtype=torch.int8)
        qb = torch.randint(-128, 128, (n, k), device="cuda", generator=g, dtype=torch.int8)
        sa = torch.rand(m, 1, device="cuda", generator=g) + 0.5
        sb = torch.rand(n, 1, device="cuda", generator=g) + 0.5
        bias = torch.randn(n, device="cuda", generator=g).to(torch.bfloat16)
        zero = torch.randint(-20, 20, (m, 1), device="cuda", generator=g, dtype=torch.int32)
        out[f"int8_mm/{name}"] = lowbit.int8_mm(qa, qb, backend="cuda")
        out[f"int8_gemm/{name}"] = lowbit.int8_gemm(qa, qb, sa, sb, bias, backend="cuda")
        out[f"int8_gemm_zero/{name}"] = lowbit.int8_gemm(qa, qb, sa, sb, None, a_zero=zero,
                                                         out_dtype=torch.float32,
                                                         backend="cuda")
        for mode in ("tensor", "row"):
            a, b, fa, fb = fp8_gemm_operands(m, n, k, mode, "cuda")
            for fast in (False, True):
                out[f"fp8/{mode}/{fast}/{name}"] = lowbit.fp8_scaled_mm(
                    a, b, fa, fb, out_dtype=torch.float32, fast_accum=fast, backend="cuda")
    return out


def fused_mismatches():
    """M values at which the fused forward differs from quantize-then-GEMM (must be none)."""
    bad = []
    for k, n in ((4096, 4096), (1024, 14336)):
        lin = nn.Linear(k, n).to("cuda", torch.bfloat16)
        for mod, family in ((Fp8Linear.from_linear(lin), "fp8"),
                            (Int8Linear.from_linear(lin, act_symmetric=True), "int8")):
            for m in (33, 47, 64):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                y = mod(x)
                if family == "fp8":
                    q, s = lowbit.quantize_fp8(x, granularity="token")
                    ref = lowbit.fp8_scaled_mm(q, mod.weight, s, mod.weight_scale, mod.bias,
                                               out_dtype=x.dtype)
                else:
                    q, s, _ = lowbit.quantize_int8(x, granularity="token", symmetric=True)
                    ref = lowbit.int8_gemm(q, mod.weight, s, mod.weight_scale, mod.bias,
                                           out_dtype=x.dtype)
                if not torch.equal(y, ref):
                    bad.append(f"{family} {m}x{n}x{k}")
    return bad


if __name__ == "__main__":
    results = gemms()
    results["fused_mismatches"] = fused_mismatches()
    torch.save(results, sys.argv[1])
