"""The Triton backend: kernels from ``lowbit.triton_kernels`` behind lowbit's ops.

Importing this module never imports triton: the kernels' modules load on first use, so
``import lowbit`` stays fast and works without triton. Whether a kernel runs interpreted is
decided when it is launched (``TRITON_INTERPRET=1`` then; see triton_kernels/_common.py),
not when its module was imported. The kernels import nothing of lowbit: this module passes
them the scale layouts (``lowbit.scale_layout``). Every kernel's ``available`` names the reason it
cannot run (triton missing, or no GPU and no interpreter); ``supports`` names the inputs it
does not handle. Priorities sit below the CUDA kernels' so ``auto`` prefers those.

Kernels (op: name):
- quantize_fp8: triton_fp8_quant_per_tensor, triton_fp8_quant_per_token (token and channel),
  triton_fp8_quant_per_group, triton_fp8_quant_per_block (128x128 and 1x128)
- dequantize_fp8: triton_fp8_dequant
- fp8_scaled_mm: triton_fp8_scaled_mm (triton_fp8_scaled_mm_decoded: e4m3fnuz off MI300)
- quantize_int8: triton_int8_quant_per_tensor, triton_int8_quant_per_token (token and
  channel), triton_int8_quant_per_group, triton_int8_quant_per_block (128x128 and 1x128)
- dequantize_int8: triton_int8_dequant
- int8_mm: triton_int8_mm
- int8_gemm: triton_int8_gemm
- w4a16_gemm: triton_w4a16_gemm (the canonical int4 layout only), triton_w4a16_gemm_dequant
  (the same layout, above M = 128: dequantized, then torch's GEMM)
- w8a16_gemm: triton_w8a16_gemm, triton_w8a16_gemm_dequant (above M = 256)
- int4_quantize: triton_int4_quantize (bit-exact with the reference, as the CUDA kernel)
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import scale_layout
from . import _dense
from .._backend import _interpreting, register_kernel
from .._env import getenv
from ..ops import int4_scale_dtype
from ._device import OnDevice, capability, device_index

PRIORITY = -10

_kernels = None  # the lowbit.triton_kernels package, once its modules are loaded
_import_error: Optional[str] = None


def _load():
    """The ``lowbit.triton_kernels`` package with its kernel modules (``fp8_quant``,
    ``fp8_gemm``, ``int8_quant``, ``int8_gemm``, ``wxa16_gemm``, ``int4_quant``) loaded, or
    None with ``_import_error`` set."""
    global _kernels, _import_error
    if _kernels is None and _import_error is None:
        try:
            from .. import triton_kernels
            from ..triton_kernels import (_common, fp8_gemm, fp8_quant, int4_quant,  # noqa: F401
                                          int8_gemm, int8_quant, wxa16_gemm)
            _check_formats(_common.FP8_FORMATS)
            from .. import _native

            _common.set_allocator(_native.EMPTY)  # None: torch.empty
        except Exception as e:  # ImportError, or a triton that fails to initialise
            _import_error = f"{type(e).__name__}: {e}"
        else:
            _kernels = triton_kernels
    return _kernels


def _check_formats(bits) -> None:
    """The kernels' FP8 bit fields must be the reference's (the definition)."""
    from ..reference.formats import FP8_FORMATS

    for name, f in FP8_FORMATS.items():
        b = bits[name]
        inf = -1 if f.inf_code is None else f.inf_code
        if (b.mbits, b.bias, b.max_value, b.max_code, b.nan_code, b.inf_code,
                b.negative_zero) != (f.mbits, f.bias, f.max_value, f.max_code, f.nan_code, inf,
                                     f.negative_zero):
            raise ImportError(f"triton_kernels' {name} bit fields differ from the reference's")


def available() -> Optional[str]:
    if _load() is None:
        return f"triton is not importable ({_import_error})"
    if not _interpreting() and not torch.cuda.is_available():
        return "no CUDA device (the Triton kernels need one, or TRITON_INTERPRET=1)"
    return None


def _device_reason(t: torch.Tensor) -> Optional[str]:
    if t.device.type == "cuda":
        return None
    if _interpreting():
        return None
    return f"tensors on {t.device} need TRITON_INTERPRET=1"


# ---------------------------------------------------------------------------- quantize_fp8
def _quant_supports(*granularities):
    """supports() of a quantizer (fp8 or int8: x and the granularity come at the same
    places) that takes ``granularities``."""
    def supports(x, scale, _fmt_or_zero, granularity, *_):
        if granularity not in granularities:
            return f"granularity={granularity!r} is another kernel's"
        return _device_reason(x)
    return supports


# (name suffix, granularities) of the quantizers' kernels, fp8 and int8 alike.
_QUANT_KERNELS = (("quant_per_tensor", ("tensor",)), ("quant_per_token", ("token", "channel")),
                  ("quant_per_group", ("group",)), ("quant_per_block", ("block",)))


def _quant_layout(op, x, granularity, group_size, block):
    """(tile, scale shape) of a quantizer's signature (lowbit.scale_layout)."""
    return (scale_layout.quant_tile(granularity, group_size, block),
            scale_layout.scale_shape(op, tuple(x.shape), granularity, group_size, block))


def _register_quantizers(op: str, family: str, prepare) -> None:
    """The four quantizers of ``op`` (one per kind of scale slice, _QUANT_KERNELS), each
    running the launcher that ``prepare`` builds for a signature."""
    def run(*args):
        return prepare(*args)(*args)

    for name, grans in _QUANT_KERNELS:
        register_kernel(op, "triton", f"triton_{family}_{name}",
                        supports=_quant_supports(*grans), available=available,
                        priority=PRIORITY, prepare=prepare)(run)


def _prepare_quantize_fp8(x, scale, fmt, granularity, group_size, block, saturate):
    """The launcher for one signature: the scale's layout, the encoder (and
    ``LOWBIT_TRITON_FP8_HWCAST``, in the remembered choices' key) and the kernels' binding
    once."""
    tile, sshape = _quant_layout("quantize_fp8", x, granularity, group_size, block)
    with OnDevice(x.device):
        quantize = _load().fp8_quant.quantize_fp8_launcher(x, scale, fmt, tile, sshape, saturate)

    def launch(x, scale, fmt, granularity, group_size, block, saturate):
        # Triton launches on the current device: make the tensors' device current.
        with OnDevice(x.device):
            return quantize(x, scale)
    return launch


_register_quantizers("quantize_fp8", "fp8", _prepare_quantize_fp8)


# -------------------------------------------------------------------------- dequantize_fp8
def _dequant_supports(q, scale, out_dtype):
    return _device_reason(q)


@register_kernel("dequantize_fp8", "triton", "triton_fp8_dequant", supports=_dequant_supports,
                 available=available, priority=PRIORITY)
def dequantize_fp8(q, scale, out_dtype):
    tile = scale_layout.scale_tile(scale.shape, q.shape)
    with OnDevice(q.device):
        return _load().fp8_quant.dequantize_fp8(q, scale, out_dtype, tile)


# --------------------------------------------------------------------------- fp8_scaled_mm
_GEMM_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz)


def _decodes(a) -> bool:
    """Whether the GEMM kernel decodes a's fp8 codes to fp16 before its dots on a's device
    (e4m3fnuz off MI300): a registry kernel of its own name, so that explain says so."""
    return _load().fp8_gemm.decodes(a.dtype, a.device)


def _gemm_supports_native(a, *rest):
    why = _gemm_supports(a, *rest)
    if why is None and _decodes(a):
        return (f"{a.dtype} is not native here: the decoding kernel "
                "(triton_fp8_scaled_mm_decoded) runs it")
    return why


def _gemm_supports_decoded(a, *rest):
    why = _gemm_supports(a, *rest)
    if why is None and not _decodes(a):
        return f"runs only operands this device does not multiply; {a.dtype} is native here"
    return why


def _gemm_supports(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
    if a.dtype not in _GEMM_DTYPES or b.dtype not in _GEMM_DTYPES:
        return (f"operands {a.dtype} x {b.dtype}: needs float8_e4m3fn, float8_e5m2 or "
                "float8_e4m3fnuz")
    why = _device_reason(a)
    if why:
        return why
    if a.device.type == "cuda" and not _interpreting() and torch.version.hip is None:
        cap = capability(device_index(a.device))
        # e4m3fnuz is decoded to fp16 on NVIDIA GPUs (lowbit.triton_kernels.fp8_gemm): an fp16
        # tl.dot, sm_80 and newer; the OCP formats go to an fp8 tl.dot.
        need = (8, 0) if a.dtype == torch.float8_e4m3fnuz else (8, 9)
        if cap < need:
            what = "fp16 tl.dot (e4m3fnuz decoded)" if need == (8, 0) else "fp8 tl.dot"
            return (f"{what} needs compute capability {need[0]}.{need[1]} or newer; got "
                    f"{cap[0]}.{cap[1]}")
    return None


def _prepared_on(dev, launch, name):
    """``launch`` run with ``dev`` current, named as the kernel it launches."""
    def prepared(*args):
        with OnDevice(dev):
            return launch(*args)

    prepared.__name__ = name
    return prepared


def _prepare_fp8_scaled_mm(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
    """The launcher for one signature: the scale layouts, the config, the grid and the
    constexprs are worked out once, and a call is the allocation and the kernel's launch.
    ``LOWBIT_TRITON_AUTOTUNE`` and ``LOWBIT_TRITON_FP8_PROMOTE`` are read here, once per
    signature (they are in the remembered choices' key, lowbit._backend._CHOICE_ENV); the
    autotuner keeps its own per-call path."""
    if getenv("LOWBIT_TRITON_AUTOTUNE") == "1":
        return fp8_scaled_mm
    a_tile = scale_layout.scale_tile(a_scale.shape, a.shape)
    b_tile = scale_layout.scale_tile(b_scale.shape, b.shape)
    with OnDevice(a.device):
        launch = _load().fp8_gemm.fp8_scaled_mm_launcher(
            a, b, a_scale, b_scale, bias, out_dtype, fast_accum, a_tile=a_tile, b_tile=b_tile)
    name = "triton_fp8_scaled_mm_decoded" if _decodes(a) else "triton_fp8_scaled_mm"
    return _prepared_on(a.device, launch, name)


def fp8_scaled_mm(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
    a_tile = scale_layout.scale_tile(a_scale.shape, a.shape)
    b_tile = scale_layout.scale_tile(b_scale.shape, b.shape)
    with OnDevice(a.device):
        return _load().fp8_gemm.fp8_scaled_mm(a, b, a_scale, b_scale, bias, out_dtype,
                                              fast_accum, a_tile=a_tile, b_tile=b_tile)


# One kernel, two names: the operands as tl.dot takes them, and e4m3fnuz decoded to fp16
# where the device does not multiply it (slower: an fp16 dot and the decode).
register_kernel("fp8_scaled_mm", "triton", "triton_fp8_scaled_mm",
                supports=_gemm_supports_native, available=available, priority=PRIORITY,
                prepare=_prepare_fp8_scaled_mm)(fp8_scaled_mm)
register_kernel("fp8_scaled_mm", "triton", "triton_fp8_scaled_mm_decoded",
                supports=_gemm_supports_decoded, available=available, priority=PRIORITY,
                prepare=_prepare_fp8_scaled_mm)(fp8_scaled_mm)


# --------------------------------------------------------------------------- quantize_int8
def _prepare_quantize_int8(x, scale, zero, granularity, group_size, block, symmetric):
    """The launcher for one signature: the scale's layout and the kernels' binding once."""
    tile, sshape = _quant_layout("quantize_int8", x, granularity, group_size, block)
    with OnDevice(x.device):
        quantize = _load().int8_quant.quantize_int8_launcher(x, scale, zero, symmetric, tile,
                                                             sshape)

    def launch(x, scale, zero, granularity, group_size, block, symmetric):
        with OnDevice(x.device):
            q, s, z = quantize(x, scale, zero)
        # The registered op returns an empty zero point for a symmetric quantizer.
        return q, s, z if z is not None else x.new_empty(0, dtype=torch.int32)
    return launch


_register_quantizers("quantize_int8", "int8", _prepare_quantize_int8)


# ------------------------------------------------------------------------- dequantize_int8
def _dequant_int8_supports(q, scale, zero, out_dtype):
    return _device_reason(q)


@register_kernel("dequantize_int8", "triton", "triton_int8_dequant",
                 supports=_dequant_int8_supports, available=available, priority=PRIORITY)
def dequantize_int8(q, scale, zero, out_dtype):
    tile = scale_layout.scale_tile(scale.shape, q.shape)
    with OnDevice(q.device):
        return _load().int8_quant.dequantize_int8(q, scale, zero, out_dtype, tile)


# ---------------------------------------------------------------------- int8_mm, int8_gemm
def _dot_reason(a, what: str) -> Optional[str]:
    """None when a ``tl.dot`` of ``what`` operands (int8, bf16: both from sm_80) can run
    on a's device, else why not."""
    why = _device_reason(a)
    if why:
        return why
    if a.device.type == "cuda" and not _interpreting():
        cap = capability(device_index(a.device))
        if cap < (8, 0):
            return f"{what} tl.dot needs compute capability 8.0 or newer; got {cap[0]}.{cap[1]}"
    return None


def _int8_dot_reason(a) -> Optional[str]:
    return _dot_reason(a, "int8")


def _prepare_int8_mm(a, b):
    """The launcher for one signature: the tiles, the grid and the compiled kernel once."""
    with OnDevice(a.device):
        launch = _load().int8_gemm.int8_mm_launcher(a, b)
    return _prepared_on(a.device, launch, "triton_int8_mm")


def _prepare_int8_gemm(a, b, a_scale, b_scale, bias, out_dtype, a_zero):
    """The launcher for one signature: the epilogue's constexprs, the tiles, the grid and
    the compiled kernel once."""
    with OnDevice(a.device):
        launch = _load().int8_gemm.int8_gemm_launcher(a, b, a_scale, b_scale, bias, out_dtype,
                                                      a_zero)
    return _prepared_on(a.device, launch, "triton_int8_gemm")


@register_kernel("int8_mm", "triton", "triton_int8_mm",
                 supports=lambda a, b: _int8_dot_reason(a), available=available,
                 priority=PRIORITY, prepare=_prepare_int8_mm)
def int8_mm(a, b):
    with OnDevice(a.device):
        return _load().int8_gemm.int8_mm(a, b)


@register_kernel("int8_gemm", "triton", "triton_int8_gemm",
                 supports=lambda a, *_: _int8_dot_reason(a), available=available,
                 priority=PRIORITY, prepare=_prepare_int8_gemm)
def int8_gemm(a, b, a_scale, b_scale, bias, out_dtype, a_zero):
    with OnDevice(a.device):
        return _load().int8_gemm.int8_gemm(a, b, a_scale, b_scale, bias, out_dtype, a_zero)


# ------------------------------------------------------------------ w4a16_gemm, w8a16_gemm
def _half_dot_reason(x) -> Optional[str]:
    """The weight-only kernels multiply in x's dtype: bf16 needs sm_80, fp16 and fp32 run
    wherever Triton does."""
    return _dot_reason(x, "bf16") if x.dtype == torch.bfloat16 else _device_reason(x)


def _canonical_reason(x, qweight) -> Optional[str]:
    # A prepacked (kernel-layout) weight is another backend's: it is not the canonical
    # rank-2 uint8 [N, K // 2] tensor.
    if qweight.dtype != torch.uint8 or qweight.dim() != 2 \
            or qweight.shape[1] * 2 != x.shape[-1]:
        return ("the Triton kernels read the canonical int4 layout (uint8 [N, K // 2]); got "
                f"qweight {qweight.dtype} of shape {tuple(qweight.shape)}")
    return None


def _w4a16_supports(x, qweight, scales, zeros, group_size, perm, bias):
    return _canonical_reason(x, qweight) or _half_dot_reason(x)


def _prepare_w4a16_gemm(x, qweight, scales, zeros, group_size, perm, bias):
    """The launcher for one signature: the config, the split and both kernels' binding
    once; a call is the allocations and the launches."""
    with OnDevice(x.device):
        launch = _load().wxa16_gemm.w4a16_gemm_launcher(x, qweight, scales, zeros, group_size,
                                                        perm, bias)
    return _prepared_on(x.device, launch, "triton_w4a16_gemm")


def _prepare_w8a16_gemm(x, w, w_scale, bias):
    """As _prepare_w4a16_gemm, for the int8 weight."""
    with OnDevice(x.device):
        launch = _load().wxa16_gemm.w8a16_gemm_launcher(x, w, w_scale, bias)
    return _prepared_on(x.device, launch, "triton_w8a16_gemm")


# Above the fused kernel's range (int4: M = 128; int8: 256): the weight dequantized to x's
# dtype by a Triton kernel (the same bits as the CUDA backend's dequantizer), then torch's
# GEMM (cuBLAS, or hipBLASLt on AMD), as the CUDA backend's ``*_dequant`` kernels do. The
# fused Triton kernel converts the weight per output tile, so its cost grows with the M
# tiles; the dequantized path pays a fixed write and read of the whole weight in x's dtype
# (2 bytes a weight) and then runs at cuBLAS's rate. Where they cross (H100, 2026-12-06,
# bench/NOTES.md), with the fused kernel's 128-row tiles (heuristics.WXA16_GEMM_TABLE): at
# M = 128 the fused kernel leads on both weights (int4 group 128: 69.6 against 105.5 us at
# 128 x 14336 x 4096; int8 per channel: 55.0 against 113.7). At M = 256 the int8 weight's
# fused kernel leads (82.1 against 119.5 us at 256 x 14336 x 4096, 33.2 against 40.5 at
# 256 x 4096 x 4096), the int4 weight's runs level (109.5 against 112.1) or behind (41.3
# against 37.9), so int4 dequantizes from M = 129 and int8 from 257.
DEQUANT_MIN_M = {"w4a16_gemm": 129, "w8a16_gemm": 257}


def _dequant_reason(op: str, x) -> Optional[str]:
    lo = DEQUANT_MIN_M[op]
    if x.shape[0] < lo:
        return f"M = {x.shape[0]} is below {lo}: the fused kernel's range"
    if x.dtype not in (torch.bfloat16, torch.float16):
        return f"dequantizes to x's dtype, bfloat16 or float16; got {x.dtype}"
    return _device_reason(x)


def _dequant_launch(x, w, scales, zeros, bias, dequantizer, name):
    """launch(x, w, scales, zeros, bias) for one signature: the dequantizer
    ``dequantizer(dtype)`` (a triton_kernels.wxa16_gemm launcher for w's signature) bound
    once, and the dense product with the bias (backends._dense). x as the weight's K order
    takes it (act order's gather is the caller's, per call: the signature does not fix
    perm's values)."""
    m, n = x.shape[0], w.shape[0]
    dev, dtype = x.device, x.dtype
    if m == 0:
        return lambda *a: torch.empty((0, n), dtype=dtype, device=dev)
    with OnDevice(dev):
        deq = dequantizer(dtype)
    dense = _dense.product(dtype, None if bias is None else bias.dtype)

    def launch(x, w, scales, zeros, bias):
        with OnDevice(dev):
            wd = deq(w, scales, zeros)
        return dense(x, wd, bias)

    launch.__name__ = name
    return launch


def _prepare_w4a16_dequant(x, qweight, scales, zeros, group_size, perm, bias):
    launch = _dequant_launch(
        x, qweight, scales, zeros, bias,
        lambda dtype: _load().wxa16_gemm.w4a16_dequant_launcher(qweight, scales, zeros,
                                                                group_size, x.shape[1], dtype),
        "triton_w4a16_gemm_dequant")

    def prepared(x, qweight, scales, zeros, group_size, perm, bias):
        return launch(x if perm is None else x.index_select(1, perm), qweight, scales, zeros,
                      bias)

    prepared.__name__ = launch.__name__
    return prepared


def _prepare_w8a16_dequant(x, w, w_scale, bias):
    launch = _dequant_launch(
        x, w, w_scale, None, bias,
        lambda dtype: _load().wxa16_gemm.w8a16_dequant_launcher(w, w_scale, dtype),
        "triton_w8a16_gemm_dequant")

    def prepared(x, w, w_scale, bias):
        return launch(x, w, w_scale, None, bias)

    prepared.__name__ = launch.__name__
    return prepared


@register_kernel("w4a16_gemm", "triton", "triton_w4a16_gemm_dequant",
                 supports=lambda x, qweight, *_: (_canonical_reason(x, qweight)
                                                  or _dequant_reason("w4a16_gemm", x)),
                 available=available, priority=PRIORITY + 1, prepare=_prepare_w4a16_dequant)
def w4a16_gemm_dequant(x, qweight, scales, zeros, group_size, perm, bias):
    return _prepare_w4a16_dequant(x, qweight, scales, zeros, group_size, perm, bias)(
        x, qweight, scales, zeros, group_size, perm, bias)


@register_kernel("w8a16_gemm", "triton", "triton_w8a16_gemm_dequant",
                 supports=lambda x, w, *_: _dequant_reason("w8a16_gemm", x),
                 available=available, priority=PRIORITY + 1, prepare=_prepare_w8a16_dequant)
def w8a16_gemm_dequant(x, w, w_scale, bias):
    return _prepare_w8a16_dequant(x, w, w_scale, bias)(x, w, w_scale, bias)


@register_kernel("w4a16_gemm", "triton", "triton_w4a16_gemm", supports=_w4a16_supports,
                 available=available, priority=PRIORITY, prepare=_prepare_w4a16_gemm)
def w4a16_gemm(x, qweight, scales, zeros, group_size, perm, bias):
    with OnDevice(x.device):
        return _load().wxa16_gemm.w4a16_gemm(x, qweight, scales, zeros, group_size, perm, bias)


@register_kernel("w8a16_gemm", "triton", "triton_w8a16_gemm",
                 supports=lambda x, *_: _half_dot_reason(x), available=available,
                 priority=PRIORITY, prepare=_prepare_w8a16_gemm)
def w8a16_gemm(x, w, w_scale, bias):
    with OnDevice(x.device):
        return _load().wxa16_gemm.w8a16_gemm(x, w, w_scale, bias)


# --------------------------------------------------------------------------- int4_quantize
@register_kernel("int4_quantize", "triton", "triton_int4_quantize",
                 supports=lambda w, *_: _device_reason(w), available=available,
                 priority=PRIORITY)
def int4_quantize(w, group_size, symmetric):
    with OnDevice(w.device):
        return _load().int4_quant.int4_quantize(w, group_size, symmetric,
                                                int4_scale_dtype(w.dtype))
