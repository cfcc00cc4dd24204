"""The Triton int4 weight quantizer (triton_kernels/int4_quant.py), bit-exact against the
NumPy reference like the CUDA kernel: codes, scales and zero points for every group size,
both zero-point modes, the three input dtypes, strided and offset weights, special values
and empty weights. Without a GPU it runs under TRITON_INTERPRET=1; the compile test builds
it for Hopper, Ampere and MI300X from any machine."""
import pytest
import torch

from lowbit_testing import (GPU_TARGETS, LAYOUTS, check_int4_quantize,
                            compile_checks_in_fresh_process, compile_kernel,
                            int4_edge_group as edge_group, special_data, with_layout)

triton = pytest.importorskip("triton", reason="triton is not installed")
import lowbit  # noqa: E402

pytestmark = [pytest.mark.usefixtures("triton_interpreter")]
DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32],
                                 ids=["bf16", "fp16", "fp32"])
SYMS = pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])


def check(w, group, symmetric, what=""):
    return check_int4_quantize(w, group, symmetric, "triton", what)


@pytest.mark.parametrize("group", [32, 64, 128, -1], ids=["g32", "g64", "g128", "channel"])
@SYMS
@DTYPES
def test_special_values(group, symmetric, dtype):
    """NaN, +-Inf, subnormals, -0, an all-zero row and a row whose scale underflows (fp16
    scales round to 0 and become 1); 37 rows, so the last row block is partial."""
    check(special_data((37, 384), dtype, seed=group, device=DEV), group, symmetric,
          f"G={group} {dtype}")


@pytest.mark.parametrize("k", [96, 4224, 8192])
@SYMS
def test_per_channel_rows_in_pieces(k, symmetric):
    """One group per row (group_size -1, held as K): the statistic over the row's pieces of
    up to 128, then each piece encoded; K = 96 is one piece of 32 x 3, 4224 = 33 x 128."""
    check(special_data((21, k), torch.bfloat16, seed=k, device=DEV), -1, symmetric, f"K={k}")


@pytest.mark.parametrize("layout", LAYOUTS)
@SYMS
def test_layouts(layout, symmetric):
    for dtype in (torch.bfloat16, torch.float32):
        w = with_layout(special_data((19, 256), dtype, seed=7, device=DEV), layout)
        check(w, 64, symmetric, f"{layout} {dtype}")


@pytest.mark.parametrize("shape", [(0, 128), (5, 0)], ids=str)
@SYMS
def test_empty(shape, symmetric):
    check(torch.randn(shape, device=DEV), 32, symmetric, str(shape))


@pytest.mark.parametrize("case", ["subnormal_min", "fp16_scale_to_zero"])
def test_edge_groups(case):
    """What special_data does not hold: an asymmetric group whose only nonzero is a subnormal
    minimum (its zero point divides that subnormal: 1, not the 0 a flush to zero gives), and
    an fp16 group whose scale 2^-24 / 7 rounds to 0 in fp16 and becomes 1."""
    check(*edge_group(case, DEV), case)


def test_explain_names_the_kernel():
    w = torch.randn(8, 128, device=DEV)
    assert lowbit.explain(lowbit.int4_quantize, w, backend="triton").kernel == \
        "triton_int4_quantize"


def compile_checks(target) -> None:
    """Compile the kernel for ``target`` (GPUTarget's arguments) with every constexpr
    combination a launch can take."""
    from lowbit.triton_kernels import int4_quant

    kern = int4_quant._int4_quant_kernel
    combos = [(s_kind, x_bf16, w_ty, asym, group)
              for s_kind, x_bf16, w_ty in ((0, False, "*fp32"), (1, True, "*i16"),
                                           (2, False, "*fp16"))
              for asym in (False, True) for group in (128, 4224)]  # a group, a row (33 pieces)
    for s_kind, x_bf16, w_ty, asym, group in combos:
        const = dict(G=group, CHUNK=int4_quant._chunk(group), BLOCK_N=int4_quant.BLOCK_N,
                     X_BF16=x_bf16,
                     S_KIND=s_kind, ASYM=asym)
        ptrs = dict(w_ptr=w_ty, q_ptr="*u8", z_ptr="*u8",
                    s_ptr={0: "*fp32", 1: "*i16", 2: "*fp16"}[s_kind])
        sig = {a: "constexpr" if a in const else ptrs.get(a, "i64")
               for a in kern.arg_names}
        compile_kernel(kern, target, sig, const,
                       options=dict(num_warps=4, enable_fp_fusion=False,
                                    enable_reflect_ftz=False))


@pytest.mark.parametrize("target", [GPU_TARGETS[t] for t in ("sm90", "sm80", "gfx942")],
                         ids=["sm90", "sm80", "gfx942"])
def test_compiles_for_gpu_targets(target):
    """In a fresh process: this one may hold triton imported for the interpreter."""
    compile_checks_in_fresh_process(__file__, target)


@pytest.mark.parametrize("hip", [False, True], ids=["nvidia", "amd"])
def test_launch_options_are_the_backends_own(monkeypatch, hip):
    """A Triton launch given an option its backend does not define raises, so the quantizers'
    launch options must be fields of the GPU backend's options class (NVIDIA's CUDAOptions,
    AMD's HIPOptions) as this Triton defines them."""
    from lowbit.triton_kernels import _common

    if hip:
        from triton.backends.amd.compiler import HIPOptions as Options
        monkeypatch.setattr(torch.version, "hip", "6.0")
    else:
        from triton.backends.nvidia.compiler import CUDAOptions as Options
        monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(_common, "interpreting", lambda: False)
    for codec in (_common.FP8, _common.INT8, _common.INT8_ASYM):
        assert set(_common._launch_options(codec)) <= set(Options.__dataclass_fields__)
