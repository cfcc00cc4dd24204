"""A linear layer's sm_90a GEMM (swap-AB at M <= 64, wgmma above) loading its first weight
stages before it waits for the layer's activation quantizer (GemmArgs::b_static,
csrc/common/sm90_gemm_swapab.cuh and sm90_gemm_wgmma.cuh; switched by LOWBIT_EARLY_WEIGHTS,
lowbit/backends/cuda/linear.py). The output must be the two op
calls' bit for bit, also when the weight was rewritten by the kernel just before the
quantizer: the early loads may not see a stale weight. The switch and the launch objects'
flag are checked without a GPU."""
import pytest
import torch
from torch import nn

from lowbit.backends import cuda
from lowbit.backends.cuda import DTYPE_CODE, FP8_FORMAT_CODE, kernel_id
from lowbit.backends.cuda import linear as cuda_linear
from lowbit.nn import Fp8Linear, Int8Linear
from test_fused_linear import fp8_two_ops, info_text, int8_two_ops, rows

needs_swapab = pytest.mark.skipif(kernel_id("sm90_fp8_gemm_swapab") is None,
                                  reason="lowbit._C built without the sm_90a kernels")
FP8_STEP = "cuda_fp8_quant_per_token+sm90_fp8_gemm_swapab"
INT8_STEP = "cuda_int8_quant_per_token+sm90_int8_gemm_swapab"


@pytest.fixture
def early_on(monkeypatch):
    monkeypatch.setenv(cuda_linear.WEIGHT_EARLY_ENV, "1")
    monkeypatch.setenv(cuda_linear.FUSED_ENV, "0")


def test_the_switch_names_the_sm90a_gemms_only(monkeypatch):
    monkeypatch.setenv(cuda_linear.WEIGHT_EARLY_ENV, "1")
    for gemm in ("sm90_fp8_gemm_swapab", "sm90_int8_gemm_swapab", "sm90_fp8_gemm_wgmma",
                 "sm90_int8_gemm_wgmma"):
        assert cuda_linear.weight_early(gemm)
    for gemm in ("sm89_fp8_gemm_smallm", "sm89_fp8_gemm_mma", "sm80_int8_gemm_mma",
                 "triton_fp8_scaled_mm", "triton_int8_gemm"):
        assert not cuda_linear.weight_early(gemm)
    monkeypatch.setenv(cuda_linear.WEIGHT_EARLY_ENV, "0")
    assert not cuda_linear.weight_early("sm90_fp8_gemm_swapab")
    monkeypatch.delenv(cuda_linear.WEIGHT_EARLY_ENV)
    assert cuda_linear.weight_early("sm90_fp8_gemm_swapab") == cuda_linear.WEIGHT_EARLY_BY_DEFAULT
    # Unset, the wgmma GEMMs load early only to WGMMA_EARLY_MAX_M rows (slower above, as
    # measured); "1" turns them on at any M, "0" off at any.
    top = cuda_linear.WGMMA_EARLY_MAX_M
    for gemm in ("sm90_fp8_gemm_wgmma", "sm90_int8_gemm_wgmma"):
        assert cuda_linear.weight_early(gemm, top) == cuda_linear.WEIGHT_EARLY_BY_DEFAULT
        assert not cuda_linear.weight_early(gemm, top + 1)
        assert cuda_linear.weight_early("sm90_int8_gemm_swapab", 64) == \
            cuda_linear.WEIGHT_EARLY_BY_DEFAULT
    monkeypatch.setenv(cuda_linear.WEIGHT_EARLY_ENV, "1")
    assert cuda_linear.weight_early("sm90_fp8_gemm_wgmma", 4096)
    monkeypatch.setenv(cuda_linear.WEIGHT_EARLY_ENV, "0")
    assert not cuda_linear.weight_early("sm90_fp8_gemm_wgmma", 128)


@needs_swapab
def test_lowbit_info_says_whether_weights_load_early(monkeypatch, capsys):
    for value, state in (("1", "on here"), ("0", "off here")):
        text = info_text(monkeypatch, capsys, cuda_linear.WEIGHT_EARLY_ENV, value)
        for family in ("fp8", "int8"):
            assert (f"early weights: sm90_{family}_gemm_swapab and sm90_{family}_gemm_wgmma "
                    "start their weight loads" in " ".join(text.split()))
        assert f"{cuda_linear.WEIGHT_EARLY_ENV}=1 ({state})" in text
        assert "while it is unset" not in text
    # Unset: the default, with the wgmma GEMMs' row limit named.
    from lowbit.cli import main

    monkeypatch.delenv(cuda_linear.WEIGHT_EARLY_ENV, raising=False)
    assert main(["info"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    limit = f"to M = {cuda_linear.WGMMA_EARLY_MAX_M} while it is unset"
    for family in ("fp8", "int8"):
        assert (f"sm90_{family}_gemm_wgmma {limit}" in text) == \
            cuda_linear.WEIGHT_EARLY_BY_DEFAULT, text


@needs_swapab
def test_the_launch_objects_carry_the_flag():
    q = cuda._C.QuantizeLaunch(kernel_id("cuda_fp8_quant_per_token"), DTYPE_CODE[torch.bfloat16],
                               4, 256, 256, 1, FP8_FORMAT_CODE["e4m3fn"], True, 1, 0, True)
    g = cuda._C.GemmLaunch(kernel_id("sm90_fp8_gemm_swapab"), 4, 96, 256, 256, 256, 1, 0, 1, 1,
                           0, 1, 0, DTYPE_CODE[torch.bfloat16], 96, False)
    assert cuda._C.Fp8LinearLaunch(q, g, 256, -1, -1, True).weight_early is True
    assert cuda._C.Fp8LinearLaunch(q, g, 256, -1).weight_early is False
    iq = cuda._C.Int8QuantizeLaunch(kernel_id("cuda_int8_quant_per_token"),
                                    DTYPE_CODE[torch.float16], 4, 256, 256, 1, True, 1, 0)
    ig = cuda._C.Int8GemmLaunch(kernel_id("sm90_int8_gemm_swapab"), 4, 96, 256, 256, 256, True,
                                True, 0, 0, DTYPE_CODE[torch.float16], 96)
    assert cuda._C.Int8LinearLaunch(iq, ig, 256, -1, -1, -1, True).weight_early is True
    assert cuda._C.Int8LinearLaunch(iq, ig, 256, -1, -1).weight_early is False


# ------------------------------------------------------------------- bit for bit on a GPU
# Swap-AB (M <= 64): one CTA per tile with K split over a cluster; no split; 157 tiles of 16
# steps on 132 SMs (CTAs walk two tiles, the early stages span a tile's end at small K);
# K % 128 != 0.
SHAPES = [(4096, 256), (896, 9000), (2048, 20000), (400, 200)]
SHAPE_IDS = ["k-split", "no-split", "tiles-per-cta", "k-tail"]
MS = [1, 2, 5, 8, 9, 16, 17, 31, 32, 33, 48, 63, 64]
# The wgmma kernel (M > 64), persistent over 128 x 128 tiles on a 132-SM card: 32-64 CTAs
# of 32 steps (160 tiles at M = 513); tiles of 2 steps, 128-640 of them (from M = 200 CTAs
# walk several, and the first ring of 6 stages spans 3 tiles); K, N and M tails; 8 steps
# over 64-320 tiles (several a CTA at M = 513).
WGMMA_SHAPES = [(4096, 4096), (256, 16384), (400, 1000), (1024, 8192)]
WGMMA_SHAPE_IDS = ["few-ctas", "ring-spans-tiles", "tails", "tiles-per-cta"]
WGMMA_MS = [65, 128, 200, 256, 513]


def _on_hopper():
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the swap-AB kernel runs on sm_90a")


def _two_ops(mod, x):
    return (fp8_two_ops if isinstance(mod, Fp8Linear) else int8_two_ops)(mod, x)


def _module(family, k, n, dtype, gemm="swapab"):
    torch.manual_seed(k + n)
    lin = nn.Linear(k, n, bias=family == "fp8").to("cuda", dtype)
    if family == "fp8":
        return Fp8Linear.from_linear(lin), FP8_STEP.replace("swapab", gemm)
    return Int8Linear.from_linear(lin, act_symmetric=True), INT8_STEP.replace("swapab", gemm)


@pytest.mark.gpu
@needs_swapab
@pytest.mark.parametrize("family", ["fp8", "int8"])
@pytest.mark.parametrize("path", ["python", "plans"])
@pytest.mark.parametrize("gemm,k,n", [("swapab",) + s for s in SHAPES]
                         + [("wgmma",) + s for s in WGMMA_SHAPES],
                         ids=SHAPE_IDS + ["wgmma-" + i for i in WGMMA_SHAPE_IDS])
def test_early_weights_are_the_two_ops(early_on, monkeypatch, gemm, k, n, path, family):
    _on_hopper()
    if path == "python":
        from lowbit.nn import _layer
        monkeypatch.setattr(_layer, "_MODULE_ENTRY", {})
    mod, name = _module(family, k, n, torch.bfloat16, gemm)
    for m in MS if gemm == "swapab" else WGMMA_MS:
        x = rows(m, k, torch.bfloat16, seed=m)
        mod(x)  # the checked ops, which prepare the step
        y = mod(x)
        if path == "python":
            assert mod._step.run.__name__ == name and mod._step.run.weight_early, m
        assert torch.equal(y, _two_ops(mod, x)), f"M = {m}"


@pytest.mark.gpu
@needs_swapab
@pytest.mark.parametrize("family", ["fp8", "int8"])
@pytest.mark.parametrize("m", [4, 128])  # swap-AB, wgmma
def test_a_weight_written_just_before_is_read_new(early_on, family, m):
    """The weight rewritten in place by a kernel (an elementwise xor, not a copy, which the
    stream would order more strictly) right before the forward, eagerly and inside a
    captured graph: every output is the new weight's."""
    _on_hopper()
    mod, name = _module(family, 4096, 2048, torch.bfloat16, "swapab" if m <= 64 else "wgmma")
    bits = mod.weight.view(torch.uint8)
    weights = [bits.clone(), bits.flip(0).contiguous()]
    zero = torch.zeros_like(bits)

    def write(w):  # one elementwise kernel that writes the weight's bytes
        torch.bitwise_xor(w, zero, out=bits)

    x = rows(m, 4096, torch.bfloat16, seed=1)
    from lowbit.nn import _layer
    with pytest.MonkeyPatch.context() as mp:  # the Python path names the step it prepared
        mp.setattr(_layer, "_MODULE_ENTRY", {})
        mod(x)
        mod(x)
        assert mod._step.run.__name__ == name and mod._step.run.weight_early
    mod(x)
    want = []
    for w in weights:
        write(w)
        want.append(_two_ops(mod, x))
    assert not torch.equal(want[0], want[1])
    for i in range(6):
        write(weights[i % 2])
        assert torch.equal(mod(x), want[i % 2]), i
    src = weights[0].clone()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        write(src)
        out = mod(x)
    for i in range(6):
        src.copy_(weights[i % 2])
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, want[i % 2]), i
