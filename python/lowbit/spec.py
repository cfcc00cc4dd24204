"""The SPEC's op list, shared by the package and its tests.

``SIGNATURES`` is the op block of the SPEC ("## Ops"), line for line: the tests check that
every op it names is a public function of ``lowbit`` and a registered
``torch.ops.lowbit`` op, and (where the SPEC file is at hand) that this block still matches
the SPEC. An op the SPEC names that is not built yet is listed in ``PENDING`` with the issue
that builds it; its coverage tests are expected to fail until then.
"""
from __future__ import annotations

from typing import Dict, Tuple

SIGNATURES = """\
quantize_fp8(x, scale=None, *, fmt="e4m3fn", granularity="tensor", saturate=True) -> (q, scale)
dequantize_fp8(q, scale, *, out_dtype=torch.bfloat16) -> x
quantize_int8(x, scale=None, *, granularity="token", symmetric=True) -> (q, scale, zero)
dequantize_int8(q, scale, zero=None, *, out_dtype=torch.bfloat16) -> x
int8_mm(a, b) -> int32 [M, N], exact for K < 131072
int8_gemm(a, b, a_scale, b_scale, bias=None, *, out_dtype=torch.bfloat16, a_zero=None)
fp8_scaled_mm(a, b, a_scale, b_scale, bias=None, *, out_dtype=torch.bfloat16, fast_accum=False)
int4_quantize(w, *, group_size=128, symmetric=True) -> Int4Weight
w4a16_gemm(x, w: Int4Weight, bias=None) -> [M, N] in x's dtype
w8a16_gemm(x, w, w_scale, bias=None) -> [M, N] in x's dtype
"""

OPS: Tuple[str, ...] = tuple(line.split("(", 1)[0] for line in SIGNATURES.splitlines())

# Ops beyond the SPEC's list: a quantized module's forward as one op (one dispatcher crossing
# per layer in a compiled graph), composed of SPEC ops -> what it computes.
MODULE_OPS: Dict[str, str] = {
    "fp8_linear": "quantize_fp8 (per token, or per tensor with a static scale), then "
                  "fp8_scaled_mm (per-channel weight scales): Fp8Linear's W8A8 forward",
    "int8_linear": "quantize_int8 (per token, or per tensor with a static scale and zero "
                   "point; symmetric or not), then int8_gemm (per-channel weight scales, the "
                   "zero-point correction): Int8Linear's W8A8 forward",
}

# SPEC ops not built yet -> the issue that builds them.
PENDING: Dict[str, str] = {}
