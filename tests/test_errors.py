"""Bad input -> ValueError or TypeError whose message names the argument, what it got and
what it needs (the SPEC's error classes), for every op; plus the reference's own checks.

Tensors on different devices are simulated with the 'meta' device next to 'cpu'.
"""
import re

import numpy as np
import pytest
import torch

import lowbit
from lowbit import Int4Weight
from lowbit import reference as R
from lowbit.spec import OPS as SPEC_OPS, PENDING
from lowbit_testing import spec_op_params

F8 = torch.float8_e4m3fn
META = "meta"


def g(seed=0):
    return torch.Generator().manual_seed(seed)


X = torch.randn(4, 256, generator=g())
XB = X.bfloat16()
Q8, S8 = lowbit.quantize_fp8(X)  # per tensor
QT, ST = lowbit.quantize_fp8(X, granularity="token")  # [4, 1]
QI, SI, _ = lowbit.quantize_int8(X)  # [4, 1]
QA, SA, ZA = lowbit.quantize_int8(X, symmetric=False)
A = torch.randint(-128, 128, (4, 256), generator=g(1), dtype=torch.int8)
B = torch.randint(-128, 128, (3, 256), generator=g(2), dtype=torch.int8)
FA, FB = X.to(F8), torch.randn(3, 256, generator=g(3)).to(F8)
ONE = torch.tensor(1.0)
W = torch.randn(8, 256, generator=g(4))
IW = lowbit.int4_quantize(W, group_size=64, symmetric=False)  # scales [8, 4]
qw, sw, zw = IW.qweight, IW.scales, IW.zeros
W8, W8S, _ = lowbit.quantize_int8(W, granularity="channel")  # int8 [8, 256], [8, 1]
_, W8G, _ = lowbit.quantize_int8(W, granularity="group", group_size=64)  # [8, 4]


def iw(qweight=qw, scales=sw, zeros=zw, group_size=64, perm=None):
    return Int4Weight(qweight, scales, zeros, group_size, perm)


def m(t):
    return t.to(META)


E = pytest.param  # (callable, exception type, regex the message must match)
CASES = [
    # ------------------------------------------------------------------ quantize_fp8
    E(lambda: lowbit.quantize_fp8(X.int()), TypeError,
      r"quantize_fp8: x must have dtype float32, bfloat16, float16; got torch\.int32",
      id="quantize_fp8-x-dtype"),
    E(lambda: lowbit.quantize_fp8(X.double()), TypeError, r"x must have dtype .*float64",
      id="quantize_fp8-x-float64"),
    E(lambda: lowbit.quantize_fp8(X, fmt="e4m3"), ValueError,
      r"fmt must be one of \['e4m3fn', 'e4m3fnuz', 'e5m2'\]; got 'e4m3'", id="quantize_fp8-fmt"),
    E(lambda: lowbit.quantize_fp8(X, granularity="row"), ValueError,
      r"granularity must be one of .*'block'\); got 'row'", id="quantize_fp8-granularity"),
    E(lambda: lowbit.quantize_fp8(X[:, :96], granularity="group", group_size=64), ValueError,
      r"K = x.shape\[-1\] = 96 must be divisible by group_size = 64",
      id="quantize_fp8-group-divisibility"),
    E(lambda: lowbit.quantize_fp8(X, granularity="group", group_size=16), ValueError,
      r"group_size must be one of \(32, 64, 128\); got 16", id="quantize_fp8-group_size"),
    E(lambda: lowbit.quantize_fp8(X, ONE, granularity="token"), ValueError,
      r"scale must have shape \(4, 1\) for granularity='token'; got \(\)",
      id="quantize_fp8-scale-shape"),
    E(lambda: lowbit.quantize_fp8(X, torch.ones(1, 2), granularity="block", block=(1, 128)),
      ValueError, r"scale must have shape \(4, 2\) for granularity='block'; got \(1, 2\)",
      id="quantize_fp8-block-scale-shape"),
    E(lambda: lowbit.quantize_fp8(X, ONE.double()), TypeError,
      r"scale must have dtype float32; got torch\.float64", id="quantize_fp8-scale-dtype"),
    E(lambda: lowbit.quantize_fp8(X, ONE.bfloat16()), TypeError,
      r"scale must have dtype float32; got torch\.bfloat16", id="quantize_fp8-scale-bf16"),
    E(lambda: lowbit.quantize_fp8(X.reshape(2, 2, 256), granularity="block"), ValueError,
      r"x must be 2-D \[M, K\] for granularity='block'; got shape \(2, 2, 256\)",
      id="quantize_fp8-block-rank"),
    E(lambda: lowbit.quantize_fp8(X.reshape(2, 2, 256), granularity="channel"), ValueError,
      r"x must be 2-D \[N, K\] for granularity='channel'; got shape \(2, 2, 256\)",
      id="quantize_fp8-channel-rank"),
    E(lambda: lowbit.quantize_fp8(X, granularity="block", block=(64, 64)), ValueError,
      r"block must be \(128, 128\) or \(1, 128\); got \(64, 64\)", id="quantize_fp8-block"),
    E(lambda: lowbit.quantize_fp8(m(X), ONE), ValueError,
      r"all tensors must be on one device; x is on meta but scale is on cpu",
      id="quantize_fp8-devices"),
    E(lambda: lowbit.quantize_fp8(X, backend="cuda"), ValueError,
      r"quantize_fp8: backend='cuda' needs CUDA tensors; got tensors on cpu",
      id="quantize_fp8-backend-cuda"),
    E(lambda: lowbit.quantize_fp8(X, backend="cpu"), ValueError,
      r"backend must be one of \('auto', 'cuda', 'triton', 'reference'\); got 'cpu'",
      id="quantize_fp8-backend-name"),
    # ---------------------------------------------------------------- dequantize_fp8
    E(lambda: lowbit.dequantize_fp8(QI, SI), TypeError,
      r"dequantize_fp8: q must have dtype float8_e4m3fn, float8_e5m2, float8_e4m3fnuz; "
      r"got torch\.int8", id="dequantize_fp8-q-dtype"),
    E(lambda: lowbit.dequantize_fp8(QT, torch.ones(3, 1)), ValueError,
      r"scale must be 0-D \(per tensor\).* for q of shape \(4, 256\); got \(3, 1\)",
      id="dequantize_fp8-scale-shape"),
    E(lambda: lowbit.dequantize_fp8(QT, torch.ones(4, 3)), ValueError,
      r"scale must be .*got \(4, 3\)", id="dequantize_fp8-scale-cols"),
    E(lambda: lowbit.dequantize_fp8(Q8, S8.half()), TypeError,
      r"scale must have dtype float32; got torch\.float16", id="dequantize_fp8-scale-dtype"),
    E(lambda: lowbit.dequantize_fp8(Q8, S8, out_dtype=torch.int8), TypeError,
      r"out_dtype must be one of bfloat16, float16, float32; got torch\.int8",
      id="dequantize_fp8-out_dtype"),
    E(lambda: lowbit.dequantize_fp8(Q8, S8, out_dtype=torch.float64), TypeError,
      r"out_dtype must be one of .*; got torch\.float64", id="dequantize_fp8-out_float64"),
    E(lambda: lowbit.dequantize_fp8(Q8, m(S8)), ValueError,
      r"q is on cpu but scale is on meta", id="dequantize_fp8-devices"),
    E(lambda: lowbit.dequantize_fp8(Q8, S8, backend="triton"), ValueError,
      r"backend='triton' needs CUDA tensors; got tensors on cpu",
      id="dequantize_fp8-backend-triton"),
    # ----------------------------------------------------------------- quantize_int8
    E(lambda: lowbit.quantize_int8(A), TypeError,
      r"quantize_int8: x must have dtype float32, bfloat16, float16; got torch\.int8",
      id="quantize_int8-x-dtype"),
    E(lambda: lowbit.quantize_int8(X, SI, zero=ZA), ValueError,
      r"zero must be None when symmetric=True", id="quantize_int8-zero-symmetric"),
    E(lambda: lowbit.quantize_int8(X, SA, symmetric=False), ValueError,
      r"zero is required with a static scale when symmetric=False",
      id="quantize_int8-asym-static-no-zero"),
    E(lambda: lowbit.quantize_int8(X, zero=ZA, symmetric=False), ValueError,
      r"zero needs a static scale; got scale=None", id="quantize_int8-zero-no-scale"),
    E(lambda: lowbit.quantize_int8(X, SA, zero=ZA.long(), symmetric=False), TypeError,
      r"zero must have dtype int32; got torch\.int64", id="quantize_int8-zero-dtype"),
    E(lambda: lowbit.quantize_int8(X, SA, zero=ZA[:2], symmetric=False), ValueError,
      r"zero must have shape \(4, 1\) \(the scale's\); got \(2, 1\)",
      id="quantize_int8-zero-shape"),
    E(lambda: lowbit.quantize_int8(X, SI[:2]), ValueError,
      r"scale must have shape \(4, 1\) for granularity='token'; got \(2, 1\)",
      id="quantize_int8-scale-shape"),
    E(lambda: lowbit.quantize_int8(X, SI.double()), TypeError,
      r"scale must have dtype float32; got torch\.float64", id="quantize_int8-scale-dtype"),
    E(lambda: lowbit.quantize_int8(X[:, :200], granularity="group", group_size=128),
      ValueError, r"K = x.shape\[-1\] = 200 must be divisible by group_size = 128",
      id="quantize_int8-group-divisibility"),
    E(lambda: lowbit.quantize_int8(X, granularity="per_token"), ValueError,
      r"granularity must be one of .*; got 'per_token'", id="quantize_int8-granularity"),
    E(lambda: lowbit.quantize_int8(X, SA, zero=m(ZA), symmetric=False), ValueError,
      r"x is on cpu but zero is on meta", id="quantize_int8-devices"),
    E(lambda: lowbit.quantize_int8(X, backend="cuda"), ValueError,
      r"backend='cuda'", id="quantize_int8-backend-cuda"),
    # --------------------------------------------------------------- dequantize_int8
    E(lambda: lowbit.dequantize_int8(QI.view(torch.uint8), SI), TypeError,
      r"dequantize_int8: q must have dtype int8; got torch\.uint8",
      id="dequantize_int8-q-dtype"),
    E(lambda: lowbit.dequantize_int8(QI, SI.t()), ValueError,
      r"scale must be .*for q of shape \(4, 256\); got \(1, 4\)",
      id="dequantize_int8-scale-shape"),
    E(lambda: lowbit.dequantize_int8(QI, SI.half()), TypeError,
      r"scale must have dtype float32; got torch\.float16", id="dequantize_int8-scale-dtype"),
    E(lambda: lowbit.dequantize_int8(QA, SA, ZA[:1]), ValueError,
      r"zero must have shape \(4, 1\) \(the scale's\); got \(1, 1\)",
      id="dequantize_int8-zero-shape"),
    E(lambda: lowbit.dequantize_int8(QA, SA, ZA.to(torch.int8)), TypeError,
      r"zero must have dtype int32; got torch\.int8", id="dequantize_int8-zero-dtype"),
    E(lambda: lowbit.dequantize_int8(QI, SI, out_dtype=torch.int32), TypeError,
      r"out_dtype must be one of .*; got torch\.int32", id="dequantize_int8-out_dtype"),
    E(lambda: lowbit.dequantize_int8(m(QI), SI), ValueError,
      r"q is on meta but scale is on cpu", id="dequantize_int8-devices"),
    # ------------------------------------------------------------------------ int8_mm
    E(lambda: lowbit.int8_mm(X, B), TypeError,
      r"int8_mm: a must have dtype int8; got torch\.float32", id="int8_mm-a-dtype"),
    E(lambda: lowbit.int8_mm(A, B.view(torch.uint8)), TypeError,
      r"b must have dtype int8; got torch\.uint8", id="int8_mm-b-dtype"),
    E(lambda: lowbit.int8_mm(A[0], B), ValueError,
      r"a must be 2-D \[M, K\]; got shape \(256,\)", id="int8_mm-a-rank"),
    E(lambda: lowbit.int8_mm(A, B.reshape(3, 2, 128)), ValueError,
      r"b must be 2-D \[N, K\] \(the nn.Linear.weight layout\); got shape \(3, 2, 128\)",
      id="int8_mm-b-rank"),
    E(lambda: lowbit.int8_mm(A, B[:, :128]), ValueError,
      r"a and b must share K; got a \[M, K\] = \(4, 256\) and b \[N, K\] = \(3, 128\)",
      id="int8_mm-K"),
    E(lambda: lowbit.int8_mm(torch.zeros(1, 131072, dtype=torch.int8),
                             torch.zeros(1, 131072, dtype=torch.int8)), ValueError,
      r"K must be below 131072 for an exact int32 accumulation; got K = 131072", id="int8_mm-K-max"),
    E(lambda: lowbit.int8_mm(m(A), B), ValueError, r"a is on meta but b is on cpu",
      id="int8_mm-devices"),
    E(lambda: lowbit.int8_mm(None, B), TypeError, r"a must be a torch.Tensor; got NoneType",
      id="int8_mm-a-none"),
    E(lambda: lowbit.int8_mm(A, B, backend="cuda"), ValueError,
      r"int8_mm: backend='cuda'", id="int8_mm-backend-cuda"),
    # ---------------------------------------------------------------------- int8_gemm
    E(lambda: lowbit.int8_gemm(A, B, torch.ones(3, 1), ONE), ValueError,
      r"int8_gemm: a_scale must have shape \(\) or \[M, 1\] = \(4, 1\); got \(3, 1\)",
      id="int8_gemm-a_scale-shape"),
    E(lambda: lowbit.int8_gemm(A, B, ONE, torch.ones(1, 3)), ValueError,
      r"b_scale must have shape \(\) or \[N, 1\] = \(3, 1\); got \(1, 3\)",
      id="int8_gemm-b_scale-shape"),
    E(lambda: lowbit.int8_gemm(A, B, ONE.double(), ONE), TypeError,
      r"a_scale must have dtype float32; got torch\.float64", id="int8_gemm-a_scale-dtype"),
    E(lambda: lowbit.int8_gemm(A, B, ONE, ONE, torch.zeros(4)), ValueError,
      r"bias must have shape \[N\] = \(3,\); got \(4,\)", id="int8_gemm-bias-shape"),
    E(lambda: lowbit.int8_gemm(A, B, ONE, ONE, torch.zeros(3, dtype=torch.int32)), TypeError,
      r"bias must have dtype float32, bfloat16, float16; got torch\.int32",
      id="int8_gemm-bias-dtype"),
    E(lambda: lowbit.int8_gemm(A, B, ONE, ONE, a_zero=torch.zeros(4, 1, dtype=torch.int64)),
      TypeError, r"a_zero must have dtype int32; got torch\.int64", id="int8_gemm-a_zero-dtype"),
    E(lambda: lowbit.int8_gemm(A, B, ONE, ONE, a_zero=torch.zeros(4, dtype=torch.int32)),
      ValueError, r"a_zero must have shape \(\) or \[M, 1\] = \(4, 1\); got \(4,\)",
      id="int8_gemm-a_zero-shape"),
    E(lambda: lowbit.int8_gemm(A, B, ONE, ONE, out_dtype=torch.int32), TypeError,
      r"out_dtype must be one of .*; got torch\.int32", id="int8_gemm-out_dtype"),
    E(lambda: lowbit.int8_gemm(A, B[:, :8], ONE, ONE), ValueError, r"a and b must share K",
      id="int8_gemm-K"),
    E(lambda: lowbit.int8_gemm(A, B, ONE, ONE, m(torch.zeros(3))), ValueError,
      r"a is on cpu but bias is on meta", id="int8_gemm-devices"),
    # ------------------------------------------------------------------ fp8_scaled_mm
    E(lambda: lowbit.fp8_scaled_mm(A, FB, ONE, ONE), TypeError,
      r"fp8_scaled_mm: a must have dtype float8_e4m3fn, float8_e5m2, float8_e4m3fnuz; got "
      r"torch\.int8", id="fp8_scaled_mm-a-dtype"),
    E(lambda: lowbit.fp8_scaled_mm(FA, FB.float().to(torch.float8_e4m3fnuz), ONE, ONE),
      TypeError, r"fp8_scaled_mm: a and b must both be float8_e4m3fnuz or both OCP formats "
      r"\(float8_e4m3fn, float8_e5m2\); got a torch\.float8_e4m3fn and b "
      r"torch\.float8_e4m3fnuz", id="fp8_scaled_mm-b-fnuz"),
    E(lambda: lowbit.fp8_scaled_mm(FA, FB, torch.ones(4, 3), ONE), ValueError,
      r"a_scale must have shape \(\) per tensor, \[M, 1\] = \(4, 1\) per row, or "
      r"\[M, ceil\(K/128\)\] = \(4, 2\) per 1x128 block; got \(4, 3\)",
      id="fp8_scaled_mm-a_scale-shape"),
    E(lambda: lowbit.fp8_scaled_mm(FA, FB, ONE, torch.ones(3, 2)), ValueError,
      r"b_scale must have shape .*\[ceil\(N/128\), ceil\(K/128\)\] = \(1, 2\) per 128x128 "
      r"block; got \(3, 2\)", id="fp8_scaled_mm-b_scale-shape"),
    E(lambda: lowbit.fp8_scaled_mm(FA, FB, ONE, ONE.bfloat16()), TypeError,
      r"b_scale must have dtype float32; got torch\.bfloat16",
      id="fp8_scaled_mm-b_scale-dtype"),
    E(lambda: lowbit.fp8_scaled_mm(FA, FB[:, :128], ONE, ONE), ValueError,
      r"a and b must share K; got a \[M, K\] = \(4, 256\) and b \[N, K\] = \(3, 128\)",
      id="fp8_scaled_mm-K"),
    E(lambda: lowbit.fp8_scaled_mm(FA[None], FB, ONE, ONE), ValueError,
      r"a must be 2-D \[M, K\]; got shape \(1, 4, 256\)", id="fp8_scaled_mm-a-rank"),
    E(lambda: lowbit.fp8_scaled_mm(FA, FB, ONE, ONE, torch.zeros(3, 1)), ValueError,
      r"bias must have shape \[N\] = \(3,\); got \(3, 1\)", id="fp8_scaled_mm-bias-shape"),
    E(lambda: lowbit.fp8_scaled_mm(FA, FB, ONE, ONE, out_dtype=torch.float8_e4m3fn),
      TypeError, r"out_dtype must be one of .*; got torch\.float8_e4m3fn",
      id="fp8_scaled_mm-out_dtype"),
    E(lambda: lowbit.fp8_scaled_mm(FA, m(FB), ONE, ONE), ValueError,
      r"a is on cpu but b is on meta", id="fp8_scaled_mm-devices"),
    E(lambda: lowbit.fp8_scaled_mm(FA, FB, ONE, ONE, backend="cuda"), ValueError,
      r"fp8_scaled_mm: backend='cuda' needs CUDA tensors; got tensors on cpu",
      id="fp8_scaled_mm-backend-cuda"),
    # ------------------------------------------------------------------ int4_quantize
    E(lambda: lowbit.int4_quantize(A), TypeError,
      r"int4_quantize: w must have dtype float32, bfloat16, float16; got torch\.int8",
      id="int4_quantize-w-dtype"),
    E(lambda: lowbit.int4_quantize(W[0]), ValueError,
      r"w must be 2-D \[N, K\]; got shape \(256,\)", id="int4_quantize-w-rank"),
    E(lambda: lowbit.int4_quantize(W[:, :96], group_size=64), ValueError,
      r"K = w.shape\[1\] = 96 must be divisible by group_size = 64",
      id="int4_quantize-group-divisibility"),
    E(lambda: lowbit.int4_quantize(W, group_size=512), ValueError,
      r"group_size must be one of \(32, 64, 128\) or K = w.shape\[1\] \(per channel, a "
      r"multiple of 32\); got 512",
      id="int4_quantize-group_size"),
    E(lambda: lowbit.int4_quantize(W, backend="cuda"), ValueError,
      r"int4_quantize: backend='cuda'", id="int4_quantize-backend-cuda"),
    # --------------------------------------------------------------------- w4a16_gemm
    E(lambda: lowbit.w4a16_gemm(XB, W), TypeError,
      r"w4a16_gemm: w must be a lowbit.Int4Weight; got Tensor", id="w4a16_gemm-w-type"),
    E(lambda: lowbit.w4a16_gemm(A, IW), TypeError,
      r"w4a16_gemm: x must have dtype float32, bfloat16, float16; got torch\.int8",
      id="w4a16_gemm-x-dtype"),
    E(lambda: lowbit.w4a16_gemm(XB[None], IW), ValueError,
      r"x must be 2-D \[M, K\]; got shape \(1, 4, 256\)", id="w4a16_gemm-x-rank"),
    E(lambda: lowbit.w4a16_gemm(XB[:, :128], IW), ValueError,
      r"x and the weight must share K; got x \[M, K\] = \(4, 128\) and a weight of K = "
      r"2 \* qweight.shape\[1\] = 256", id="w4a16_gemm-K"),
    E(lambda: lowbit.w4a16_gemm(XB, iw(scales=sw[:, :1])), ValueError,
      r"scales must have shape \[N, K // G\] = \(8, 4\); got \(8, 1\)",
      id="w4a16_gemm-scales-shape"),
    E(lambda: lowbit.w4a16_gemm(XB, iw(scales=sw.int())), TypeError,
      r"scales must have dtype float32, bfloat16, float16; got torch\.int32",
      id="w4a16_gemm-scales-dtype"),
    E(lambda: lowbit.w4a16_gemm(XB, iw(zeros=zw.int())), TypeError,
      r"zeros must have dtype uint8; got torch\.int32", id="w4a16_gemm-zeros-dtype"),
    E(lambda: lowbit.w4a16_gemm(XB, iw(zeros=zw + 16)), ValueError,
      r"w4a16_gemm: zeros must lie in 0\.\.15 \(int4 zero points\); it holds \d+",
      id="w4a16_gemm-zeros-range"),
    E(lambda: lowbit.w4a16_gemm(XB, iw(zeros=zw[:4])), ValueError,
      r"zeros must have shape \[N, K // G\] = \(8, 4\); got \(4, 4\)",
      id="w4a16_gemm-zeros-shape"),
    E(lambda: lowbit.w4a16_gemm(XB, iw(qweight=qw.view(torch.int8))), TypeError,
      r"qweight must have dtype uint8; got torch\.int8", id="w4a16_gemm-qweight-dtype"),
    E(lambda: lowbit.w4a16_gemm(XB, iw(qweight=qw[0])), ValueError,
      r"qweight must be 2-D \[N, K // 2\]", id="w4a16_gemm-qweight-rank"),
    E(lambda: lowbit.w4a16_gemm(XB[:, :192], iw(qweight=qw[:, :96], group_size=128)),
      ValueError, r"K = 192 must be divisible by group_size = 128",
      id="w4a16_gemm-group-divisibility"),
    E(lambda: lowbit.w4a16_gemm(XB, iw(group_size=16)), ValueError,
      r"group_size must be one of \(32, 64, 128\) or K \(per channel, a multiple of 32\); "
      r"got 16",
      id="w4a16_gemm-group_size"),
    E(lambda: lowbit.w4a16_gemm(XB, iw(perm=torch.arange(128))), ValueError,
      r"perm must have shape \[K\] = \(256,\); got \(128,\)", id="w4a16_gemm-perm-shape"),
    E(lambda: lowbit.w4a16_gemm(XB, iw(perm=torch.arange(256).float())), TypeError,
      r"perm must have dtype int64, int32; got torch\.float32", id="w4a16_gemm-perm-dtype"),
    E(lambda: lowbit.w4a16_gemm(XB, IW, torch.zeros(7)), ValueError,
      r"bias must have shape \[N\] = \(8,\); got \(7,\)", id="w4a16_gemm-bias-shape"),
    E(lambda: lowbit.w4a16_gemm(m(XB), IW), ValueError,
      r"x is on meta but qweight is on cpu", id="w4a16_gemm-devices"),
    E(lambda: lowbit.w4a16_gemm(XB, IW, backend="cuda"), ValueError,
      r"w4a16_gemm: backend='cuda'", id="w4a16_gemm-backend-cuda"),
    # --------------------------------------------------------------------- w8a16_gemm
    E(lambda: lowbit.w8a16_gemm(A, W8, W8S), TypeError,
      r"w8a16_gemm: x must have dtype float32, bfloat16, float16; got torch\.int8",
      id="w8a16_gemm-x-dtype"),
    E(lambda: lowbit.w8a16_gemm(XB[None], W8, W8S), ValueError,
      r"w8a16_gemm: x must be 2-D \[M, K\]; got shape \(1, 4, 256\)", id="w8a16_gemm-x-rank"),
    E(lambda: lowbit.w8a16_gemm(XB, W8.float(), W8S), TypeError,
      r"w8a16_gemm: w must have dtype int8; got torch\.float32", id="w8a16_gemm-w-dtype"),
    E(lambda: lowbit.w8a16_gemm(XB, W8[0], W8S), ValueError,
      r"w8a16_gemm: w must be 2-D \[N, K\] .*; got shape \(256,\)", id="w8a16_gemm-w-rank"),
    E(lambda: lowbit.w8a16_gemm(XB[:, :128], W8, W8S), ValueError,
      r"w8a16_gemm: x and w must share K; got x \[M, K\] = \(4, 128\) and "
      r"w \[N, K\] = \(8, 256\)", id="w8a16_gemm-K"),
    E(lambda: lowbit.w8a16_gemm(XB, W8, W8S.double()), TypeError,
      r"w8a16_gemm: w_scale must have dtype float32; got torch\.float64",
      id="w8a16_gemm-w_scale-dtype"),
    E(lambda: lowbit.w8a16_gemm(XB, W8, W8S[:4]), ValueError,
      r"w8a16_gemm: w_scale must have shape \[N, 1\] = \(8, 1\) per channel or "
      r"\[N, K // G\] per group of G in \(32, 64, 128\) dividing K = 256; got \(4, 1\)",
      id="w8a16_gemm-w_scale-rows"),
    # G = 96 // 2 = 48 is no group size of the SPEC's.
    E(lambda: lowbit.w8a16_gemm(X[:, :96], W8[:, :96], torch.ones(8, 2)), ValueError,
      r"w8a16_gemm: w_scale must have shape .* dividing K = 96; got \(8, 2\)",
      id="w8a16_gemm-w_scale-group"),
    E(lambda: lowbit.w8a16_gemm(XB, W8, W8S.view(8)), ValueError,
      r"w8a16_gemm: w_scale must have shape .*; got \(8,\)", id="w8a16_gemm-w_scale-rank"),
    E(lambda: lowbit.w8a16_gemm(XB, W8, W8S, torch.zeros(7)), ValueError,
      r"w8a16_gemm: bias must have shape \[N\] = \(8,\); got \(7,\)",
      id="w8a16_gemm-bias-shape"),
    E(lambda: lowbit.w8a16_gemm(XB, W8, W8S, torch.zeros(8, dtype=torch.int32)), TypeError,
      r"w8a16_gemm: bias must have dtype float32, bfloat16, float16; got torch\.int32",
      id="w8a16_gemm-bias-dtype"),
    E(lambda: lowbit.w8a16_gemm(XB, m(W8), W8S), ValueError,
      r"w8a16_gemm: all tensors must be on one device; x is on cpu but w is on meta",
      id="w8a16_gemm-devices"),
    E(lambda: lowbit.w8a16_gemm(XB, W8, W8G, backend="cuda"), ValueError,
      r"w8a16_gemm: backend='cuda'", id="w8a16_gemm-backend-cuda"),
]


@pytest.mark.parametrize("call,exc,pattern", CASES)
def test_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        call()
    assert type(info.value) in (ValueError, TypeError)


@pytest.mark.parametrize("name", spec_op_params(SPEC_OPS, PENDING))
def test_every_spec_op_has_an_error_case(name):
    assert callable(getattr(lowbit, name, None)), f"lowbit.{name} is missing"
    assert name in {p.id.split("-")[0] for p in CASES}, f"no error case for {name}"


def test_errors_are_the_same_on_meta_tensors():
    """The fake impls run the same checks: meta tensors raise the same errors."""
    with pytest.raises(ValueError, match=r"a and b must share K"):
        lowbit.int8_mm(m(A), m(B[:, :8]))
    with pytest.raises(TypeError, match=r"scale must have dtype float32"):
        lowbit.quantize_fp8(m(X), m(ONE.double()))


def test_errors_under_torch_compile_keep_the_message():
    """Inside torch.compile the check runs in the fake impl; dynamo wraps the error in its
    own exception (a RuntimeError) but keeps lowbit's message."""
    f = torch.compile(lambda a, b: lowbit.int8_mm(a, b), fullgraph=True)
    with pytest.raises(Exception, match=r"a and b must share K; got a \[M, K\] = \(4, 256\)"):
        f(A, B[:, :128])


NAN, INF = torch.tensor(float("nan")), torch.tensor(float("inf"))
FINITE_CASES = [
    pytest.param(lambda bad: lowbit.quantize_fp8(X, bad), "quantize_fp8: scale", id="quantize_fp8"),
    pytest.param(lambda bad: lowbit.quantize_int8(X, bad.expand(4, 1).contiguous()),
                 "quantize_int8: scale", id="quantize_int8"),
    pytest.param(lambda bad: lowbit.int8_gemm(A, B, ONE, bad), "int8_gemm: b_scale",
                 id="int8_gemm"),
    pytest.param(lambda bad: lowbit.fp8_scaled_mm(FA, FB, bad, ONE), "fp8_scaled_mm: a_scale",
                 id="fp8_scaled_mm"),
    pytest.param(lambda bad: lowbit.w4a16_gemm(
        XB, iw(scales=torch.where(torch.arange(4) == 2, bad, sw))), "w4a16_gemm: scales",
        id="w4a16_gemm"),
    pytest.param(lambda bad: lowbit.w8a16_gemm(
        XB, W8, torch.where(torch.arange(4) == 1, bad, W8G)), "w8a16_gemm: w_scale",
        id="w8a16_gemm"),
]


@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("call,pattern", FINITE_CASES)
def test_non_finite_scales_are_refused(call, pattern, bad):
    with pytest.raises(ValueError, match=rf"{pattern} must be finite; it holds"):
        call(bad)


def test_dequantize_propagates_a_nan_scale():
    # Data holding a NaN quantizes with a NaN dynamic scale; its round trip stays NaN.
    q, s = lowbit.quantize_fp8(torch.tensor([[1.0, float("nan")]]))
    assert torch.isnan(s) and torch.isnan(lowbit.dequantize_fp8(q, s)).all()


def test_finite_scales_check_reads_gpu_values_only_when_asked(monkeypatch):
    calls = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: calls.append(t.device.type) or real(t))
    lowbit._checks.finite_scales("op", s=torch.empty(3, device="meta"))
    monkeypatch.setenv("LOWBIT_CHECK_SCALES", "1")
    lowbit._checks.finite_scales("op", s=torch.empty(3, device="meta"))  # meta: no values
    assert calls == []
    lowbit._checks.finite_scales("op", s=ONE)
    assert calls == ["cpu"]


def test_backend_env_var_is_checked(monkeypatch):
    monkeypatch.setenv("LOWBIT_BACKEND", "gpu0")
    with pytest.raises(ValueError, match=r"LOWBIT_BACKEND must be one of .*; got 'gpu0'"):
        lowbit.int8_mm(A, B)


def test_use_backend_is_checked():
    with pytest.raises(ValueError, match=r"backend must be one of .*; got 'fast'"):
        with lowbit.use_backend("fast"):
            pass


# --------------------------------------------------------------- the NumPy reference
def _i32(shape):
    return np.zeros(shape, np.int32)


REF_CASES = [
    E(lambda: R.fp8_encode(np.ones(2, np.float32), "fp8"), ValueError,
      r"fmt must be one of .*; got 'fp8'", id="fp8_encode-fmt"),
    E(lambda: R.fp8_decode(np.ones(2, np.int16), "e4m3fn"), TypeError,
      r"codes must be a uint8 array; got int16", id="fp8_decode-dtype"),
    E(lambda: R.pack_int4(np.zeros((2, 3), np.uint8)), ValueError,
      r"u must be \[N, K\] with K even; got shape \(2, 3\)", id="pack_int4-K-odd"),
    E(lambda: R.pack_int4(np.full((2, 4), 16, np.uint8)), ValueError,
      r"u must hold values in \[0, 15\]", id="pack_int4-range"),
    E(lambda: R.quantize_int4(np.zeros(64, np.float32)), ValueError,
      r"w must be 2-D \[N, K\]; got shape \(64,\)", id="quantize_int4-rank"),
    E(lambda: R.quantize_int4(np.zeros((2, 96), np.float32), 64), ValueError,
      r"K \(96\) must be divisible by group_size \(64\)", id="quantize_int4-group"),
    E(lambda: R.dequantize_int4(np.zeros((2, 32), np.uint8), np.ones((2, 1), np.float32),
                                None, 32), ValueError,
      r"scales/zeros must be \[N, K // G\] = \(2, 2\); got \(2, 1\)",
      id="dequantize_int4-scales"),
    E(lambda: R.round_scale(np.ones(2, np.float32), "float64"), ValueError,
      r"scale dtype must be float32, float16 or bfloat16; got 'float64'", id="round_scale"),
    E(lambda: R.import_awq(_i32((64, 1)), _i32((1, 1)), np.ones((2, 8), np.float32), 32),
      ValueError, r"AWQ qzeros must be \[K/G, N/8\] = \(2, 1\) and scales \[K/G, N\] = "
      r"\(2, 8\); got \(1, 1\) and \(2, 8\)", id="import_awq-qzeros"),
    E(lambda: R.import_gptq(_i32((8, 8)), _i32((2, 1)), np.ones((2, 8), np.float32),
                            group_size=32, version=3), ValueError,
      r"version must be 1 or 2; got 3", id="import_gptq-version"),
    E(lambda: R.import_gptq(_i32((8, 8)), _i32((2, 1)), np.ones((2, 8), np.float32),
                            np.zeros(32, np.int32), group_size=32), ValueError,
      r"g_idx must be \[K\] = \(64,\); got \(32,\)", id="import_gptq-g_idx"),
    E(lambda: R.import_gptq(_i32((8, 8)), _i32((2, 1)), np.ones((1, 8), np.float32),
                            group_size=32), ValueError,
      r"GPTQ qzeros must be .*got \(2, 1\) and \(1, 8\)", id="import_gptq-scales"),
    E(lambda: R.int8_mm(np.zeros((1, 131072), np.int8), np.zeros((1, 131072), np.int8)),
      ValueError, r"exact only for K < 131072; got K = 131072", id="int8_mm-K"),
    E(lambda: R.quantize_int8(np.ones((2, 4), np.float32), np.ones((2, 1), np.float32),
                              symmetric=False), ValueError,
      r"zero must be given with a static scale when symmetric=False", id="quantize_int8-zero"),
    E(lambda: R.expand_scale(np.ones((3, 5), np.float32), (4, 256)), ValueError,
      r"scale of shape \(3, 5\) does not fit an input of shape \(4, 256\)",
      id="expand_scale"),
    E(lambda: Int4Weight.from_gptq(torch.zeros(8, 8, dtype=torch.int32),
                                   torch.zeros(2, 1, dtype=torch.int32), torch.ones(2, 8),
                                   group_size=32, version=0), ValueError,
      r"version must be 1 or 2; got 0", id="Int4Weight.from_gptq-version"),
]


@pytest.mark.parametrize("call,exc,pattern", REF_CASES)
def test_reference_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# ------------------------------------------------------- values and arguments read closer
LIN = torch.nn.Linear(256, 8, bias=True)
LIN.weight.data = W.clone()


@pytest.mark.parametrize("bad", [0.0, -0.0, 1e-40, -3e-39], ids=["zero", "-zero", "tiny",
                                                                  "negative-subnormal"])
@pytest.mark.parametrize("call,pattern", [
    pytest.param(lambda s: lowbit.quantize_fp8(X, s), "quantize_fp8: scale", id="quantize_fp8"),
    pytest.param(lambda s: lowbit.quantize_int8(X, s.expand(4, 1).contiguous()),
                 "quantize_int8: scale", id="quantize_int8"),
    pytest.param(lambda s: lowbit.fp8_linear(XB, FB, ONE.expand(3, 1).contiguous(), None, s),
                 "fp8_linear: act_scale", id="fp8_linear"),
])
def test_static_quantization_scales_below_the_floor_are_refused(call, pattern, bad):
    # 1 / scale must be finite in every backend: every dynamic scale is at least 2^-126.
    with pytest.raises(ValueError, match=rf"{pattern} must have magnitude at least 2\^-126 "
                                         r"\(a normal fp32\); it holds"):
        call(torch.tensor(bad))


def test_negative_static_scales_round_trip():
    # Rounding is symmetric in sign: -s gives the codes of s negated, and the same values back.
    q, s = lowbit.quantize_fp8(X, torch.tensor(-0.01))
    qp, sp = lowbit.quantize_fp8(X, torch.tensor(0.01))
    assert torch.equal(q.float(), -qp.float())
    assert torch.equal(lowbit.dequantize_fp8(q, s, out_dtype=torch.float32),
                       lowbit.dequantize_fp8(qp, sp, out_dtype=torch.float32))


def test_value_checks_can_be_turned_off_on_the_cpu(monkeypatch):
    # LOWBIT_CHECK_SCALES=0: the kernels' tests feed such scales to compare IEEE behaviour.
    monkeypatch.setenv("LOWBIT_CHECK_SCALES", "0")
    x = X.masked_fill(X == 0, 1.0)  # (0 * (1 / 0) would be NaN's code)
    q, s = lowbit.quantize_fp8(x, torch.tensor(0.0))  # x * (1 / 0): every code saturates
    assert s == 0 and torch.equal(q.float().abs(), torch.full(X.shape, 448.0))


def test_values_at_the_limits_pass():
    for v in (2.0 ** -126, -2.0 ** -126):
        lowbit.quantize_fp8(X, torch.tensor(v))
        lowbit.quantize_int8(X, torch.full((4, 1), v))
    for z in (-128, 127):
        lowbit.quantize_int8(X, torch.full((4, 1), 0.05), symmetric=False,
                             zero=torch.full((4, 1), z, dtype=torch.int32))
    # What the package computes passes its own checks: a dynamic scale (and zero point)
    # given back as a static one, an all-zero slice's scale of 1.
    q, s, z = lowbit.quantize_int8(torch.cat([X, torch.zeros(1, 256)]), symmetric=False)
    assert s[-1] == 1
    lowbit.quantize_int8(torch.cat([X, torch.zeros(1, 256)]), s, symmetric=False, zero=z)


def test_from_linear_checks_act_scale():
    for cls in (lowbit.nn.Fp8Linear, lowbit.nn.Int8Linear):
        with pytest.raises(ValueError, match=r"act_scale must have magnitude at least 2\^-126 "
                                             r"\(a normal fp32\); it holds 0"):
            cls.from_linear(LIN, act_scale=0.0)
        with pytest.raises(TypeError, match=r"act_scale must be a number or a tensor; got str"):
            cls.from_linear(LIN, act_scale="0.1")
    with pytest.raises(TypeError, match=r"act_zero must be a number or a tensor; got str"):
        lowbit.nn.Int8Linear.from_linear(LIN, act_scale=0.1, act_symmetric=False, act_zero="3")


def test_a_zero_act_scale_loaded_into_a_module_is_refused_at_forward():
    mod = lowbit.nn.Fp8Linear.from_linear(LIN, act_scale=0.05)
    sd = mod.state_dict()
    sd["act_scale"] = torch.tensor(0.0)
    mod.load_state_dict(sd)
    with pytest.raises(ValueError, match=r"fp8_linear: act_scale must have magnitude at least"):
        mod(X[:, :256])


def test_int8_gemm_zero_points_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"int8_gemm: a_zero must lie in -128\.\.127 \(int8 "
                                         r"zero points\); it holds 255"):
        lowbit.int8_gemm(A, B, ONE, ONE, a_zero=torch.tensor(255, dtype=torch.int32))


def test_int8_zero_points_out_of_range_are_refused():
    s = torch.full((4, 1), 0.05)
    with pytest.raises(ValueError, match=r"quantize_int8: zero must lie in -128\.\.127 \(int8 "
                                         r"zero points\); it holds 1000"):
        lowbit.quantize_int8(X, s, zero=torch.full((4, 1), 1000, dtype=torch.int32),
                             symmetric=False)
    mod = lowbit.nn.Int8Linear.from_linear(LIN, act_scale=0.05, act_symmetric=False, act_zero=3)
    sd = mod.state_dict()
    sd["act_zero"] = torch.tensor(-100000, dtype=torch.int32)
    mod.load_state_dict(sd)
    with pytest.raises(ValueError, match=r"int8_linear: act_zero must lie in -128\.\.127 "
                                         r"\(int8 zero points\); it holds -100000"):
        mod(X)


@pytest.mark.parametrize("perm", [torch.arange(256) - 256, torch.zeros(256, dtype=torch.long),
                                  torch.arange(256) + 1], ids=["negative", "repeated", "past-k"])
def test_w4a16_perm_must_be_a_permutation(perm):
    with pytest.raises(ValueError, match=r"w4a16_gemm: perm must hold each of 0\.\.255 once"):
        lowbit.w4a16_gemm(XB, iw(perm=perm))


def test_load_state_dict_refuses_a_quantized_tensor_of_another_dtype():
    fp8 = lowbit.nn.Fp8Linear.from_linear(LIN)
    sd = fp8.state_dict()
    sd["weight"] = sd["weight"].view(torch.uint8)  # raw codes: would load as the numbers
    with pytest.raises(TypeError, match=r"Fp8Linear: state_dict\['weight'\] must have dtype "
                                        r"torch\.float8_e4m3fn .*; got torch\.uint8"):
        fp8.load_state_dict(sd)
    sd = fp8.state_dict()
    sd["weight_scale"] = sd["weight_scale"].int()  # would be truncated
    with pytest.raises(TypeError, match=r"state_dict\['weight_scale'\] must be a "
                                        r"floating-point scale; got torch\.int32"):
        fp8.load_state_dict(sd)
    i4 = lowbit.nn.Int4Linear.from_linear(LIN, group_size=64, symmetric=False)
    sd = i4.state_dict()
    sd["zeros"] = sd["zeros"].int()
    with pytest.raises(TypeError, match=r"Int4Linear: state_dict\['zeros'\] must have dtype "
                                        r"torch\.uint8"):
        i4.load_state_dict(sd)
    sd = i4.state_dict()
    sd["qweight"] = sd["qweight"].float()
    with pytest.raises(TypeError, match=r"state_dict\['qweight'\] must have dtype torch\.uint8"):
        i4.load_state_dict(sd)
    i4.load_state_dict(i4.state_dict())  # the module's own dtypes load
    # Scales of another float dtype convert, as a cast of the module converts them: a
    # bias-less module cast to fp16 reloads into the module its config() builds.
    half = lowbit.nn.Int4Linear.from_linear(torch.nn.Linear(256, 8, bias=False)).half()
    assert half.dtype == torch.float16  # (the scales', without a bias)
    lowbit.nn.Int4Linear(**half.config()).load_state_dict(half.state_dict())


@pytest.mark.parametrize("call,name", [
    pytest.param(lambda: lowbit.quantize_int8(X, symmetric="no"), "symmetric", id="symmetric"),
    pytest.param(lambda: lowbit.quantize_fp8(X, saturate="yes"), "saturate", id="saturate"),
    pytest.param(lambda: lowbit.fp8_scaled_mm(FA, FB, ONE, ONE, fast_accum=None), "fast_accum",
                 id="fast_accum"),
    pytest.param(lambda: lowbit.int4_quantize(W, symmetric=1), "symmetric", id="int4"),
])
def test_flags_must_be_bools(call, name):
    with pytest.raises(TypeError, match=rf"{name} must be a bool; got"):
        call()


@pytest.mark.parametrize("call", [
    lambda: lowbit.quantize_fp8(X, granularity="group", group_size=64.0),
    lambda: lowbit.int4_quantize(W, group_size=64.0),
    lambda: lowbit.nn.Int4Linear.from_linear(LIN, group_size="64"),
], ids=["quantize_fp8", "int4_quantize", "Int4Linear"])
def test_group_size_must_be_an_int(call):
    with pytest.raises(TypeError, match=r"group_size must be an int; got (float 64\.0|str '64')"):
        call()


@pytest.mark.parametrize("block", ["ab", None, (1.5, 128)], ids=["str", "none", "float"])
def test_block_must_be_two_ints(block):
    with pytest.raises(TypeError, match=r"quantize_fp8: block must be \(128, 128\) or "
                                        r"\(1, 128\); got"):
        lowbit.quantize_fp8(X, granularity="block", block=block)


def test_modules_name_x_when_it_is_no_tensor_or_of_a_wrong_dtype():
    for mod in (lowbit.nn.Fp8Linear.from_linear(LIN), lowbit.nn.Int8Linear.from_linear(LIN),
                lowbit.nn.Int4Linear.from_linear(LIN, group_size=64)):
        with pytest.raises(TypeError, match=rf"{type(mod).__name__}: x must be a torch\.Tensor; "
                                            r"got NoneType"):
            mod(None)
    w8a16 = lowbit.nn.Fp8Linear.from_linear(LIN, mode="w8a16")
    with pytest.raises(TypeError, match=r"Fp8Linear: x must have dtype .*; got torch\.float64"):
        w8a16(X.double())


def test_int4_weight_state_dict_names_a_missing_key():
    d = IW.state_dict()
    del d["group_size"]
    with pytest.raises(ValueError, match=r"Int4Weight\.from_state_dict: the state dict lacks "
                                         r"\['group_size'\]"):
        Int4Weight.from_state_dict(d)


@pytest.mark.parametrize("call,op", [
    pytest.param(lambda a, b: lowbit.int8_gemm(a, b, ONE, ONE), "int8_gemm", id="int8_gemm"),
    pytest.param(lambda a, b: lowbit.int8_linear(a.float(), b, ONE.reshape(1, 1)),
                 "int8_linear", id="int8_linear"),
])
def test_int8_gemms_refuse_k_past_the_int32_accumulator(call, op):
    a = torch.ones(1, 131072, dtype=torch.int8)
    with pytest.raises(ValueError, match=rf"{op}: K must be below 131072"):
        call(a, a)


@pytest.mark.parametrize("interpret", [False, True], ids=["plain", "triton-interpreter"])
def test_meta_tensors_give_meta_outputs_eagerly(monkeypatch, interpret):
    # As torch.ops.lowbit does: shapes and dtypes, no values, and no kernel asked for (not
    # even Triton's under its interpreter, which takes tensors of any device).
    if interpret:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    for backend in ("auto", "reference", "triton"):
        assert lowbit.explain(lowbit.int8_mm, m(A), m(B), backend=backend).backend == "meta"
    out = lowbit.int8_mm(m(A), m(B))
    assert out.is_meta and out.shape == (4, 3) and out.dtype == torch.int32
    q, s = lowbit.quantize_fp8(m(X), granularity="token")
    assert q.is_meta and q.dtype == F8 and s.shape == (4, 1)
    lin = torch.nn.Linear(256, 8, device="meta")
    mod = lowbit.nn.Fp8Linear.from_linear(lin)
    assert mod.weight.is_meta and mod(m(XB)).shape == (4, 8)
    model = torch.nn.Sequential(torch.nn.Linear(256, 8, device="meta"))
    assert lowbit.quantize_(model, "int8").swapped == ["0"] and model[0].weight.is_meta
