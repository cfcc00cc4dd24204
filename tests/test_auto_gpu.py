"""backend="auto" on CUDA tensors, as users call the ops: which kernel runs (lowbit.explain)
and what it returns (against the reference or a float64 product), at the shapes where the
CUDA kernels step aside for Triton, and for the ops that have no GPU kernel yet.

Every test here needs a GPU (marked ``gpu``)."""
import pytest
import torch

import lowbit
from lowbit._backend import kernels
from lowbit_testing import (assert_bits_equal, fp8_gemm_operands, gemm_tol, ref_mm_f64,
                            rel_fro)

pytestmark = pytest.mark.gpu

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def _cuda_gemm_runs_here():
    """None when some CUDA fp8_scaled_mm kernel can run in this process, else why not."""
    reasons = [k.available() for k in kernels("fp8_scaled_mm") if k.backend == "cuda"]
    if not reasons:
        return "no CUDA fp8_scaled_mm kernel is registered"
    return None if any(r is None for r in reasons) else reasons[0]


def _auto_gemm(a, b, sa, sb, bias=None, out_dtype=torch.bfloat16):
    """(the choice, the output) of fp8_scaled_mm with backend="auto", checked against the
    float64 product of the same operands within the SPEC's tolerance."""
    choice = lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb, bias, out_dtype=out_dtype)
    out = lowbit.fp8_scaled_mm(a, b, sa, sb, bias, out_dtype=out_dtype)
    assert out.device == a.device and out.dtype == out_dtype
    assert out.shape == (a.shape[0], b.shape[0])
    if a.shape[0]:
        assert rel_fro(out, ref_mm_f64(a, b, sa, sb, bias)) <= gemm_tol(out_dtype), str(choice)
    return choice, out


def _pad_rows(t, before, after):
    """fp8 ``t`` copied into rows ``before`` + K + ``after`` bytes wide (zeros around)."""
    big = torch.zeros(t.shape[0], before + t.shape[1] + after, dtype=torch.uint8,
                      device=t.device)
    big[:, before:before + t.shape[1]] = t.view(torch.uint8)
    return big.view(t.dtype)


# ---------------------------------------------------------------- fp8_scaled_mm hand-off
@pytest.mark.parametrize("m", [1, 17, 300])
@pytest.mark.parametrize("mode", ["tensor", "row", "block"])
def test_auto_gemm_takes_a_cuda_kernel_where_one_fits(m, mode):
    """The plain case (e4m3fn, K % 16 == 0, K-major b): a CUDA kernel, where one runs."""
    why = _cuda_gemm_runs_here()
    if why:
        pytest.skip(why)
    a, b, sa, sb = fp8_gemm_operands(m, 512, 1024, mode, "cuda")
    choice, _ = _auto_gemm(a, b, sa, sb)
    assert choice.backend == "cuda", str(choice)


@pytest.mark.parametrize("m", [1, 17, 300])
@pytest.mark.parametrize("k", [136, 4104, 8, 1])
@pytest.mark.parametrize("mode", ["tensor", "row", "block"])
def test_auto_gemm_k_not_multiple_of_16_runs_triton(m, k, mode):
    a, b, sa, sb = fp8_gemm_operands(m, 300, k, mode, "cuda")
    choice, _ = _auto_gemm(a, b, sa, sb, out_dtype=torch.float32)
    assert (choice.backend, choice.kernel) == ("triton", "triton_fp8_scaled_mm"), str(choice)
    if _cuda_gemm_runs_here() is None:
        assert any("multiple of 16" in r for r in choice.rejected), str(choice)


@pytest.mark.parametrize("m", [1, 300])
@pytest.mark.parametrize("dtypes", [(E5M2, E5M2), (E4M3, E5M2), (E5M2, E4M3)],
                         ids=["e5m2-e5m2", "e4m3-e5m2", "e5m2-e4m3"])
def test_auto_gemm_e5m2_operands_run_triton(m, dtypes):
    a, b, sa, sb = fp8_gemm_operands(m, 256, 512, "row", "cuda", dtype_a=dtypes[0],
                                     dtype_b=dtypes[1])
    choice, _ = _auto_gemm(a, b, sa, sb, out_dtype=torch.float32)
    assert (choice.backend, choice.kernel) == ("triton", "triton_fp8_scaled_mm"), str(choice)


@pytest.mark.parametrize("m", [1, 17, 300])
@pytest.mark.parametrize("layout", ["b_transposed", "b_sliced", "a_transposed",
                                    "a_misaligned"])
def test_auto_gemm_operands_not_k_major_run_triton(m, layout):
    """A b stored [K, N] (b.t() of a contiguous tensor), a b whose rows are not 16-byte
    strided, an a stored [K, M], an a starting 8 bytes past alignment: Triton reads them."""
    if m == 1 and layout == "a_transposed":
        pytest.skip("a single row of a has no row stride to break")
    a, b, sa, sb = fp8_gemm_operands(m, 256, 512, "row", "cuda")
    if layout == "b_transposed":
        b = b.t().contiguous().t()
    elif layout == "b_sliced":
        b = _pad_rows(b, 0, 8)[:, :512]  # row stride 520 bytes
    elif layout == "a_transposed":
        a = a.t().contiguous().t()
    else:
        a = _pad_rows(a, 8, 0)[:, 8:]  # starts 8 bytes into its storage
    choice, _ = _auto_gemm(a, b, sa, sb)
    assert (choice.backend, choice.kernel) == ("triton", "triton_fp8_scaled_mm"), str(choice)


def test_auto_gemm_empty_m_and_bias():
    a, b, sa, sb = fp8_gemm_operands(0, 256, 136, "row", "cuda")
    _auto_gemm(a, b, sa, sb)
    a, b, sa, sb = fp8_gemm_operands(33, 256, 136, "block", "cuda")
    bias = torch.randn(256, device="cuda").to(torch.bfloat16)
    _auto_gemm(a, b, sa, sb, bias, out_dtype=torch.float16)


# ------------------------------------------------------------- quantize / dequantize fp8
GRANS = [("tensor", {}), ("token", {}), ("channel", {}), ("group", dict(group_size=64)),
         ("block", dict(block=(128, 128))), ("block", dict(block=(1, 128)))]


@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2", "e4m3fnuz"])
@pytest.mark.parametrize("gran", GRANS, ids=lambda g: g[0] + "".join(map(str, g[1].values())))
@pytest.mark.parametrize("shape", [(1, 128), (37, 200), (3, 5, 256)], ids=str)
def test_auto_quantize_runs_a_gpu_kernel_bit_exact(shape, gran, fmt):
    granularity, kw = gran
    if granularity == "group" and shape[-1] % 64:
        pytest.skip("K is not a multiple of the group")
    if granularity in ("channel", "block") and len(shape) != 2:
        pytest.skip("channel and block scales take 2-D inputs")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    xc = x.cuda().transpose(-1, -2).contiguous().transpose(-1, -2)  # not row-major either
    choice = lowbit.explain(lowbit.quantize_fp8, xc, fmt=fmt, granularity=granularity, **kw)
    assert choice.backend in ("cuda", "triton"), str(choice)
    q, s = lowbit.quantize_fp8(xc, fmt=fmt, granularity=granularity, **kw)
    q0, s0 = lowbit.quantize_fp8(x, fmt=fmt, granularity=granularity, backend="reference",
                                 **kw)
    assert q.is_cuda and s.is_cuda
    assert_bits_equal(q, q0, f"q {choice}")
    assert_bits_equal(s, s0, f"scale {choice}")
    choice = lowbit.explain(lowbit.dequantize_fp8, q, s, out_dtype=torch.float32)
    assert choice.backend in ("cuda", "triton"), str(choice)
    assert_bits_equal(lowbit.dequantize_fp8(q, s, out_dtype=torch.float32),
                      lowbit.dequantize_fp8(q0, s0, out_dtype=torch.float32,
                                            backend="reference"), str(choice))


# ------------------------------------------------------------------ int8 / int4 on CUDA
def _int4_weight(symmetric=False, perm=False):
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(2))
    iw = lowbit.int4_quantize(w, group_size=64, symmetric=symmetric)
    if perm:
        iw = lowbit.Int4Weight(iw.qweight, iw.scales, iw.zeros, iw.group_size,
                               torch.randperm(256, generator=torch.Generator().manual_seed(3)))
    return iw


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
@pytest.mark.parametrize("perm", [False, True], ids=["", "perm"])
def test_int4_weight_to_cuda_and_back(symmetric, perm):
    iw = _int4_weight(symmetric, perm)
    on_gpu = iw.to("cuda")
    for got, want in ((on_gpu.qweight, iw.qweight), (on_gpu.scales, iw.scales),
                      (on_gpu.zeros, iw.zeros), (on_gpu.perm, iw.perm)):
        assert (got is None) == (want is None)
        if got is not None:
            assert got.is_cuda and got.dtype == want.dtype and torch.equal(got.cpu(), want)
    assert on_gpu.shape == iw.shape and on_gpu.group_size == iw.group_size
    assert on_gpu.device.type == "cuda"
    dense = on_gpu.dequantize()
    assert dense.is_cuda and torch.equal(dense.cpu(), iw.dequantize())
    back = on_gpu.to("cpu")
    assert back.device.type == "cpu" and torch.equal(back.qweight, iw.qweight)
    x = torch.randn(5, 256, dtype=torch.bfloat16)
    want = lowbit.w4a16_gemm(x, iw, backend="reference")
    assert torch.equal(lowbit.w4a16_gemm(x.cuda(), on_gpu, backend="reference").cpu(), want)


def _gpu_calls():
    """op -> a call of it with backend="auto" on CUDA tensors."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(17, 256, generator=g).cuda()
    a8 = torch.randint(-128, 128, (17, 256), generator=g, dtype=torch.int8).cuda()
    b8 = torch.randint(-128, 128, (33, 256), generator=g, dtype=torch.int8).cuda()
    q, s, z = lowbit.quantize_int8(x.cpu(), symmetric=False)
    sa = torch.rand(17, 1, generator=g).cuda()
    sb = torch.rand(33, 1, generator=g).cuda()
    iw = _int4_weight().to("cuda")
    xb = x.bfloat16()
    return {
        "quantize_int8": lambda: lowbit.quantize_int8(x),
        "dequantize_int8": lambda: lowbit.dequantize_int8(q.cuda(), s.cuda(), z.cuda()),
        "int8_mm": lambda: lowbit.int8_mm(a8, b8),
        "int8_gemm": lambda: lowbit.int8_gemm(a8, b8, sa, sb),
        "int4_quantize": lambda: lowbit.int4_quantize(x, group_size=64),
        "w4a16_gemm": lambda: lowbit.w4a16_gemm(xb, iw),
        "w8a16_gemm": lambda: lowbit.w8a16_gemm(xb, b8, sb),
    }


# Ops without a GPU kernel yet -> the issue that brings one. auto on CUDA tensors raises
# NotImplementedError saying so (and pointing to backend="reference"). When an issue lands
# its kernels, delete its ops here: test_auto_runs_on_cuda then checks them instead.
NO_GPU_KERNEL_YET: dict = {}  # every op of GPU_OPS has one
GPU_OPS = ["quantize_int8", "dequantize_int8", "int8_mm", "int8_gemm", "int4_quantize",
           "w4a16_gemm", "w8a16_gemm"]


@pytest.mark.parametrize("op", [op for op in GPU_OPS if op in NO_GPU_KERNEL_YET])
def test_auto_on_cuda_without_a_gpu_kernel_raises(op):
    call = _gpu_calls()[op]
    with pytest.raises(NotImplementedError, match=rf"lowbit\.{op}: no CUDA or Triton kernel") \
            as info:
        call()
    assert "backend='reference'" in str(info.value)


@pytest.mark.parametrize("op", [op for op in GPU_OPS if op not in NO_GPU_KERNEL_YET])
def test_auto_runs_on_cuda(op):
    out = _gpu_calls()[op]()
    outs = out if isinstance(out, tuple) else (out,)
    assert all(t is None or t.is_cuda for t in outs if isinstance(t, torch.Tensor))
