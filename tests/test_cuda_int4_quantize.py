"""The CUDA int4 weight quantizer (csrc/wxa16/int4_quant.cu, lowbit/backends/cuda/
int4_quantize.py), bit-exact against the NumPy reference: packed codes, scales (in the
weight's half dtype, fp32 for fp32) and zero points, for every group size, symmetric and
asymmetric, the three input dtypes, every memory layout (16-byte vector and element paths),
special values (NaN, +-Inf, subnormals, -0, all-zero and tiny rows) and empty weights; and
what uses it on a GPU (``auto``, ``Int4Linear.from_linear``, ``awq``). GPU tests are marked
``gpu``; the tests at the end run without one."""
from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit_testing import (LAYOUTS, assert_bits_equal, check_int4_quantize, int4_edge_group,
                            special_data, with_layout)

gpu = pytest.mark.gpu
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DTYPE_PARAMS = pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16", "fp32"])
SYMS = pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
GROUPS = pytest.mark.parametrize("group", [32, 64, 128])


def check(w, group, symmetric, what=""):
    return check_int4_quantize(w, group, symmetric, "cuda", what)


@gpu
@GROUPS
@SYMS
@DTYPE_PARAMS
def test_special_values(group, symmetric, dtype):
    """Wide-range random weights with NaN, +-Inf, subnormals, -0, an all-zero row and a row
    whose scale underflows (fp16 scales round to 0 and become 1, as in the reference)."""
    w = special_data((260, 1152), dtype, seed=group, device="cuda")
    check(w, group, symmetric, f"G={group} {dtype}")


@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 128), (37, 384), (3, 4224)], ids=str)
@SYMS
def test_layouts(layout, shape, symmetric):
    """Contiguous aligned rows load in 16-byte vectors; transposed, sliced, offset and
    misaligned rows element by element through the strides."""
    for dtype in (torch.bfloat16, torch.float32):
        w = with_layout(special_data(shape, dtype, seed=shape[1], device="cuda"), layout)
        for group in (32, 128):
            check(w, group, symmetric, f"{layout} {shape} G={group} {dtype}")


@gpu
@pytest.mark.parametrize("shape", [(0, 128), (5, 0), (0, 0)], ids=str)
@SYMS
def test_empty(shape, symmetric):
    w = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    got = check(w, 32, symmetric, f"{shape}")
    assert tuple(got.qweight.shape) == (shape[0], shape[1] // 2)


@gpu
@pytest.mark.parametrize("case", ["subnormal_min", "fp16_scale_to_zero"])
def test_edge_groups(case):
    """A zero point from a subnormal minimum, and an fp16 scale that rounds to 0."""
    check(*int4_edge_group(case, "cuda"), case)


@gpu
def test_many_rows_stride_over_the_grid():
    """More 8-element pieces (16387 x 80 = 1,310,960) than the launch's 4096 CTAs x 256
    threads: the warps loop over the rest."""
    w = torch.randn(16387, 640, device="cuda") * 0.02
    check(w, 64, False, "16387x640")


@gpu
def test_auto_picks_the_kernel_and_linear_uses_it():
    """On a CUDA tensor ``auto`` runs the kernel (int4_quantize's only GPU one), so
    ``Int4Linear.from_linear`` quantizes a GPU weight on the GPU, to the same bits."""
    w = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    assert "cuda_int4_quantize" in str(lowbit.explain(lowbit.int4_quantize, w))
    lin = torch.nn.Linear(512, 256, dtype=torch.bfloat16, device="cuda")
    mod = lowbit.nn.Int4Linear.from_linear(lin, group_size=64, symmetric=False, prepack=False)
    want = lowbit.int4_quantize(lin.weight.detach().cpu(), group_size=64, symmetric=False)
    assert_bits_equal(mod.qweight, want.qweight, "Int4Linear codes")
    assert_bits_equal(mod.scales, want.scales, "Int4Linear scales")
    assert_bits_equal(mod.zeros, want.zeros, "Int4Linear zeros")


@gpu
def test_dequantize_on_the_gpu_matches_the_host():
    w = torch.randn(48, 256) * 0.1
    q = lowbit.int4_quantize(w, group_size=32, symmetric=False)
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    q = lowbit.Int4Weight(q.qweight, q.scales, q.zeros, 32, perm)
    d = q.to("cuda").prepack().dequantize()
    assert d.device.type == "cuda"
    assert_bits_equal(d, q.dequantize(), "dequantized")


# --------------------------------------------------------------------- without a GPU
def test_the_kernel_is_registered():
    by_backend = {k.backend: k.name for k in lowbit._backend.kernels("int4_quantize")}
    assert by_backend.get("cuda") == "cuda_int4_quantize"
    assert "reference" in by_backend


def test_dequantize_matches_the_reference_values():
    """Int4Weight.dequantize (tensor ops, on the weight's device) gives the reference's
    (u - z) * scale, bit for bit, for both zero-point modes and act order."""
    from lowbit import reference as R
    w = torch.randn(24, 192) * 0.3
    for symmetric in (True, False):
        q = lowbit.int4_quantize(w.to(torch.float16), group_size=64, symmetric=symmetric)
        want = R.dequantize_int4(q.qweight.numpy(), q.scales.float().numpy(),
                                 None if q.zeros is None else q.zeros.numpy(), 64)
        assert_bits_equal(q.dequantize(), torch.from_numpy(want), f"sym={symmetric}")
        perm = torch.randperm(192, generator=torch.Generator().manual_seed(1))
        qp = lowbit.Int4Weight(q.qweight, q.scales, q.zeros, 64, perm)
        inv = torch.argsort(perm)
        assert_bits_equal(qp.dequantize(), torch.from_numpy(want)[:, inv], "act order")


@pytest.mark.parametrize("shape", [(0, 128), (5, 0), (0, 0)], ids=str)
@SYMS
def test_reference_takes_empty_weights(shape, symmetric):
    """The reference (the GPU tests' oracle) on weights with no rows or no columns."""
    q = lowbit.int4_quantize(torch.randn(shape), group_size=32, symmetric=symmetric)
    assert tuple(q.qweight.shape) == (shape[0], shape[1] // 2)
    assert tuple(q.dequantize().shape) == shape
    assert tuple(q.prepack().dequantize().shape) == shape
    assert tuple(q.scales.shape) == (shape[0], shape[1] // 32)
    assert symmetric == (q.zeros is None)


def test_edge_groups_reach_their_edge():
    """The edge groups hold what they claim, on the reference: a zero point of 1 from the
    subnormal minimum, a scale of 1 where fp16 rounds 2^-24 / 7 to 0."""
    w, g, sym = int4_edge_group("subnormal_min")
    q = lowbit.int4_quantize(w, group_size=g, symmetric=sym)
    assert q.zeros[0, 0].item() == 1 and q.scales[0, 0].item() == 2.0 ** -126
    w, g, sym = int4_edge_group("fp16_scale_to_zero")
    q = lowbit.int4_quantize(w, group_size=g, symmetric=sym)
    assert q.scales[0, 0].item() == 1.0


@gpu
def test_per_channel_quantizes_on_triton_and_runs_on_the_cuda_kernels():
    """One group per row (group_size -1): the CUDA quantizer declines it (its warps reduce
    groups of at most 128), so ``auto`` runs the Triton one, bit-exact with the reference;
    the prepacked module then runs the CUDA GEMMs (group 0 there: one scale per row), close
    to the float64 product of its weight."""
    w = torch.randn(96, 512, device="cuda", dtype=torch.bfloat16)
    choice = lowbit.explain(lowbit.int4_quantize, w, group_size=-1)
    assert choice.kernel == "triton_int4_quantize" and "per channel" in str(choice), str(choice)
    check_int4_quantize(w, -1, False, None, "per channel on the GPU")
    lin = torch.nn.Linear(512, 96, dtype=torch.bfloat16, device="cuda")
    mod = lowbit.nn.Int4Linear.from_linear(lin, group_size=-1, symmetric=False)
    want = lowbit.int4_quantize(lin.weight.detach().cpu(), group_size=-1, symmetric=False)
    assert mod.layout != "canonical" and mod.group_size == 512
    assert_bits_equal(mod.scales, want.scales.cuda(), "per-channel scales")
    assert_bits_equal(mod.zeros, want.zeros.cuda(), "per-channel zeros")
    for m in (1, 16, 40):  # decode, then dequantize + cuBLAS
        x = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16)
        y = mod(x)
        ref = x.double() @ want.dequantize(torch.float64).cuda().T + lin.bias.double()
        assert ((y.double() - ref).norm() / ref.norm()).item() <= 1e-2, m
