"""lowbit/_compiled_quant.py: the per-token quantizers written as torch ops (what a compiled
quantized Linear runs under LOWBIT_COMPILED_QUANT=inductor) against lowbit's quantizers, bit
for bit, eager and compiled, on the CPU and, where there is one, on the GPU (where Inductor
generates Triton code: the check that its division and casts round as the SPEC says)."""
import pytest
import torch

import lowbit
from lowbit import _compiled_quant as cq
from lowbit.nn import Fp8Linear, Int8Linear
from lowbit_testing import assert_bits_equal

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _rows(device, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 256, generator=g) * torch.logspace(-30, 30, 96)[:, None]
    x[0] = 0.0  # all zeros: scale 1
    x[1, 3] = float("nan")  # NaN: the row's scale is NaN
    x[2, 5] = float("inf")
    x[3, 7] = float("-inf")
    x[4] = torch.randn(256, generator=g) * 1e-38  # under the scale's floor
    x[5, ::2] = -0.0
    x[6] = 448.0 * 3
    x[7, 0] = -x[7, 0].abs() * 1e6  # one outlier
    return x.to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("compiled", [False, True])
def test_fp8_per_token_is_quantize_fp8(device, dtype, compiled):
    x = _rows(device, dtype)
    fn = torch.compile(cq.fp8_per_token, fullgraph=True) if compiled else cq.fp8_per_token
    q, s = fn(x, torch.float8_e4m3fn)
    want_q, want_s = lowbit.quantize_fp8(x, granularity="token")
    # (any NaN for a NaN row's scale: the SPEC fixes no fp32 NaN payload, and the CUDA
    # quantizers write the GPU's 0x7FFFFFFF where torch writes 0x7FC00000; fp8 codes as bits)
    assert_bits_equal(s, want_s, "scales")
    assert_bits_equal(q, want_q, "codes")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("compiled", [False, True])
def test_int8_per_token_is_quantize_int8(device, dtype, compiled):
    x = _rows(device, dtype)
    ties = torch.tensor([0.5, 1.5, 2.5, -0.5], device=device)
    x[9, :4] = ties * (x[9].abs().max() / 127)
    fn = torch.compile(cq.int8_per_token, fullgraph=True) if compiled else cq.int8_per_token
    q, s = fn(x)
    want_q, want_s, _ = lowbit.quantize_int8(x, granularity="token")
    assert_bits_equal(s, want_s, "scales")
    assert_bits_equal(q, want_q, "codes")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layer", [Fp8Linear, Int8Linear])
def test_compiled_layer_takes_it_when_asked(monkeypatch, device, layer):
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 64).to(device, torch.bfloat16)
    mod = layer.from_linear(lin)
    x = torch.randn(2, 40, 128, device=device, dtype=torch.bfloat16)  # M = 80 > MIN_ROWS
    with torch.no_grad():
        want = mod(x)
        monkeypatch.setenv("LOWBIT_COMPILED_QUANT", "inductor")
        torch._dynamo.reset()
        seen = []
        real = cq.linear

        def spy(*args):
            y = real(*args)
            seen.append(y is not None)
            return y

        monkeypatch.setattr(cq, "linear", spy)
        got = torch.compile(mod, fullgraph=True)(x)
        small = torch.compile(mod, fullgraph=True)(x[:1, :8])  # M = 8: the registered op
    assert seen == [True, False]
    assert torch.equal(got, want)
    assert torch.equal(small, mod(x[:1, :8]))


def test_long_rows_keep_the_registered_op(monkeypatch):
    # Rows past MAX_K: the layer's own op (the fused looped reduction ran slower).
    monkeypatch.setenv("LOWBIT_COMPILED_QUANT", "inductor")
    mod = Fp8Linear.from_linear(torch.nn.Linear(cq.MAX_K + 16, 32).to(torch.bfloat16))
    x = torch.randn(cq.MIN_ROWS + 1, cq.MAX_K + 16, dtype=torch.bfloat16)
    assert cq.linear("fp8_linear", x, mod._state()) is None
    assert cq.linear("fp8_linear", x[:, :cq.MAX_K], Fp8Linear.from_linear(
        torch.nn.Linear(cq.MAX_K, 32).to(torch.bfloat16))._state()) is not None
