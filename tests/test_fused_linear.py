"""The linear layers' forward as one kernel at M <= 64 on sm_90a: the activation quantizer in
the swap-AB GEMM's prologue (csrc/common/sm90_gemm_swapab.cuh, sm90_fp8_linear_swapab and
sm90_int8_linear_swapab), run by the launch objects of lowbit/backends/cuda/linear.py in
place of the quantize and GEMM kernels. Its output must be theirs bit for bit, for every M
from 1 to 64, both 16-bit activation dtypes, per-token and static scales, with and without
a K split. The launch objects' argument checks run without a GPU. The fused path is opt-in
(LOWBIT_FUSED_QUANT=1, backends/cuda/linear.py): these tests turn it on."""
import pytest
import torch
from torch import nn

import lowbit
from lowbit.backends import cuda
from lowbit.backends.cuda import DTYPE_CODE, FP8_FORMAT_CODE, FUSED_LINEAR, kernel_id
from lowbit.backends.cuda import linear as cuda_linear
from lowbit.nn import Fp8Linear, Int8Linear

FP8_FUSED, INT8_FUSED = FUSED_LINEAR["fp8_linear"][0], FUSED_LINEAR["int8_linear"][0]
needs_fused = pytest.mark.skipif(kernel_id(FP8_FUSED) is None,
                                 reason="lowbit._C built without the sm_90a kernels")


@pytest.fixture
def fused_on(monkeypatch):
    monkeypatch.setenv(cuda_linear.FUSED_ENV, "1")


def _on_hopper():
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the fused kernels run on sm_90a")


# ------------------------------------------------------------ the launch objects' checks
def _fp8_quant(kernel="cuda_fp8_quant_per_token", dtype=torch.bfloat16, fmt="e4m3fn",
               saturate=True, tile=(1, 0), col_stride=1):
    return cuda._C.QuantizeLaunch(kernel_id(kernel), DTYPE_CODE[dtype], 4, 256, 256, col_stride,
                                  FP8_FORMAT_CODE[fmt], saturate, *tile, True)


def _fp8_gemm(a_tile=(1, 0)):
    return cuda._C.GemmLaunch(kernel_id("sm90_fp8_gemm_swapab"), 4, 96, 256, 256, 256, *a_tile,
                              1, 1, 0, 1, 0, DTYPE_CODE[torch.bfloat16], 96, False)


@needs_fused
def test_fp8_fused_launch_takes_what_its_kernel_does():
    fused = kernel_id(FP8_FUSED)
    assert cuda._C.Fp8LinearLaunch(_fp8_quant(), _fp8_gemm(), 256, -1, fused).fused == FP8_FUSED
    assert cuda._C.Fp8LinearLaunch(_fp8_quant(), _fp8_gemm(), 256, -1).fused is None
    bad = [
        (dict(fmt="e5m2"), "saturating e4m3fn"),
        (dict(saturate=False), "saturating e4m3fn"),
        (dict(dtype=torch.float32), "bf16 / fp16"),
        (dict(col_stride=2), "unit column stride"),
        (dict(kernel="cuda_fp8_quant_per_group", tile=(1, 128)), "per-token quantizer"),
        (dict(kernel="cuda_fp8_quant_per_tensor", tile=(0, 0)), "per-token quantizer"),
        (dict(kernel="cuda_fp8_quant_static", tile=(1, 0)), "per-token quantizer"),
    ]
    for kw, what in bad:
        with pytest.raises(ValueError, match=what):
            cuda._C.Fp8LinearLaunch(_fp8_quant(**kw), _fp8_gemm(), 256, -1, fused)
    for wrong in (kernel_id("sm90_fp8_gemm_swapab"), kernel_id(INT8_FUSED)):
        with pytest.raises(ValueError, match="no fp8_linear kernel"):
            cuda._C.Fp8LinearLaunch(_fp8_quant(), _fp8_gemm(), 256, -1, wrong)
    # Per-row scales are computed, a static quantizer's is given: the wrong one is an error
    # before anything is launched (no device needed).
    per_row = cuda._C.Fp8LinearLaunch(_fp8_quant(), _fp8_gemm(), 256, -1, fused)
    with pytest.raises(ValueError, match="no x_scale"):
        per_row.launch(16, 16, 16, 16, 0, 0, 16, 0)
    static = cuda._C.Fp8LinearLaunch(
        _fp8_quant("cuda_fp8_quant_static", tile=(0, 0)), _fp8_gemm((0, 0)), 256, -1, fused)
    with pytest.raises(ValueError, match="static x_scale"):
        static.launch(16, 0, 16, 16, 0, 0, 16, 0)


@needs_fused
def test_int8_fused_launch_is_symmetric_only():
    def quant(symmetric):
        return cuda._C.Int8QuantizeLaunch(kernel_id("cuda_int8_quant_per_token"),
                                          DTYPE_CODE[torch.float16], 4, 256, 256, 1, symmetric,
                                          1, 0)

    def gemm(zero_mode):
        return cuda._C.Int8GemmLaunch(kernel_id("sm90_int8_gemm_swapab"), 4, 96, 256, 256, 256,
                                      True, True, zero_mode, 0, DTYPE_CODE[torch.float16], 96)

    fused = kernel_id(INT8_FUSED)
    ok = cuda._C.Int8LinearLaunch(quant(True), gemm(0), 256, -1, -1, fused)
    assert ok.fused == INT8_FUSED
    for q, g in ((quant(False), gemm(2)), (quant(True), gemm(2))):
        with pytest.raises(ValueError, match="symmetric activations only"):
            cuda._C.Int8LinearLaunch(q, g, 256, 512, -1, fused)
    with pytest.raises(ValueError, match="no int8_linear kernel"):
        cuda._C.Int8LinearLaunch(quant(True), gemm(0), 256, -1, -1, kernel_id(FP8_FUSED))


@needs_fused
def test_the_fused_kernel_is_chosen_for_what_it_takes(monkeypatch):
    """linear.py asks for the fused kernel only where the two chosen kernels are the ones it
    replaces and the activations and weight scale are what it reads, when it is on."""
    monkeypatch.setenv(cuda_linear.FUSED_ENV, "1")
    name, quantizers, gemm = FUSED_LINEAR["fp8_linear"]
    x = torch.zeros(4, 256, dtype=torch.bfloat16)
    geometry = (4, 256, 256, 1)
    row_scale = torch.ones(96, 1)

    def fused(**kw):
        args = dict(quant_kernel=quantizers[0], gemm_kernel=gemm, x=x, geometry=geometry,
                    weight_scale=row_scale, n=96)
        args.update(kw)
        return cuda_linear._fused_kernel("fp8_linear", **args)

    assert fused() == kernel_id(name)
    assert fused(quant_kernel=quantizers[1], weight_scale=torch.ones(())) == kernel_id(name)
    assert fused(gemm_kernel="sm89_fp8_gemm_smallm") == -1
    assert fused(quant_kernel="cuda_fp8_quant_per_tensor") == -1
    assert fused(x=x.float()) == -1
    assert fused(geometry=(4, 248, 256, 1)) == -1  # K % 16
    misaligned = torch.zeros(4 * 256 + 4, dtype=torch.bfloat16)[4:].view(4, 256)
    assert fused(x=misaligned) == -1
    assert fused(geometry=(4, 256, 260, 1)) == -1  # rows 520 bytes apart: not 16-aligned
    assert fused(geometry=(4, 256, 0, 1)) == -1  # one row repeated (expand): the kernel
    assert fused(geometry=(4, 256, 128, 1)) == -1  # reads K-long rows that do not overlap
    assert fused(geometry=(1, 256, 0, 1)) == kernel_id(name)  # (one row: no stride read)
    assert fused(weight_scale=torch.ones(1, 2)) == -1  # 128 x 128 blocks
    monkeypatch.setenv(cuda_linear.FUSED_ENV, "0")
    assert fused() == -1
    monkeypatch.delenv(cuda_linear.FUSED_ENV)
    assert (fused() >= 0) == cuda_linear.FUSED_BY_DEFAULT


def info_text(monkeypatch, capsys, env: str, value: str) -> str:
    """`lowbit info`'s output with ``env`` set to ``value``, its whitespace runs made one
    space (it wraps its long lines)."""
    from lowbit.cli import main

    monkeypatch.setenv(env, value)
    assert main(["info"]) == 0
    return " ".join(capsys.readouterr().out.split())


@needs_fused
def test_lowbit_info_names_the_fused_kernels(monkeypatch, capsys):
    for value, state in (("1", "on here"), ("0", "off here")):
        text = info_text(monkeypatch, capsys, cuda_linear.FUSED_ENV, value)
        assert f"fused: cuda/{FP8_FUSED}" in text and f"fused: cuda/{INT8_FUSED}" in text
        assert f"LOWBIT_FUSED_QUANT=1 ({state})" in text


# ------------------------------------------------------------------- bit for bit on a GPU
SHAPES = [(4096, 256), (896, 9000), (400, 200), (4000, 256), (2048, 20000)]
# a cluster over K; one CTA per tile; K % 128 != 0; both; 157 tiles of 16 steps on 132 SMs
# (the ring wraps at every M, and CTAs walk two tiles)
SHAPE_IDS = ["k-split", "no-split", "k-tail", "k-split-tail", "tiles-per-cta"]


def rows(m, k, dtype, seed):
    """m rows of different magnitudes (row scales 2^-3 .. 2^3), row 0 zeros when m > 2."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g)
    x *= torch.exp2(torch.arange(m, device="cuda") % 7 - 3.0)[:, None]
    if m > 2:
        x[0] = 0
    return x.to(dtype)


def _check_all_m(mod, two_ops, fused_name, k, dtype):
    for m in range(1, 65):
        x = rows(m, k, dtype, seed=m)
        mod(x)  # the checked ops, which prepare the step
        y = mod(x)
        assert mod._step.run.__name__ == fused_name, m
        assert torch.equal(y, two_ops(mod, x)), f"M = {m}"


def fp8_two_ops(mod, x):
    gran = "tensor" if mod.act_scale is not None else "token"
    q, s = lowbit.quantize_fp8(x, mod.act_scale, granularity=gran)
    return lowbit.fp8_scaled_mm(q, mod.weight, s, mod.weight_scale, mod.bias, out_dtype=x.dtype)


def int8_two_ops(mod, x):
    gran = "tensor" if mod.act_scale is not None else "token"
    q, s, _ = lowbit.quantize_int8(x, mod.act_scale, granularity=gran, symmetric=True)
    return lowbit.int8_gemm(q, mod.weight, s, mod.weight_scale, mod.bias, out_dtype=x.dtype)


@pytest.mark.gpu
@needs_fused
@pytest.mark.parametrize("family", ["fp8", "int8"])
@pytest.mark.parametrize("static", [False, True], ids=["per-token", "static"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("k,n", SHAPES, ids=SHAPE_IDS)
def test_fused_forward_is_the_two_kernels(python_step, fused_on, k, n, dtype, static, family):
    _on_hopper()
    torch.manual_seed(k + n)
    lin = nn.Linear(k, n, bias=family == "fp8").to("cuda", dtype)
    # A static scale at half the batch's range: the larger values saturate (448, 127).
    amax = rows(64, k, dtype, seed=0).abs().amax().float()
    if family == "fp8":
        mod = Fp8Linear.from_linear(lin, act_scale=amax / 896 if static else None)
        _check_all_m(mod, fp8_two_ops, FP8_FUSED, k, dtype)
    else:
        mod = Int8Linear.from_linear(lin, act_scale=amax / 254 if static else None,
                                     act_symmetric=True)
        _check_all_m(mod, int8_two_ops, INT8_FUSED, k, dtype)


@pytest.mark.gpu
@needs_fused
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fused_forward_with_inf_and_nan_rows(python_step, fused_on, dtype):
    """Rows holding an Inf or a NaN: their scales are Inf or NaN, as the quantizer makes them,
    and the other rows are untouched."""
    _on_hopper()
    lin = nn.Linear(512, 384).to("cuda", dtype)
    big = torch.finfo(dtype).max / 2
    for mod, two_ops in ((Fp8Linear.from_linear(lin), fp8_two_ops),
                         (Int8Linear.from_linear(lin, act_symmetric=True), int8_two_ops)):
        x = rows(12, 512, dtype, seed=5)
        x[1, 5], x[2, 7], x[3, 9] = float("inf"), float("nan"), big
        mod(x)
        y = mod(x)
        assert "linear_swapab" in mod._step.run.__name__
        torch.testing.assert_close(y, two_ops(mod, x), rtol=0, atol=0, equal_nan=True)
        assert torch.isfinite(y[4:]).all()


@pytest.mark.gpu
@needs_fused
def test_repeated_rows_take_the_two_kernels(python_step, fused_on):
    """x = one row expanded (row stride 0): the fused kernel declines such rows, so the
    prepared step must be the two kernels' (it raised a launch error on the second call)."""
    _on_hopper()
    lin = nn.Linear(256, 96).to("cuda", torch.bfloat16)
    x = rows(1, 256, torch.bfloat16, seed=3).expand(8, 256)
    for mod, two_ops in ((Fp8Linear.from_linear(lin), fp8_two_ops),
                         (Int8Linear.from_linear(lin, act_symmetric=True), int8_two_ops)):
        mod(x)
        y = mod(x)
        assert "linear_swapab" not in mod._step.run.__name__
        assert torch.equal(y, two_ops(mod, x.contiguous()))


@pytest.mark.gpu
@needs_fused
def test_fused_forward_switch_and_graph(monkeypatch, python_step):
    """LOWBIT_FUSED_QUANT=0 keeps the two kernels (a new step), and lowbit.explain names
    what runs either way; the fused step replays in a CUDA graph and runs on a side stream
    with the same bits."""
    _on_hopper()
    monkeypatch.setenv(cuda_linear.FUSED_ENV, "1")
    lin = nn.Linear(1024, 768).to("cuda", torch.bfloat16)
    mod = Fp8Linear.from_linear(lin)
    x = rows(9, 1024, torch.bfloat16, seed=2)
    mod(x)
    y = mod(x)
    assert mod._step.run.__name__ == FP8_FUSED
    args = (x, mod.weight, mod.weight_scale, mod.bias)
    assert lowbit.explain(lowbit.fp8_linear, *args).kernel == FP8_FUSED
    imod = Int8Linear.from_linear(lin)
    iargs = (x, imod.weight, imod.weight_scale, imod.bias)
    assert lowbit.explain(lowbit.int8_linear, *iargs).kernel == INT8_FUSED
    monkeypatch.setenv(cuda_linear.FUSED_ENV, "0")
    assert lowbit.explain(lowbit.fp8_linear, *args).kernel == "cuda_fp8_quant_per_token"
    assert lowbit.explain(lowbit.int8_linear, *iargs).kernel == "cuda_int8_quant_per_token"
    mod(x)
    assert torch.equal(mod(x), y) and "+" in mod._step.run.__name__
    monkeypatch.setenv(cuda_linear.FUSED_ENV, "1")
    mod(x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        assert torch.equal(mod(x), y) and mod._step.run.__name__ == FP8_FUSED
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = mod(x)
    x_new = rows(9, 1024, torch.bfloat16, seed=3)
    x.copy_(x_new)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, fp8_two_ops(mod, x_new))
