"""The ops `lowbit bench` times, each beside the torch anchors it competes with.

An `OpBench` entry builds one `Case` for a variant and a shape: random operands in the real
value range on the GPU (never zeros: they run faster and hide unwritten outputs), the op's
arguments in the order its registered kernels take them (``lowbit._backend``), the public
call, the torch anchors, and the byte and flop counts of the two floors. An anchor's role is
"same" when it computes what lowbit computes (the "vs anchor" ratio, and the relative error
of lowbit's output against it) or "bf16" when it is what a bf16 model runs instead (the
"vs bf16" ratio). A new op (int8, int4) plugs in as one more entry of `OPS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
GPU_BACKENDS = ("cuda", "triton")
DEVICE = "cuda"  # where operands are made (the tests build cases on the CPU)


@dataclass
class Anchor:
    label: str
    fn: Callable[[], object]
    role: str = "same"  # "same": lowbit's function; "bf16": what a bf16 model runs instead
    compare: bool = True  # its output is lowbit's function, so the error is reported
    counts: dict = field(default_factory=dict)  # its own bytes_moved, weight_bytes, ceiling


@dataclass
class Case:
    op: str
    variant: str
    shape: tuple
    args: tuple  # the op's arguments as its kernels take them: kernel.fn(*args)
    call: tuple  # (public function, positional args, keyword args)
    anchors: list = field(default_factory=list)
    flops: int = 0
    bytes_moved: int = 0  # every input read once, every output written once
    weight_bytes: int = 0  # the [N, K] weight as stored: what a small-M GEMM streams
    ceiling: str = "bw"  # the compute peak that applies ("fp8", "bf16"), or memory only

    def public(self, backend: Optional[str] = None) -> Callable[[], object]:
        fn, args, kwargs = self.call
        if backend is not None:
            kwargs = dict(kwargs, backend=backend)
        return lambda: fn(*args, **kwargs)

    def dispatcher(self) -> Callable[[], object]:
        """The call a compiled graph makes: through torch's dispatcher, backend auto."""
        op, args = getattr(torch.ops.lowbit, self.op), self.args
        return lambda: op(*args, "auto")

    def chosen(self) -> str:
        """backend/kernel that the public call runs here, as lowbit.explain reports it."""
        import lowbit

        fn, args, kwargs = self.call
        c = lowbit.explain(fn, *args, **kwargs)
        if self.op in LAYER_GEMM and c.op != self.op:
            # A layer's explain names the kernel of the layer op itself only where one kernel
            # runs its whole forward; otherwise its first op's, the quantizer's: report the
            # GEMM's instead, asked on a stand-in of the quantizer's output.
            x, w, ws = self.args[:3]
            q = torch.empty(x.shape, dtype=w.dtype, device=x.device)
            c = lowbit.explain(getattr(lowbit, LAYER_GEMM[self.op]), q, w,
                               torch.ones(x.shape[0], 1, device=x.device), ws)
        return f"{c.backend}/{c.kernel}"


# A layer op has no kernel of its own in the registry: it runs its GEMM op's kernels (with
# the activation quantizer fused in front).
LAYER_GEMM = {"fp8_linear": "fp8_scaled_mm", "int8_linear": "int8_gemm"}


def gpu_kernels(op: str) -> list:
    """The registered CUDA and Triton kernels of `op` (of its GEMM, for a layer op) that can
    run in this process."""
    from lowbit._backend import available_kernels

    return available_kernels(LAYER_GEMM.get(op, op), GPU_BACKENDS)


def runnable_kernels(op: str, args: Sequence, backends: Sequence[str] = GPU_BACKENDS,
                     names: Optional[Sequence[str]] = None) -> Iterator:
    """The kernels of `op` and `backends` that run `args` here (only those whose name
    contains one of `names`, when given); call one as ``k.fn(*args)``."""
    if op in LAYER_GEMM:  # its kernels take the GEMM's arguments, not the layer's
        return
    for k in gpu_kernels(op):
        if k.backend not in backends or (names and not any(n in k.name for n in names)):
            continue
        if k.supports is None or k.supports(*args) is None:
            yield k


def bound_once(build: Callable[[], Callable], args: Sequence) -> Callable[[], Any]:
    """A call of the function ``build()`` returns on ``args``, built at the first call (which
    the timing's warm-up makes), so that a timed call is the launch alone. Building per call
    (a Triton launcher's binding, a compile-cache lookup per kernel) puts host time in the
    number wherever it outlasts the L2 flush (about 0.1 ms), which no op call pays."""
    bound = []

    def call():
        if not bound:
            bound.append(build())
        return bound[0](*args)

    return call


def prepared_call(kernel, args: Sequence) -> Callable[[], Any]:
    """``kernel`` run on ``args`` as an op call that chose it runs it: through the function
    its ``prepare`` makes once for the signature (a remembered choice's, lowbit/_backend.py;
    bound_once). Without one, ``kernel.fn``."""
    if kernel.prepare is None:
        return lambda: kernel.fn(*args)
    return bound_once(lambda: kernel.prepare(*args), args)


# ---------------------------------------------------------------------------- operands
def bf16(*shape, std: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, device=DEVICE) * std).to(torch.bfloat16)


def fp8(*shape, dtype: torch.dtype = FP8) -> torch.Tensor:
    # A scaled activation or weight uses the whole e4m3 range: std 64 reaches 448 at 7 sigma
    # (e4m3fnuz: std 34 reaches its 240).
    top = torch.finfo(dtype).max
    return (torch.randn(shape, device=DEVICE) * top / 7).clamp(-top, top).to(dtype)


def scales(*shape) -> torch.Tensor:
    return torch.rand(shape, device=DEVICE) * 0.01 + 0.005  # fp32, never 0


def fp8_operands(m: int, n: int, k: int, mode: str = "row", dtype: torch.dtype = FP8):
    """fp8 a [M, K], b [N, K] of ``dtype`` and fp32 scales per `mode`: row, tensor or block
    (1x128 for a, 128x128 for b)."""
    a, b = fp8(m, k, dtype=dtype), fp8(n, k, dtype=dtype)
    if mode == "tensor":
        return a, b, scales(), scales()
    if mode == "block":
        kb = -(-k // 128)
        return a, b, scales(m, kb), scales(-(-n // 128), kb)
    return a, b, scales(m, 1), scales(n, 1)


def bf16_linear_anchor(x: torch.Tensor, w: torch.Tensor) -> Anchor:
    """bf16 ``F.linear(x, w)``: what a bf16 model runs instead of the op (the "vs bf16"
    ratio), with its own byte counts and peak."""
    m, k = x.shape
    n = w.shape[0]
    return Anchor("F.linear bf16", lambda: F.linear(x, w), role="bf16", compare=False,
                  counts=dict(bytes_moved=2 * (m * k + n * k + m * n), weight_bytes=2 * n * k,
                              ceiling="bf16"))


def scaled_mm_anchor(a, b, a_scale, b_scale, mode: str = "row", fast_accum: bool = False):
    """torch._scaled_mm with the same scales, bf16 out (rowwise with unit scales for block
    mode, which torch does not take on every version). cuBLASLt runs fp8 only "TN": b is the
    [N, K] weight transposed, and a rowwise b scale is [1, N]."""
    if mode == "block":
        a_scale = torch.ones(a.shape[0], 1, device=a.device)
        b_scale = torch.ones(b.shape[0], 1, device=b.device)
    sb = b_scale if b_scale.dim() == 0 else b_scale.t()
    return lambda: torch._scaled_mm(a, b.t(), scale_a=a_scale, scale_b=sb,
                                    out_dtype=torch.bfloat16, use_fast_accum=fast_accum)


def error_text(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line for a table's note."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:limit]


def rel_err(out, ref) -> Optional[float]:
    """Relative Frobenius error of out against ref (first elements of tuples), else None."""
    out = out[0] if isinstance(out, (tuple, list)) else out
    ref = ref[0] if isinstance(ref, (tuple, list)) else ref
    if not (isinstance(out, torch.Tensor) and isinstance(ref, torch.Tensor)) or out.shape != ref.shape:
        return None
    o, r = out.float().double(), ref.float().double()
    return ((o - r).norm() / r.norm().clamp_min(1e-30)).item()


# ------------------------------------------------------------------- torch's own versions
_compiled: dict = {}


def compiled(f: Callable) -> Callable:
    """torch.compile(f) for static shapes, one specialised kernel per shape, as a serving
    stack with fixed shapes runs it (compiled on the first call, outside the timing)."""
    if f not in _compiled:
        raise_recompile_limit()
        _compiled[f] = torch.compile(f, dynamic=False)
    return _compiled[f]


def raise_recompile_limit(n: int = 256) -> None:
    """A benchmark compiles one function for many shapes: past torch's limit (8) dynamo
    would fall back to eager and the "compiled" row would time eager code."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("cache_size_limit", "recompile_limit"):  # the name changed across versions
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), n))


def _fp8_from_scale(x, scale):
    return (x.float() * (1.0 / scale)).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def _dynamic_scale(amax, qmax: float = FP8_MAX):
    # lowbit's rule (SPEC): range / qmax floored at 2^-126, 1 for an all-zero range.
    return torch.where(amax > 0, torch.clamp(amax / qmax, min=2.0**-126), 1.0)


def quant_token(x):
    return _fp8_from_scale(x, _dynamic_scale(x.abs().amax(dim=-1, keepdim=True).float()))


def quant_tensor(x):
    return _fp8_from_scale(x, _dynamic_scale(x.abs().amax().float()))


def quant_static(x, s):
    return _fp8_from_scale(x, s)


def dequant(q, s):
    return (q.float() * s).to(torch.bfloat16)


def _torch_versions(f: Callable, *args) -> list:
    g = compiled(f)
    return [Anchor("torch.compile", lambda: g(*args)), Anchor("torch eager", lambda: f(*args))]


# ---------------------------------------------------------------------------- the ops
def _fp8_scaled_mm(variant: str, shape: tuple) -> Case:
    import lowbit

    m, n, k = shape
    mode = "row" if variant in ("row_fast", "fnuz") else variant
    fast = variant == "row_fast"
    # fnuz: e4m3fnuz operands (AMD MI300's format; on NVIDIA GPUs the Triton kernel decodes
    # them, and torch._scaled_mm refuses them, which the table shows).
    dtype = torch.float8_e4m3fnuz if variant == "fnuz" else FP8
    a, b, sa, sb = fp8_operands(m, n, k, mode, dtype)
    label = {"row": "torch._scaled_mm rowwise", "tensor": "torch._scaled_mm tensorwise",
             "block": "torch._scaled_mm rowwise (torch has no block-scaled anchor)"}[mode]
    x, w = bf16(m, k), bf16(n, k, std=0.02)
    anchors = [Anchor(label + (", fast accum" if fast else ""),
                      scaled_mm_anchor(a, b, sa, sb, mode, fast), compare=mode != "block"),
               bf16_linear_anchor(x, w)]
    return Case("fp8_scaled_mm", variant, shape, (a, b, sa, sb, None, torch.bfloat16, fast),
                (lowbit.fp8_scaled_mm, (a, b, sa, sb), dict(out_dtype=torch.bfloat16, fast_accum=fast)),
                anchors, flops=2 * m * n * k, weight_bytes=n * k, ceiling="fp8",
                bytes_moved=m * k + n * k + 2 * m * n + 4 * (sa.numel() + sb.numel()))


def int8(*shape) -> torch.Tensor:
    return torch.randint(-127, 128, shape, device=DEVICE, dtype=torch.int8)


def _int_mm_anchor(a, b):
    """torch._int_mm (cuBLASLt int8, int32 out); it refuses M <= 16, which the row notes."""
    return lambda: torch._int_mm(a, b.t())


def _int8_gemm(variant: str, shape: tuple) -> Case:
    """int8_mm (variant "mm": the exact int32 product) or int8_gemm ("row": per-token x
    per-channel scales, bf16 out; "row_zero": the same with asymmetric activations)."""
    import lowbit

    m, n, k = shape
    a, b = int8(m, k), int8(n, k)
    x, w = bf16(m, k), bf16(n, k, std=0.02)
    bf16_anchor = bf16_linear_anchor(x, w)
    if variant == "mm":
        return Case("int8_mm", variant, shape, (a, b), (lowbit.int8_mm, (a, b), {}),
                    [Anchor("torch._int_mm", _int_mm_anchor(a, b)), bf16_anchor],
                    flops=2 * m * n * k, weight_bytes=n * k, ceiling="int8",
                    bytes_moved=m * k + n * k + 4 * m * n)
    sa, sb = scales(m, 1), scales(n, 1)
    z = (torch.randint(-128, 128, (m, 1), device=DEVICE, dtype=torch.int32)
         if variant == "row_zero" else None)

    def int_mm_scaled():  # what a torch user writes: _int_mm, then the epilogue in torch
        acc = torch._int_mm(a, b.t()).float()
        if z is not None:
            acc = acc - z.float() * b.sum(1, dtype=torch.int32).float()
        return (acc * sa * sb.t()).to(torch.bfloat16)

    return Case("int8_gemm", variant, shape, (a, b, sa, sb, None, torch.bfloat16, z),
                (lowbit.int8_gemm, (a, b, sa, sb), dict(a_zero=z)),
                [Anchor("torch._int_mm + torch epilogue", int_mm_scaled), bf16_anchor],
                flops=2 * m * n * k, weight_bytes=n * k, ceiling="int8",
                bytes_moved=m * k + n * k + 2 * m * n + 4 * (m + n))


def _quantize_fp8(variant: str, shape: tuple) -> Case:
    import lowbit

    r, c = shape
    x = bf16(r, c)
    if variant == "static":
        # What a calibrated static scale looks like for unit-variance activations: amax ~ 5.
        s = torch.tensor(5.0 / FP8_MAX, device=DEVICE)
        anchors, gran, n_scales = _torch_versions(quant_static, x, s), "tensor", 1
    else:
        f = quant_token if variant == "token" else quant_tensor
        s, gran, n_scales = None, variant, (r if variant == "token" else 1)
        anchors = _torch_versions(f, x)
    return Case("quantize_fp8", variant, shape, (x, s, "e4m3fn", gran, 128, [128, 128], True),
                (lowbit.quantize_fp8, (x, s), dict(granularity=gran)), anchors,
                bytes_moved=3 * r * c + 4 * n_scales)


def _dequantize_fp8(variant: str, shape: tuple) -> Case:
    import lowbit

    r, c = shape
    q, s = fp8(r, c), (scales(r, 1) if variant == "token" else scales())
    return Case("dequantize_fp8", variant, shape, (q, s, torch.bfloat16),
                (lowbit.dequantize_fp8, (q, s), dict(out_dtype=torch.bfloat16)),
                _torch_versions(dequant, q, s), bytes_moved=3 * r * c + 4 * s.numel())


def int8_dequant(q, s, z=None):
    return dequant(q if z is None else q.int() - z, s)  # (q - zero) exactly, then fp32


def _dequantize_int8(variant: str, shape: tuple) -> Case:
    import lowbit

    r, c = shape
    q, s = int8(r, c), scales(r, 1)
    z = (torch.randint(-20, 21, (r, 1), device=DEVICE, dtype=torch.int32)
         if variant == "token_asym" else None)
    return Case("dequantize_int8", variant, shape, (q, s, z, torch.bfloat16),
                (lowbit.dequantize_int8, (q, s, z), dict(out_dtype=torch.bfloat16)),
                _torch_versions(int8_dequant, q, s, z),
                bytes_moved=3 * r * c + (4 if z is None else 8) * r)


def _int8_from_scale(x, scale, zero=None):
    q = torch.round(x.float() * (1.0 / scale))
    if zero is None:
        return q.clamp(-127, 127).to(torch.int8), scale
    return (q + zero).clamp(-128, 127).to(torch.int8), scale, zero


def int8_quant_token(x):
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    return _int8_from_scale(x, _dynamic_scale(amax, 127))


def int8_quant_token_asym(x):
    # lowbit's rule (SPEC): the range widened to include 0, (max - min) / 255, zero point
    # rint(-128 - min / scale).
    lo = x.amin(dim=-1, keepdim=True).float().clamp(max=0)
    hi = x.amax(dim=-1, keepdim=True).float().clamp(min=0)
    rng = hi - lo
    s = _dynamic_scale(rng, 255)
    z = torch.round(-128 - lo / s).clamp(-128, 127).to(torch.int32)
    return _int8_from_scale(x, s, z)


def int8_quant_tensor(x):
    amax = x.abs().amax().float()
    return _int8_from_scale(x, _dynamic_scale(amax, 127))


def _quantize_int8(variant: str, shape: tuple) -> Case:
    import lowbit

    r, c = shape
    x = bf16(r, c)
    sym = variant != "token_asym"
    gran = "tensor" if variant == "tensor" else "token"
    f = {"token": int8_quant_token, "token_asym": int8_quant_token_asym,
         "tensor": int8_quant_tensor}[variant]
    n_scales = r if gran == "token" else 1
    return Case("quantize_int8", variant, shape, (x, None, None, gran, 128, [128, 128], sym),
                (lowbit.quantize_int8, (x,), dict(granularity=gran, symmetric=sym)),
                _torch_versions(f, x),
                bytes_moved=3 * r * c + (4 if sym else 8) * n_scales)


def _linear(op: str) -> Callable[[str, tuple], Case]:
    """A quantized layer's forward (``fp8_linear`` / ``int8_linear``: the activation
    quantized per token, then the GEMM with its epilogue) against the bf16 layer it
    replaces: what a model gains per Linear at each M."""
    def build(variant: str, shape: tuple) -> Case:
        import lowbit

        m, n, k = shape
        x, w_bf16 = bf16(m, k), bf16(n, k, std=0.02)
        ws = scales(n, 1)
        if op == "fp8_linear":
            w = fp8(n, k)
            args, call = (x, w, ws, None, None), (lowbit.fp8_linear, (x, w, ws), {})

            def torch_layer():
                q, s = quant_token(x)
                return torch._scaled_mm(q, w.t(), scale_a=s, scale_b=ws.t(),
                                        out_dtype=torch.bfloat16)
            label = "torch per-token quant + torch._scaled_mm"
        else:
            w = int8(n, k)
            args, call = (x, w, ws, None, None, None, True), (lowbit.int8_linear, (x, w, ws), {})

            def torch_layer():
                q, s = int8_quant_token(x)
                return (torch._int_mm(q, w.t()).float() * s * ws.t()).to(torch.bfloat16)
            label = "torch per-token quant + torch._int_mm + epilogue"
        return Case(op, variant, shape, args, call,
                    [Anchor(label, torch_layer),
                     bf16_linear_anchor(x, w_bf16)],
                    flops=2 * m * n * k, weight_bytes=n * k,
                    ceiling="fp8" if op == "fp8_linear" else "int8",
                    bytes_moved=2 * m * k + n * k + 2 * m * n + 4 * n)
    return build


def _tinygemm_anchor(x, w_bf16, group: int):
    """torch's own W4A16 (tinygemm: ``torch._weight_int4pack_mm``) on a weight of the same
    shape and group size, quantized its way (asymmetric, bf16 scale-and-zero pairs). Times
    only: its numbers follow its own rounding, so no error is reported against it."""
    try:
        return _tinygemm(x, w_bf16, group)
    except Exception as e:  # noqa: BLE001 - e.g. a torch without it for this device
        def unavailable(e=e):
            raise e
        return unavailable


def _tinygemm(x, w_bf16, group: int):
    n, k = w_bf16.shape
    g = w_bf16.float().reshape(n, k // group, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo).clamp_min(1e-6) / 15)
    u = ((g - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    packed = torch._convert_weight_to_int4pack((u[:, ::2] << 4 | u[:, 1::2]).to(torch.uint8), 8)
    zero = lo + 8 * scale  # tinygemm dequantizes (u - 8) * scale + zero
    sz = torch.cat([scale, zero], dim=-1).reshape(n, k // group, 2).transpose(0, 1)
    sz = sz.contiguous().to(torch.bfloat16)
    return lambda: torch._weight_int4pack_mm(x, packed, group, sz)


def _w4a16_gemm(variant: str, shape: tuple) -> Case:
    """w4a16_gemm, group 128, symmetric, bf16: "prepacked" is the weight as Int4Linear holds
    it on an NVIDIA GPU (the CUDA kernels' layout), "canonical" the SPEC's layout (what the
    Triton kernel reads)."""
    import lowbit

    m, n, k = shape
    group = 128
    x, w_bf16 = bf16(m, k), bf16(n, k, std=0.02)
    # Random nibbles and scales: the weight's values do not change the kernels' work.
    w = lowbit.Int4Weight(torch.randint(0, 256, (n, k // 2), device=DEVICE, dtype=torch.uint8),
                          (torch.rand(n, k // group, device=DEVICE) * 0.004 + 0.001
                           ).to(torch.bfloat16), None, group)
    if variant == "prepacked":
        w = w.prepack()
    return Case("w4a16_gemm", variant, shape, (x, w.qweight, w.scales, None, group, None, None),
                (lowbit.w4a16_gemm, (x, w), {}),
                [Anchor("tinygemm (torch._weight_int4pack_mm)", _tinygemm_anchor(x, w_bf16, group),
                        compare=False),
                 bf16_linear_anchor(x, w_bf16)],
                flops=2 * m * n * k, weight_bytes=n * k // 2 + 2 * n * (k // group),
                ceiling="bf16",
                bytes_moved=2 * m * k + n * k // 2 + 2 * n * (k // group) + 2 * m * n)


def _w8a16_gemm(variant: str, shape: tuple) -> Case:
    """w8a16_gemm, bf16 activations, the int8 weight per channel ("channel") or per group of
    128 ("g128")."""
    import lowbit

    m, n, k = shape
    x, w_bf16, w = bf16(m, k), bf16(n, k, std=0.02), int8(n, k)
    ws = scales(n, 1) if variant == "channel" else scales(n, k // 128)

    def dequant_linear():  # what a torch user writes: dequantize, then F.linear
        wd = (w.float().reshape(n, ws.shape[1], -1) * ws.unsqueeze(-1)).reshape(n, k)
        return F.linear(x, wd.to(torch.bfloat16))

    return Case("w8a16_gemm", variant, shape, (x, w, ws, None),
                (lowbit.w8a16_gemm, (x, w, ws), {}),
                [Anchor("dequantize + F.linear (torch)", dequant_linear),
                 bf16_linear_anchor(x, w_bf16)],
                flops=2 * m * n * k, weight_bytes=n * k + 4 * ws.numel(), ceiling="bf16",
                bytes_moved=2 * m * k + n * k + 4 * ws.numel() + 2 * m * n)


def int4_quant_torch(w, group: int, symmetric: bool):
    """int4_quantize written with torch ops (what a torch user would write): packed codes and
    scales in w's dtype."""
    n, k = w.shape
    g = w.float().reshape(n, k // group, group)
    if symmetric:
        ext, levels = g.abs().amax(-1, keepdim=True), 7
    else:
        lo = g.amin(-1, keepdim=True).clamp(max=0)
        ext, levels = g.amax(-1, keepdim=True).clamp(min=0) - lo, 15
    s = torch.where(ext == 0, 1.0, (ext / levels).clamp_min(2.0 ** -126)).to(w.dtype).float()
    s = torch.where(s == 0, 1.0, s)
    r = (g * (1 / s)).round()
    if symmetric:
        u = r.clamp(-8, 7) + 8
    else:
        u = (r + (-lo / s).round().clamp(0, 15)).clamp(0, 15)
    u = u.to(torch.uint8).reshape(n, k)
    return u[:, 0::2] | (u[:, 1::2] << 4), s.reshape(n, -1).to(w.dtype)


def _int4_codes(w, **kwargs):
    """lowbit.int4_quantize's (packed codes, scales), comparable with the torch version's."""
    import lowbit

    q = lowbit.int4_quantize(w, **kwargs)
    return q.qweight, q.scales


def _int4_quantize(variant: str, shape: tuple) -> Case:
    """int4_quantize of a bf16 weight [N, K], group 128, symmetric ("sym") or with zero
    points ("asym"): a conversion-time op, so its row is a bandwidth row."""
    n, k = shape
    sym = variant == "sym"
    w = bf16(n, k, std=0.02)
    f = lambda w: int4_quant_torch(w, 128, sym)  # noqa: E731
    return Case("int4_quantize", variant, shape, (w, 128, sym),
                (_int4_codes, (w,), dict(group_size=128, symmetric=sym)), _torch_versions(f, w),
                bytes_moved=2 * n * k + n * k // 2 + (2 if sym else 3) * n * (k // 128))


@dataclass(frozen=True)
class OpBench:
    op: str
    kind: str  # "gemm": shapes M x N x K; "cast": rows x cols; "weight": N x K
    variants: tuple  # every variant; `default` runs unless the command line names others
    default: tuple
    build: Callable[[str, tuple], Case]


OPS = {
    "fp8_scaled_mm": OpBench("fp8_scaled_mm", "gemm",
                             ("row", "tensor", "block", "row_fast", "fnuz"), ("row", "tensor"),
                             _fp8_scaled_mm),
    "int8_mm": OpBench("int8_mm", "gemm", ("mm",), ("mm",), _int8_gemm),
    "int8_gemm": OpBench("int8_gemm", "gemm", ("row", "row_zero"), ("row",), _int8_gemm),
    "quantize_fp8": OpBench("quantize_fp8", "cast", ("token", "tensor", "static"),
                            ("token", "tensor"), _quantize_fp8),
    "dequantize_fp8": OpBench("dequantize_fp8", "cast", ("token", "tensor"), ("token",),
                              _dequantize_fp8),
    "quantize_int8": OpBench("quantize_int8", "cast", ("token", "token_asym", "tensor"),
                             ("token",), _quantize_int8),
    "dequantize_int8": OpBench("dequantize_int8", "cast", ("token", "token_asym"), ("token",),
                               _dequantize_int8),
    "fp8_linear": OpBench("fp8_linear", "gemm", ("token",), ("token",), _linear("fp8_linear")),
    "int8_linear": OpBench("int8_linear", "gemm", ("token",), ("token",), _linear("int8_linear")),
    "w4a16_gemm": OpBench("w4a16_gemm", "gemm", ("prepacked", "canonical"),
                          ("prepacked", "canonical"), _w4a16_gemm),
    "w8a16_gemm": OpBench("w8a16_gemm", "gemm", ("channel", "g128"), ("channel",),
                          _w8a16_gemm),
    "int4_quantize": OpBench("int4_quantize", "weight", ("sym", "asym"), ("sym",),
                             _int4_quantize),
}
