"""The Triton INT8 kernels against the reference: what is theirs alone. The cases every INT8
kernel must pass are in test_int8_kernels.py.

The Triton int8_gemm's epilogue is the reference's operation for operation (exact int32 /
int64 accumulation and zero-point correction, one rounding to fp32, two fp32 multiplies
and an fp32 add with no FMA contraction, one rounding to the output dtype), so it is held
to the reference bit for bit here, tighter than the SPEC's tolerance.
"""
import itertools

import pytest
import torch

from lowbit_testing import assert_bits_equal

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"

triton = pytest.importorskip("triton", reason="triton is not installed")
import lowbit  # noqa: E402
from lowbit.triton_kernels import heuristics, int8_gemm  # noqa: E402

pytestmark = [pytest.mark.usefixtures("triton_interpreter"),
              pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")]
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _cpu(t):
    return None if t is None else t.cpu()


def _operands(m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    sa = torch.rand(m, 1, generator=g) * 0.02 + 0.001
    sb = torch.rand(n, 1, generator=g) * 0.002 + 1e-4
    za = torch.randint(-128, 128, (m, 1), generator=g, dtype=torch.int32)
    bias = torch.randn(n, generator=g) * 3
    return [t.to(DEVICE) for t in (a, b, sa, sb, za, bias)]


@pytest.mark.parametrize("mnk", [(17, 40, 136), (3, 5, 300)] + (
    [(100, 3000, 4104), (1, 3000, 4104)] if HAS_CUDA else []),
    ids=lambda s: "x".join(map(str, s)))
def test_int8_gemm_bit_exact(mnk):
    """Every epilogue and output dtype: the reference's bits."""
    a, b, sa, sb, za, bias = _operands(*mnk)
    for a_s, b_s, z, bb, od in itertools.product(
            (sa, sa[0, 0]), (sb, sb[0, 0]), (None, za[0, 0], za), (None, bias), FLOATS):
        got = lowbit.int8_gemm(a, b, a_s, b_s, bb, out_dtype=od, a_zero=z, backend="triton")
        want = lowbit.int8_gemm(a.cpu(), b.cpu(), a_s.cpu(), b_s.cpu(), _cpu(bb),
                                out_dtype=od, a_zero=_cpu(z), backend="reference")
        assert_bits_equal(got, want, f"{tuple(a_s.shape)} {tuple(b_s.shape)} zero="
                          f"{None if z is None else tuple(z.shape)} bias={bb is not None} {od}")


def test_int8_gemm_precomputed_row_sums():
    """A b_sum computed once (as a module passes it) gives the same bits as the one the
    kernel computes; a wrong one shows (it is used, not recomputed)."""
    a, b, sa, sb, za, bias = _operands(17, 40, 136, seed=3)
    b_sum = int8_gemm.row_sums(b)
    assert torch.equal(b_sum.cpu(), b.cpu().long().sum(dim=1).int())
    own = int8_gemm.int8_gemm(a, b, sa, sb, bias, torch.float32, za)
    given = int8_gemm.int8_gemm(a, b, sa, sb, bias, torch.float32, za, b_sum=b_sum)
    assert torch.equal(own, given)
    wrong = int8_gemm.int8_gemm(a, b, sa, sb, bias, torch.float32, za, b_sum=b_sum + 1)
    assert not torch.equal(own, wrong)


def test_int8_gemm_zero_correction_past_int32():
    """The zero-point correction leaves int32's range (a - z reaches 255): at K = 70000 on a
    GPU, acc - z * b_sum = 255 * 127 * K > 2^31 must come out exactly, rounded once to
    fp32 (an int32 wrap would show as a sign flip)."""
    k = 70000 if HAS_CUDA else 512
    a = torch.full((2, k), 127, dtype=torch.int8, device=DEVICE)
    b = torch.full((3, k), 127, dtype=torch.int8, device=DEVICE)
    z = torch.tensor(-128, dtype=torch.int32, device=DEVICE)
    one = torch.tensor(1.0, device=DEVICE)
    out = int8_gemm.int8_gemm(a, b, one, one, None, torch.float32, z)
    want = torch.tensor(float(255 * 127 * k), dtype=torch.float32)
    assert torch.equal(out.cpu(), want.expand(2, 3))


@pytest.mark.parametrize("cfg", [
    heuristics.GemmConfig(64, 128, 128, 8, 4, 4), heuristics.GemmConfig(128, 64, 128, 8, 4, 6),
    heuristics.GemmConfig(128, 128, 64, 8, 8, 6), heuristics.GemmConfig(64, 256, 128, 8, 8, 4)],
    ids=lambda c: f"{c.block_m}x{c.block_n}x{c.block_k}w{c.num_warps}s{c.num_stages}")
def test_int8_gemm_other_tiles(cfg):
    """Tiles other than the table's (the ones bench/sweep_triton_gemm.py --op int8 times for
    it): the reference's bits, over ragged edges and several K-steps."""
    m, n, k = (200, 300, 1040) if HAS_CUDA else (70, 200, 392)
    a, b, sa, sb, za, bias = _operands(m, n, k, seed=5)
    for z in (None, za):
        got = int8_gemm.int8_gemm_launcher(a, b, sa, sb, bias, torch.bfloat16, z, config=cfg)(
            a, b, sa, sb, bias, torch.bfloat16, z)
        want = lowbit.int8_gemm(a.cpu(), b.cpu(), sa.cpu(), sb.cpu(), bias.cpu(),
                                out_dtype=torch.bfloat16, a_zero=_cpu(z), backend="reference")
        assert_bits_equal(got, want, f"zero={z is not None}")


def test_int8_gemm_table():
    """The table's tiles shrink to the problem, never below tl.dot's 16, and fit the shared
    memory they are given."""
    assert heuristics.int8_gemm_config(1, 3, 136).block_n == 16
    assert heuristics.int8_gemm_config(1, 3, 136).block_m == 16
    big = heuristics.int8_gemm_config(8192, 8192, 8192)
    assert (big.block_m, big.block_n, big.block_k) == (128, 256, 128)
    for m in (1, 16, 17, 64, 100, 128, 4096):
        cfg = heuristics.int8_gemm_config(m, 8192, 8192, smem_limit=99 * 1024)
        assert heuristics.gemm_smem_bytes(cfg) + heuristics.SMEM_MARGIN <= 99 * 1024, cfg


def test_explain_names_the_kernels():
    x = torch.randn(17, 256, device=DEVICE)
    for gran, name in (("tensor", "triton_int8_quant_per_tensor"),
                       ("token", "triton_int8_quant_per_token"),
                       ("group", "triton_int8_quant_per_group")):
        got = lowbit.explain(lowbit.quantize_int8, x, granularity=gran, backend="triton")
        assert got.kernel == name
    a = torch.zeros(4, 32, dtype=torch.int8, device=DEVICE)
    assert lowbit.explain(lowbit.int8_mm, a, a, backend="triton").kernel == "triton_int8_mm"
