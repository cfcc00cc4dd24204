"""No host synchronization on the hot path (issue "Quantized models faster than bf16"): once
a signature has been seen, a call of every op, eager and through ``torch.ops``, and a forward
of every quantized module, on every backend that serves it on the GPU, makes no call that
waits for the GPU. torch's sync debug mode turns any such call that goes through torch
(``.item()``, a device-to-host copy, ``bool`` of a CUDA tensor, ``nonzero``) into an error.
The first call of a signature is outside the check: it chooses and prepares kernels."""
import pytest
import torch
from torch import nn

import lowbit

pytestmark = pytest.mark.gpu

DEV = "cuda"


def _calls(backend: str):
    """(name, call) of every op on small operands, on ``backend``."""
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(16, 512, device=DEV, generator=g).bfloat16()
    w = torch.randn(384, 512, device=DEV, generator=g) * 0.05
    bf = torch.bfloat16
    qa, sa = lowbit.quantize_fp8(x, granularity="token")
    qb, sb = lowbit.quantize_fp8(w, granularity="channel")
    ia, isa, iza = lowbit.quantize_int8(x, granularity="token", symmetric=False)
    ib, isb, _ = lowbit.quantize_int8(w, granularity="channel")
    iw = lowbit.int4_quantize(w, group_size=128)
    if backend == "cuda":
        iw = iw.prepack()
    ops, kw = torch.ops.lowbit, dict(backend=backend)
    return [
        ("quantize_fp8 token", lambda: lowbit.quantize_fp8(x, granularity="token", **kw)),
        ("quantize_fp8 tensor", lambda: lowbit.quantize_fp8(x, **kw)),
        ("quantize_fp8 static", lambda: lowbit.quantize_fp8(x, sa[0, 0], **kw)),
        ("dequantize_fp8", lambda: lowbit.dequantize_fp8(qa, sa, **kw)),
        ("quantize_int8 token", lambda: lowbit.quantize_int8(x, **kw)),
        ("quantize_int8 asym", lambda: lowbit.quantize_int8(x, symmetric=False, **kw)),
        ("dequantize_int8", lambda: lowbit.dequantize_int8(ia, isa, iza, **kw)),
        ("fp8_scaled_mm", lambda: lowbit.fp8_scaled_mm(qa, qb, sa, sb, out_dtype=bf, **kw)),
        ("int8_mm", lambda: lowbit.int8_mm(ia, ib, **kw)),
        ("int8_gemm", lambda: lowbit.int8_gemm(ia, ib, isa, isb, out_dtype=bf, **kw)),
        ("int8_gemm zero", lambda: lowbit.int8_gemm(ia, ib, isa, isb, out_dtype=bf,
                                                    a_zero=iza, **kw)),
        ("w4a16_gemm", lambda: lowbit.w4a16_gemm(x, iw, **kw)),
        ("w8a16_gemm", lambda: lowbit.w8a16_gemm(x, ib, isb, **kw)),
        ("int4_quantize", lambda: lowbit.int4_quantize(w, group_size=128, **kw)),
        ("torch.ops fp8_scaled_mm", lambda: ops.fp8_scaled_mm(qa, qb, sa, sb, None, bf, False,
                                                              backend)),
        ("torch.ops quantize_fp8", lambda: ops.quantize_fp8(x, None, "e4m3fn", "token", 128,
                                                            [128, 128], True, backend)),
        ("torch.ops int8_gemm", lambda: ops.int8_gemm(ia, ib, isa, isb, None, bf, None,
                                                      backend)),
        ("torch.ops quantize_int8", lambda: ops.quantize_int8(x, None, None, "token", 128,
                                                              [128, 128], True, backend)),
        ("torch.ops w4a16_gemm", lambda: ops.w4a16_gemm(x, iw.qweight, iw.scales, iw.zeros,
                                                        iw.group_size, iw.perm, None, backend)),
        ("torch.ops w8a16_gemm", lambda: ops.w8a16_gemm(x, ib, isb, None, backend)),
    ]


def _assert_no_sync(name: str, fn) -> None:
    fn()  # the signature's first call: choices and preparation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            fn()
    except RuntimeError as e:
        if "synchroniz" in str(e):
            pytest.fail(f"{name} synchronizes with the host: {e}")
        raise
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_ops_do_not_synchronize(backend):
    if backend == "triton":
        pytest.importorskip("triton")
    for name, fn in _calls(backend):
        _assert_no_sync(f"{name} [{backend}]", fn)


@pytest.mark.parametrize("make", [
    lambda lin: lowbit.nn.Fp8Linear.from_linear(lin),
    lambda lin: lowbit.nn.Fp8Linear.from_linear(lin, act_scale=torch.tensor(0.02)),
    lambda lin: lowbit.nn.Fp8Linear.from_linear(lin, fmt="e4m3fnuz"),
    lambda lin: lowbit.nn.Int8Linear.from_linear(lin),
    lambda lin: lowbit.nn.Int8Linear.from_linear(lin, act_symmetric=False),
    lambda lin: lowbit.nn.Int8Linear.from_linear(lin, mode="w8a16"),
    lambda lin: lowbit.nn.Int4Linear.from_linear(lin, group_size=128),
], ids=["fp8", "fp8-static", "fp8-fnuz", "int8", "int8-asym", "w8a16", "int4"])
@pytest.mark.parametrize("m", [1, 16, 300])
def test_modules_do_not_synchronize(make, m):
    lin = nn.Linear(512, 384).to(DEV, torch.bfloat16)
    mod = make(lin)
    x = torch.randn(m, 512, device=DEV, dtype=torch.bfloat16)
    _assert_no_sync(f"{type(mod).__name__} forward, M = {m}", lambda: mod(x))
    op = {"Fp8Linear": "fp8_linear", "Int8Linear": "int8_linear"}.get(type(mod).__name__)
    if op is not None and getattr(mod, "mode", "w8a8") == "w8a8":
        state = [getattr(mod, n) for n in mod._STATE]
        reg = getattr(torch.ops.lowbit, op)
        _assert_no_sync(f"torch.ops.lowbit.{op}, M = {m}", lambda: reg(x, *state, "auto"))
