"""Runners for the torch anchors of PERF.md: what torch alone gives a user, on the same card.

Each runner builds random inputs in the real value range on the GPU (never zeros: they run
faster and hide unwritten outputs), calls the op once, and returns a `Case`: the zero-arg
callable to time, the inputs (which lowbit candidates reuse, so outputs are comparable), the
anchor's output, and the byte/flop counts for the two floors. A runner never raises: a
failure (torch refusing a shape, an op missing from this torch build, out of memory) is
recorded in `Case.error`, and the benchmark goes on to the next row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
INT4_GROUP = 128


@dataclass
class Case:
    op: str  # the anchor's name; also the key of candidates.CANDIDATES
    shape: tuple  # (M, N, K) for GEMMs, (rows, cols) for casts
    flops: int = 0  # 2*M*N*K; 0 for casts (memory-bound only)
    weight_bytes: int = 0  # the [N, K] weight as stored: the stream a small-M GEMM is bound by
    bytes_moved: int = 0  # every input read once and every output written once
    ceiling: str = "bw"  # compute peak that applies: "bf16", "fp8", "int8"; "bw": memory only
    fn: Callable[[], Any] | None = None
    inputs: dict = field(default_factory=dict)
    out: Any = None  # the output of the validation call
    error: str | None = None

    @property
    def shape_str(self) -> str:
        return "x".join(str(s) for s in self.shape)

    def release(self) -> None:
        self.fn, self.inputs, self.out = None, {}, None


def error_text(e: BaseException, limit: int = 240) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:limit]


def _build(case: Case, make: Callable[[], tuple]) -> Case:
    """make() -> (fn, inputs). The validation call surfaces errors, and compiles, here."""
    try:
        fn, case.inputs = make()  # inputs kept even if torch refuses: candidates still run
        out = fn()
        torch.cuda.synchronize()
        case.fn, case.out = fn, out
    except Exception as e:  # noqa: BLE001 - every failure becomes a row, never an abort
        case.error = error_text(e)
    return case


# Random operands in the ranges real models produce.
def _bf16(*shape, std=1.0):
    return (torch.randn(shape, device="cuda") * std).to(torch.bfloat16)


def _fp8(*shape):
    # A scaled activation/weight uses the whole e4m3 range: std 64 reaches ~448 at 7 sigma.
    return (torch.randn(shape, device="cuda") * 64).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def _int8(*shape):
    return torch.randint(-127, 128, shape, dtype=torch.int8, device="cuda")


def rand_scales(*shape):
    return torch.rand(shape, device="cuda") * 0.01 + 0.005  # fp32, never 0


def _gemm_case(op, M, N, K, ceiling, a_bytes, w_bytes, out_bytes, extra_bytes=0) -> Case:
    return Case(op, (M, N, K), flops=2 * M * N * K, weight_bytes=w_bytes,
                bytes_moved=a_bytes + w_bytes + out_bytes + extra_bytes, ceiling=ceiling)


# ---------------------------------------------------------------- GEMMs: a [M, K] x w[N, K]^T
def linear_bf16(M: int, N: int, K: int) -> Case:
    case = _gemm_case("linear_bf16", M, N, K, "bf16", 2 * M * K, 2 * N * K, 2 * M * N)

    def make():
        x, w = _bf16(M, K), _bf16(N, K, std=0.02)
        return (lambda: F.linear(x, w)), dict(x=x, w=w)
    return _build(case, make)


def int_mm(M: int, N: int, K: int) -> Case:
    """torch._int_mm, cuBLASLt int8 -> int32. It refuses M <= 16 (recorded as 'refused')."""
    case = _gemm_case("int_mm", M, N, K, "int8", M * K, N * K, 4 * M * N)

    def make():
        a, b = _int8(M, K), _int8(N, K)
        return (lambda: torch._int_mm(a, b.t())), dict(a=a, b=b)  # b.t(): column-major [K, N]
    _build(case, make)
    if case.error and M <= 16:
        case.error = "refused (M <= 16): " + case.error
    return case


def _scaled_mm(op, M, N, K, a_scale_shape, b_scale_shape) -> Case:
    n_scales = torch.Size(a_scale_shape).numel() + torch.Size(b_scale_shape).numel()
    case = _gemm_case(op, M, N, K, "fp8", M * K, N * K, 2 * M * N, 4 * n_scales)

    def make():
        a, b = _fp8(M, K), _fp8(N, K)
        sa, sb = rand_scales(*a_scale_shape), rand_scales(*b_scale_shape)
        # cuBLASLt fp8 runs only "TN": b must be column-major, i.e. the [N, K] weight transposed.
        fn = lambda: torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
        return fn, dict(a=a, b=b, a_scale=sa, b_scale=sb)
    return _build(case, make)


def scaled_mm_tensor(M: int, N: int, K: int) -> Case:
    """torch._scaled_mm fp8 e4m3, one fp32 scale per tensor (0-d), bf16 out, no fast accum."""
    return _scaled_mm("scaled_mm_tensor", M, N, K, (), ())


def scaled_mm_row(M: int, N: int, K: int) -> Case:
    """torch._scaled_mm rowwise: a_scale [M, 1], b_scale [1, N] fp32 (torch's layout), bf16 out."""
    return _scaled_mm("scaled_mm_row", M, N, K, (M, 1), (1, N))


def int4_dequant(qweight: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """SPEC canonical int4 (even k in the low nibble, zero point 8) -> fp32 [N, K]."""
    u = torch.stack([qweight & 0xF, qweight >> 4], dim=-1).reshape(qweight.shape[0], -1)
    return (u.float() - 8) * scales.float().repeat_interleave(group, dim=1)


def int4pack_mm(M: int, N: int, K: int, group: int = INT4_GROUP) -> Case:
    """torch._weight_int4pack_mm (tinygemm), W4A16 with bf16 scales per group of 128.

    The weight is drawn in lowbit's canonical layout (SPEC) and converted to tinygemm's, so a
    lowbit W4A16 candidate can compute the same product. tinygemm dequantizes
    (u - 8) * scale + zero; with zero = 0 that is SPEC's symmetric int4.
    """
    case = _gemm_case("int4pack_mm", M, N, K, "bf16", 2 * M * K, N * K // 2, 2 * M * N,
                      4 * N * (K // group))  # bf16 scale + bf16 zero per group

    def make():
        x = _bf16(M, K)
        u = torch.randint(1, 16, (N, K), dtype=torch.uint8, device="cuda")  # q = u - 8 in [-7, 7]
        # A +7 in every group makes absmax / 7 give back `scales` exactly, so a candidate
        # that requantizes int4_dequant(...) gets the very same codes and scales.
        u[:, ::group] = 15
        qweight = u[:, 0::2] | (u[:, 1::2] << 4)
        del u
        scales = rand_scales(N, K // group).to(torch.bfloat16)
        # tinygemm takes [N, K/2] uint8 with even k in the HIGH nibble (torchao's packing),
        # and [K/G, N, 2] bf16 (scale, zero).
        packed = torch._convert_weight_to_int4pack((qweight >> 4) | (qweight << 4), 2)
        sz = torch.stack([scales.t(), torch.zeros_like(scales.t())], dim=-1).contiguous()
        fn = lambda: torch._weight_int4pack_mm(x, packed, group, sz)
        return fn, dict(x=x, qweight=qweight, scales=scales, group_size=group)
    return _build(case, make)


GEMM_ANCHORS: dict[str, Callable[[int, int, int], Case]] = {
    "linear_bf16": linear_bf16,  # first: the other rows' vs_bf16 needs its time
    "int_mm": int_mm,
    "scaled_mm_tensor": scaled_mm_tensor,
    "scaled_mm_row": scaled_mm_row,
    "int4pack_mm": int4pack_mm,
}


def rel_err(out, ref) -> float | None:
    """Relative Frobenius error of out against ref (first elements of tuples), else None."""
    out = out[0] if isinstance(out, (tuple, list)) else out
    ref = ref[0] if isinstance(ref, (tuple, list)) else ref
    if not (isinstance(out, torch.Tensor) and isinstance(ref, torch.Tensor)) or out.shape != ref.shape:
        return None
    o, r = out.double(), ref.double()
    return ((o - r).norm() / r.norm().clamp_min(1e-30)).item()


def check_gemm_anchors(M: int = 64, N: int = 256, K: int = 512) -> dict:
    """Each GEMM anchor against float64 from the same operands: proof that it computes the
    product we think (layouts, the int4 nibble order), not a timing. op -> error or message."""
    result = {}
    for op, runner in GEMM_ANCHORS.items():
        case = runner(M, N, K)
        if case.error:
            result[op] = case.error
            continue
        i = case.inputs
        try:
            if op == "int4pack_mm":
                w = int4_dequant(i["qweight"], i["scales"], i["group_size"])
            else:
                w = i.get("w", i.get("b"))
            a = i.get("x", i.get("a")).float().double()
            ref = a @ w.float().double().t()
            if "a_scale" in i:
                ref = ref * i["a_scale"].double() * i["b_scale"].double()
            result[op] = rel_err(case.out, ref)
        except Exception as e:  # noqa: BLE001
            result[op] = error_text(e)
        case.release()
    return result


# ------------------------------------------------------------------- casts and quantization
# Compiled once per process; dynamic=False so each shape gets its own specialised kernel
# (what a serving stack with static shapes runs), compiled on its first call in _build.
def _scaled_cast(x, s):
    return (x / s).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def _fp8_dynamic_tensor(x):
    amax = x.abs().amax().float()
    scale = torch.where(amax > 0, amax / FP8_MAX, 1.0)
    return (x.float() * (1.0 / scale)).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def _int8_dynamic_token(x):
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / 127.0, 1.0)
    return (x.float() * (1.0 / scale)).round().clamp(-127, 127).to(torch.int8), scale


_compiled: dict[Callable, Callable] = {}


def compiled(f: Callable) -> Callable:
    if f not in _compiled:
        _compiled[f] = torch.compile(f, dynamic=False)
    return _compiled[f]


def _cast_case(op, R, C, make, out_bytes_per_elem=1, extra_bytes=0) -> Case:
    # Bytes: read bf16 once, write the 1-byte result once. Dynamic quantization needs two
    # passes over x (amax, then cast) but is charged one: its GB/s is "effective", as in PERF.md.
    case = Case(op, (R, C), bytes_moved=R * C * (2 + out_bytes_per_elem) + extra_bytes)
    return _build(case, make)


def _activations(R, C):
    return _bf16(R, C, std=1.0)


def cast_fp8(R: int, C: int) -> Case:
    """bf16 -> fp8 `.to()` with no scale: the bandwidth a cast can reach."""
    def make():
        x = _activations(R, C)
        return (lambda: x.to(FP8)), dict(x=x)
    return _cast_case("cast_fp8", R, C, make)


def _static_scale():
    # What a calibrated static scale looks like for unit-variance activations: amax ~ 5.
    return torch.tensor(5.0 / FP8_MAX, device="cuda")


def scaled_cast_eager(R: int, C: int) -> Case:
    """(x / s).clamp(-448, 448).to(fp8) in eager: three kernels, intermediates in DRAM."""
    def make():
        x, s = _activations(R, C), _static_scale()
        return (lambda: _scaled_cast(x, s)), dict(x=x, scale=s)
    return _cast_case("scaled_cast_eager", R, C, make)


def scaled_cast_compile(R: int, C: int) -> Case:
    """The same scaled cast under torch.compile (one fused Triton kernel)."""
    def make():
        x, s, f = _activations(R, C), _static_scale(), compiled(_scaled_cast)
        return (lambda: f(x, s)), dict(x=x, scale=s)
    return _cast_case("scaled_cast_compile", R, C, make)


def fp8_tensor_dyn_compile(R: int, C: int) -> Case:
    """Dynamic per-tensor fp8 (amax, then scaled cast) under torch.compile."""
    def make():
        x, f = _activations(R, C), compiled(_fp8_dynamic_tensor)
        return (lambda: f(x)), dict(x=x)
    return _cast_case("fp8_tensor_dyn_compile", R, C, make, extra_bytes=4)


def int8_token_dyn_compile(R: int, C: int) -> Case:
    """Dynamic per-token int8 (amax per row, scale, round, clamp, cast) under torch.compile."""
    def make():
        x, f = _activations(R, C), compiled(_int8_dynamic_token)
        return (lambda: f(x)), dict(x=x)
    return _cast_case("int8_token_dyn_compile", R, C, make, extra_bytes=4 * R)


CAST_ANCHORS: dict[str, Callable[[int, int], Case]] = {
    "cast_fp8": cast_fp8,
    "scaled_cast_eager": scaled_cast_eager,
    "scaled_cast_compile": scaled_cast_compile,
    "fp8_tensor_dyn_compile": fp8_tensor_dyn_compile,
    "int8_token_dyn_compile": int8_token_dyn_compile,
}
