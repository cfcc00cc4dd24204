"""What lowbit's Triton kernels share: the interpreter switch, device facts, the FP8
formats' bit fields, ``jit``, and the quantizers' skeleton.

This package imports only triton, torch and this module: lowbit's backend
(``lowbit/backends/triton.py``) passes everything else (scale shapes and tiles from
``lowbit.scale_layout``) and checks at load time that ``FP8_FORMATS`` agrees with
``lowbit.reference.formats``, the definition.

Interpreter rule: a kernel runs under Triton's interpreter when ``TRITON_INTERPRET=1`` is
set at the time it is launched, whatever it was when this package was imported; ``jit``
builds the interpreted form of a kernel on first use.

The quantizers (FP8 and INT8) are one skeleton: a reduction over each scale's slice (the
absmax, or the min and max), the scale (and zero point) from it, then ``encode(x * inv)``
with ``inv = 1 / scale``. The element codec is the constexpr ``CODEC`` (``FP8``, ``INT8``,
``INT8_ASYM``); the tiling, the scale layouts, the NaN rules and the floor are shared.
Dequantization is the mirror: ``decode(q) * scale``. See ``quantize`` and ``dequantize``.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .heuristics import ELEMWISE_WARPS, block2d_sub_rows, elementwise_tile, segment_tile

_ENV = getattr(os.environ, "_data", None)
_INTERPRET_KEY = os.fsencode("TRITON_INTERPRET")


def interpreting() -> bool:
    """Whether kernels launched now run under Triton's interpreter (read on every launch:
    from the dict that os.environ keeps in step, where it can, since os.environ.get of an
    unset variable raises and catches a KeyError, about 1 us)."""
    if os.name == "posix" and isinstance(_ENV, dict):
        return _ENV.get(_INTERPRET_KEY) == b"1"
    return os.environ.get("TRITON_INTERPRET") == "1"


def jit(fn):
    """``triton.jit`` with the interpreter chosen at launch (see the module's rule)."""
    return _kernel_class()(fn)


@functools.lru_cache(maxsize=None)
def _kernel_class():
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    # id(jitted function) -> its interpreted form (keyed by id: a JITFunction hashes by its
    # source's cache key). Only module-level functions are jitted, so ids are not reused.
    interpreted: Dict[int, InterpretedFunction] = {}

    def interpreted_form(f: JITFunction) -> InterpretedFunction:
        g = interpreted.get(id(f))
        if g is None:
            g = interpreted[id(f)] = InterpretedFunction(f.fn)
        return g

    def interpreted_call(self, *args, **kwargs):
        # Inside an interpreted kernel, a call of any jitted function (ours, or
        # triton.language's own such as tl.max, compiled-only when triton was imported
        # without the interpreter) runs its interpreted form.
        return interpreted_form(self)(*args, **kwargs)

    class _Kernel(JITFunction):
        """A ``triton.jit`` function that launches in its interpreted form whenever
        ``interpreting()`` says so at that moment. It is a JITFunction, so the compiler
        treats calls to it as calls to any jitted function."""

        def run(self, *args, grid, warmup, **kwargs):
            if not interpreting():
                return super().run(*args, grid=grid, warmup=warmup, **kwargs)
            f = interpreted_form(self)
            # JITFunction.__call__ only raises (a device function called from Python); for
            # the launch, device-side calls made by the interpreter run interpreted instead.
            saved = JITFunction.__call__
            JITFunction.__call__ = interpreted_call
            try:
                return f.run(*args, grid=grid, warmup=warmup, **kwargs)
            finally:
                JITFunction.__call__ = saved

    return _Kernel


# ------------------------------------------------------------------------ bound launches
def _hook_set(hook) -> bool:
    # Triton 3.6 keeps its launch hooks as chains (empty unless a profiler adds one); older
    # versions as None or a function.
    return hook is not None and bool(getattr(hook, "calls", True))


def _version(v: str) -> Tuple[int, int]:
    major, minor = v.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


# The launch protocol ``bind`` mirrors (JITFunction.run handing every parameter, constexprs
# included, to the compiled kernel's launcher, with the launch hooks in triton.knobs) is
# that of Triton 3.6 to 3.9, where it was read and tested; other versions launch through
# ``kernel[grid]``.
_DIRECT_LAUNCH = (3, 6) <= _version(triton.__version__) < (3, 10)


def _c_launcher(run):
    """(the compiled launch function, cooperative grid, PDL) under the Python wrapper of a
    Triton 3.6 NVIDIA launcher whose kernel takes no scratch buffers, whose ``__call__``
    then adds nothing but two Nones; None elsewhere (AMD, other versions: the wrapper runs)."""
    if not (3, 6) <= _version(triton.__version__) < (3, 7) or \
            type(run).__name__ != "CudaLauncher":
        return None
    if getattr(run, "global_scratch_size", 1) or getattr(run, "profile_scratch_size", 1):
        return None
    try:
        return run.launch, run.launch_cooperative_grid, run.launch_pdl
    except AttributeError:
        return None


def _knobs():
    from triton import knobs
    return knobs


_DEFAULTS: Dict[int, dict] = {}


def _defaults(kernel) -> dict:
    """{parameter: default} of a jitted kernel (keyed by id: kernels are module-level)."""
    d = _DEFAULTS.get(id(kernel))
    if d is None:
        params = inspect.signature(kernel.fn).parameters
        d = _DEFAULTS[id(kernel)] = {name: p.default for name, p in params.items()}
    return d


def bind(kernel, grid: Tuple[int, ...], args: Sequence, consts: dict):
    """``launch(*args)``: ``kernel[grid](*args, **consts)`` for later arguments of the
    signature of ``args`` (dtypes, whether each pointer is 16-byte aligned, the integers'
    values: what Triton specializes a compiled kernel on; the caller's cache key must cover
    them). The kernel is compiled here, once, and a launch calls the compiled kernel's own
    launcher with the arguments ``JITFunction.run`` would give it, without ``run``'s binding,
    cache key and option parsing (20-30 us a call under Triton 3.6). A launch goes through
    ``kernel[grid]`` when the interpreter is on (the module's rule), when a launch hook is
    set (a profiler that wants every launch named), on Triton versions outside 3.6-3.9
    (``_DIRECT_LAUNCH``), or when this Triton's compiled kernel has no such launcher.
    ``run``'s check that the kernel's global constants did not change is left out: lowbit's
    kernels read none that change.

    ``launch.direct(*args)`` is the direct launch alone, which also takes pointers as ints
    (``data_ptr()``, so a caller need not build the views it was bound with): it returns
    False, launching nothing, where only ``kernel[grid]`` may launch (which takes tensors)."""
    generic = kernel[grid]

    def slow(*a):
        generic(*a, **consts)

    slow.direct = lambda *a: False

    if interpreting() or not _DIRECT_LAUNCH:
        return slow
    compiled = kernel.warmup(*args, grid=grid, **consts)
    if hasattr(compiled, "result"):  # a compile future (Triton's async mode)
        compiled = compiled.result()
    try:
        run, function, packed = compiled.run, compiled.function, compiled.packed_metadata
    except AttributeError:  # a Triton with another launch protocol
        return slow
    # The constexprs and defaulted parameters after the positional ones, in the kernel's
    # order: the launcher takes every parameter and skips the constexprs itself.
    defaults = _defaults(kernel)
    tail = tuple(consts[name] if name in consts else defaults[name]
                 for name in kernel.arg_names[len(args):])
    g0, g1, g2 = (tuple(grid) + (1, 1))[:3]
    current_stream = triton.runtime.driver.active.get_current_stream
    device = triton.runtime.driver.active.get_current_device()
    hooks = _knobs().runtime

    c_launch = _c_launcher(run)
    if c_launch is not None:
        # Triton 3.6's CudaLauncher.__call__ only adds the scratch buffers, None here.
        launch_c, coop, pdl = c_launch

        def call(stream, a):
            launch_c(g0, g1, g2, stream, function, coop, pdl, None, None, packed, None, None,
                     None, *a, *tail)
    else:
        def call(stream, a):
            run(g0, g1, g2, stream, function, packed, None, None, None, *a, *tail)

    def direct(*a) -> bool:
        if interpreting() or _hook_set(hooks.launch_enter_hook) or \
                _hook_set(hooks.launch_exit_hook):
            return False
        call(current_stream(device), a)
        return True

    def launch(*a):
        if not direct(*a):
            slow(*a)

    launch.direct = direct
    return launch


# ---------------------------------------------------------------------------- allocation
def _torch_empty(device, dtype, *sizes):
    return torch.empty(sizes, dtype=dtype, device=device)


_ALLOCATOR = [_torch_empty]


def set_allocator(fn) -> None:
    """Launches prepared from now on allocate their outputs and workspaces with
    ``fn(device, dtype, *sizes)``, which means ``torch.empty(sizes, dtype=dtype,
    device=device)``; None restores torch.empty. lowbit hands over its C++ one
    (csrc/torch/plans.cpp, ``empty``), which skips torch's Python argument parser: most of
    an allocation's host time, and a decode call's launch is a few microseconds."""
    _ALLOCATOR[0] = fn or _torch_empty


def allocator():
    """``new(device, dtype, *sizes)``: the allocation a launch prepared now uses."""
    return _ALLOCATOR[0]


# ------------------------------------------------------------------------------- devices
def device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=None)
def capability(index: int):
    return torch.cuda.get_device_capability(index)


@functools.lru_cache(maxsize=None)
def sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=None)
def smem_per_block(index: int) -> int:
    """The shared memory one program may opt in to on device ``index``: 227 KB on an H100,
    99 KB on sm_86 / sm_89, an MI300's 64 KB of LDS. A torch build that reports no opt-in
    figure (0, or no such field) gives the plain per-block limit."""
    props = torch.cuda.get_device_properties(index)
    return getattr(props, "shared_memory_per_block_optin", 0) or props.shared_memory_per_block


# ----------------------------------------------------------------------------- fp8 formats
class Fp8Bits(NamedTuple):
    """The bit fields of an FP8 format, as the encoder and decoder take them."""

    mbits: int
    bias: int
    max_value: float
    max_code: int  # largest finite magnitude code
    nan_code: int  # the canonical NaN written
    inf_code: int  # +Inf magnitude code, -1 when the format has no Inf
    negative_zero: bool  # whether 0x80 is -0 (not for e4m3fnuz, where it is NaN)
    fmt_id: int  # fp8_decode's FMT_ID


FP8_FORMATS: Dict[str, Fp8Bits] = {
    "e4m3fn": Fp8Bits(3, 7, 448.0, 0x7E, 0x7F, -1, True, 0),
    "e5m2": Fp8Bits(2, 15, 57344.0, 0x7B, 0x7F, 0x7C, True, 1),
    "e4m3fnuz": Fp8Bits(3, 8, 240.0, 0x7F, 0x80, -1, False, 2),
}
FP8_DTYPES = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2,
              "e4m3fnuz": torch.float8_e4m3fnuz}
FP8_FORMAT_OF = {v: k for k, v in FP8_DTYPES.items()}


# -------------------------------------------------------------------------------- GEMMs
@jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program ``pid`` in grouped order: GROUP_M row tiles share each
    column of b tiles while it is in L2."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@jit
def tile_offsets(pid_m, pid_n, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """A GEMM output tile's row and column indices, their in-bounds masks, and the indices
    widened to int64 (for pointer arithmetic past 2^31 elements):
    (offs_m, offs_n, m_ok, n_ok, offs_m64, offs_n64)."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    return offs_m, offs_n, m_ok, n_ok, offs_m.to(tl.int64), offs_n.to(tl.int64)


# ------------------------------------------------------------------------------ codecs
@jit
def fp8_encode(y, MBITS: tl.constexpr, BIAS: tl.constexpr, MAX_CODE: tl.constexpr,
               NAN_CODE: tl.constexpr, INF_CODE: tl.constexpr, NEG_ZERO: tl.constexpr,
               SATURATE: tl.constexpr, HW_CAST: tl.constexpr):
    """fp32 -> fp8 codes (int32 in [0, 255]); lowbit.reference.fp8_encode, line for line."""
    if HW_CAST:
        # e4m3fn + saturate only (the host checks): satfinite RNE conversion on sm_89+.
        out = y.to(tl.float8e4nv).to(tl.uint8, bitcast=True).to(tl.int32)
        # The instruction promises some NaN code, not which: write the canonical one.
        out = tl.where(y != y, NAN_CODE, out)
    else:
        bits = y.to(tl.int32, bitcast=True)
        sign = (bits >> 31) & 1
        mag = bits & 0x7FFFFFFF
        is_nan = mag > 0x7F800000
        is_inf = mag == 0x7F800000
        exp_field = mag >> 23
        frac = mag & 0x7FFFFF
        # The significand with its implicit bit; fp32 subnormals have none and share the
        # exponent of the smallest normal.
        sig = tl.where(exp_field > 0, frac | 0x800000, frac)
        e = tl.maximum(exp_field, 1) - 127
        # Bits to drop: 23 - MBITS for a normal result, more for a subnormal one. From 25 on,
        # nothing is kept and the remainder (< 2^24) is under half an ulp, so capping there
        # is exact and keeps every shift inside int32.
        shift = tl.minimum((23 - MBITS) + tl.maximum((1 - BIAS) - e, 0), 25)
        kept = sig >> shift
        rem = sig & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        up = (rem > half) | ((rem == half) & ((kept & 1) == 1))
        kept = kept + up.to(tl.int32)
        # Normal: kept holds the implicit bit at MBITS, so adding (biased - 1) << MBITS gives
        # the code and a rounding carry moves into the exponent by itself. Subnormal: kept is
        # the code.
        biased = e + BIAS
        code = tl.where(biased >= 1, ((biased - 1) << MBITS) + kept, kept)
        overflow = is_inf | ((~is_nan) & (code > MAX_CODE))
        if SATURATE:
            code = tl.where(overflow, MAX_CODE, code)
            nan_out = is_nan
        elif INF_CODE >= 0:
            code = tl.where(overflow, INF_CODE, code)
            nan_out = is_nan
        else:
            nan_out = is_nan | overflow
        if NEG_ZERO:
            out = code | (sign << 7)
        else:
            # e4m3fnuz: 0x80 is NaN, so a negative value that rounds to zero is +0.
            out = tl.where(code == 0, 0, code | (sign << 7))
        out = tl.where(nan_out, NAN_CODE, out)
    return out


@jit
def fp8_decode(c, MBITS: tl.constexpr, BIAS: tl.constexpr, FMT_ID: tl.constexpr,
               SUB_UNIT: tl.constexpr):
    """fp8 codes (any integer type) -> fp32, exactly (lowbit.reference.fp8_decode).
    FMT_ID: 0 e4m3fn, 1 e5m2, 2 e4m3fnuz. SUB_UNIT = 2^(1 - BIAS - MBITS)."""
    c = c.to(tl.int32) & 0xFF
    sign = c >> 7
    mag = c & 0x7F
    e = mag >> MBITS
    m = mag & ((1 << MBITS) - 1)
    normal = ((e - BIAS + 127) << 23) | (m << (23 - MBITS))
    sub = (m.to(tl.float32) * SUB_UNIT).to(tl.int32, bitcast=True)  # exact power-of-2 scaling
    bits = tl.where(e > 0, normal, sub) | (sign << 31)
    if FMT_ID == 0:
        nan = mag == 0x7F
    elif FMT_ID == 1:
        nan = mag > 0x7C
        bits = tl.where(mag == 0x7C, 0x7F800000 | (sign << 31), bits)
    else:
        nan = c == 0x80
    bits = tl.where(nan, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@jit
def int8_encode(y, zf, ASYM: tl.constexpr):
    """fp32 -> int8 code (int32): ``clamp(rint(y), -127, 127)``, or asymmetric
    ``clamp(rint(y) + zf, -128, 127)`` (``zf``: the zero point as fp32); a NaN product
    gives the zero point, +-Inf saturates (lowbit.reference.quantize_int8)."""
    r = rint_f32(y)
    r = tl.where(r != r, 0.0, r)
    if ASYM:
        # Exact below 2^24; above it the clamp saturates whatever the rounding.
        r = tl.minimum(tl.maximum(r + zf, -128.0), 127.0)
    else:
        r = tl.minimum(tl.maximum(r, -127.0), 127.0)
    return r.to(tl.int32)


@jit
def rint_f32(v):
    """Round to nearest, ties to even, in fp32 arithmetic (the interpreter has no libdevice):
    below 2^22, ``v + 1.5 * 2^23`` lies in [2^23, 2^24), where the spacing is 1, so the add
    rounds to an integer and the subtraction is exact; from 2^22 on, the int8 codecs
    saturate, so the value is passed on as it is. NaN stays NaN. Needs the add kept apart
    from the multiply before it: INT8 launches compile with ``enable_fp_fusion=False``."""
    return tl.where(tl.abs(v) < 4194304.0, (v + 12582912.0) - 12582912.0, v)


# CODEC values (the kernels test them as literals: Triton reads no plain globals).
FP8, INT8, INT8_ASYM = 0, 1, 2


@jit
def _encode(y, zf, CODEC: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
            MAX_CODE: tl.constexpr, NAN_CODE: tl.constexpr, INF_CODE: tl.constexpr,
            NEG_ZERO: tl.constexpr, SATURATE: tl.constexpr, HW_CAST: tl.constexpr):
    if CODEC == 0:
        code = fp8_encode(y, MBITS, BIAS, MAX_CODE, NAN_CODE, INF_CODE, NEG_ZERO, SATURATE,
                          HW_CAST)
    else:
        code = int8_encode(y, zf, CODEC == 2)
    return code


# ------------------------------------------------------------------ quantizer skeleton
@jit
def load_f32(ptrs, mask, X_BF16: tl.constexpr):
    """Load fp32/fp16 (converted) or bf16 (passed as int16 bits, widened by a shift)."""
    if X_BF16:
        raw = tl.load(ptrs, mask=mask, other=0)
        return (raw.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@jit
def _abs_bits(x):
    return x.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@jit
def _keys(x, CODEC: tl.constexpr):
    """Per element, the integers whose max (and min) give a slice's extent. Symmetric:
    ``|x|`` bits, whose integer order is the order of non-negative floats with any NaN above
    +Inf, so a NaN makes the absmax NaN (``torch.amax``). Asymmetric: the order key of x
    (bits, magnitude flipped for negatives) for the max and for the min, with NaN mapped to
    the largest / smallest int32, which decode to NaN again (``np.max`` / ``np.min``)."""
    if CODEC == 2:
        b = x.to(tl.int32, bitcast=True)
        k = b ^ ((b >> 31) & 0x7FFFFFFF)
        nan = x != x
        hi = tl.where(nan, 0x7FFFFFFF, k)
        lo = tl.where(nan, -2147483648, k)
    else:
        hi = _abs_bits(x)
        lo = hi
    return hi, lo


@jit
def _key_value(k):
    return (k ^ ((k >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@jit
def _scale_from_extent_bits(ext_bits, QMAX: tl.constexpr):
    """max(extent / qmax, 2^-126), correctly rounded; a zero extent -> 1; NaN stays NaN.
    The floor (lowbit.reference.quant.MIN_SCALE, the smallest normal fp32) keeps 1 / scale
    finite. It is applied to the bits (2^-126 is 0x00800000; the NaN patterns lie above it),
    which keeps NaN without relying on tl.maximum's NaN rule and makes the result the same
    with flush-to-zero: a subnormal extent or quotient is under the floor either way."""
    ext = ext_bits.to(tl.float32, bitcast=True)
    s = tl.math.div_rn(ext, tl.full(ext.shape, QMAX, tl.float32))
    s_bits = s.to(tl.int32, bitcast=True) & 0x7FFFFFFF  # s >= 0 or NaN
    s = tl.where(s_bits < 0x00800000, 0x00800000, s_bits).to(tl.float32, bitcast=True)
    return tl.where(ext_bits == 0, 1.0, s)


@jit
def _scale_zero(hi, lo, CODEC: tl.constexpr, QMAX: tl.constexpr):
    """(scale, zero point as fp32) from a slice's reduced keys (``_keys``). Asymmetric: the
    range [min(lo, 0), max(hi, 0)],
    ``scale = max((hi - lo) / QMAX, 2^-126)``, ``zero = clamp(rint(-128 - lo / scale),
    -128, 127)``, 0 where that is NaN. Symmetric: the absmax scale, zero 0."""
    if CODEC == 2:
        # The range includes 0 (the key of +0 is 0): then hi >= +0 (never -0, whose key is
        # -1) and hi - lo is +0 or more, or NaN.
        lo_v = _key_value(tl.minimum(lo, 0))
        ext = _key_value(tl.maximum(hi, 0)) - lo_v
        s = _scale_from_extent_bits(ext.to(tl.int32, bitcast=True), QMAX)
        z = rint_f32(-128.0 - tl.math.div_rn(lo_v, s))
        z = tl.where(z != z, 0.0, z)
        zf = tl.minimum(tl.maximum(z, -128.0), 127.0)
    else:
        s = _scale_from_extent_bits(hi, QMAX)
        zf = tl.zeros_like(s)
    return s, zf


@jit
def _inv(s):
    return tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s)


@jit
def f32_to_bf16_bits(v):
    """fp32 -> bf16 bits (int16), round to nearest even; NaN -> 0x7FC0 (torch's CPU cast)."""
    b = v.to(tl.int32, bitcast=True)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF
    r = tl.where((b & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, r)
    return r.to(tl.int16)


@jit
def round_to_bf16(v):
    """fp32 v rounded to bf16 (nearest even) and held in fp32, the same on every backend
    (the interpreter's own fp32 -> bf16 cast truncates)."""
    return (f32_to_bf16_bits(v).to(tl.int32) << 16).to(tl.float32, bitcast=True)


@jit
def _static_scale_zero(s_ptrs, z_ptrs, mask, CODEC: tl.constexpr, MASKED: tl.constexpr):
    """(scale, zero as fp32, zero as stored) of a given scale (and zero point); ``mask``
    is read only when MASKED (a single scale's load takes none)."""
    if MASKED:
        s = tl.load(s_ptrs, mask=mask, other=1.0)
    else:
        s = tl.load(s_ptrs)
    if CODEC == 2:
        if MASKED:
            z = tl.load(z_ptrs, mask=mask, other=0)
        else:
            z = tl.load(z_ptrs)
        zf = z.to(tl.float32)
    else:
        zf = tl.zeros_like(s)
        z = zf.to(tl.int32)
    return s, zf, z


@jit
def _extent_kernel(x_ptr, ext_ptr, R, K, stride_xr, stride_xk, n_tiles_k,
                   X_BF16: tl.constexpr, CODEC: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-tensor extent: a tile reduction of ``_keys``, then one integer atomic per program
    and key: ext[0] = max (the absmax bits, or the max's key), ext[1] = min (asymmetric)."""
    pid = tl.program_id(0)
    pid_r = pid // n_tiles_k
    pid_k = pid % n_tiles_k
    rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # (2^31 rows: no wrap)
    cols = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows < R)[:, None] & (cols < K)[None, :]
    x = load_f32(x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xk, mask, X_BF16)
    hi, lo = _keys(x, CODEC)
    tl.atomic_max(ext_ptr, tl.max(tl.max(hi, axis=1), axis=0))
    if CODEC == 2:
        tl.atomic_min(ext_ptr + 1, tl.min(tl.min(lo, axis=1), axis=0))


@jit
def _quant_tensor_kernel(x_ptr, q_ptr, s_in_ptr, s_out_ptr, z_in_ptr, z_out_ptr, ext_ptr,
                         R, K, stride_xr, stride_xk, stride_qr, n_tiles_k,
                         X_BF16: tl.constexpr, DYNAMIC: tl.constexpr, CODEC: tl.constexpr,
                         QMAX: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
                         MAX_CODE: tl.constexpr, NAN_CODE: tl.constexpr,
                         INF_CODE: tl.constexpr, NEG_ZERO: tl.constexpr,
                         SATURATE: tl.constexpr, HW_CAST: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """One scale for the whole tensor: static (read from a 0-d tensor) or derived from the
    extent that ``_extent_kernel`` left in ``ext_ptr``. Program 0 writes the scale out."""
    pid = tl.program_id(0)
    pid_r = pid // n_tiles_k
    pid_k = pid % n_tiles_k
    if DYNAMIC:
        if CODEC == 2:
            s, zf = _scale_zero(tl.load(ext_ptr), tl.load(ext_ptr + 1), CODEC, QMAX)
        else:
            s, zf = _scale_zero(tl.load(ext_ptr), 0, CODEC, QMAX)
        z = zf.to(tl.int32)
    else:
        s, zf, z = _static_scale_zero(s_in_ptr, z_in_ptr, 0, CODEC, False)
    if pid == 0:
        tl.store(s_out_ptr, s)
        if CODEC == 2:
            tl.store(z_out_ptr, z)
    inv = _inv(s)
    rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # (2^31 rows: no wrap)
    cols = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows < R)[:, None] & (cols < K)[None, :]
    x = load_f32(x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xk, mask, X_BF16)
    code = _encode(x * inv, zf, CODEC, MBITS, BIAS, MAX_CODE, NAN_CODE, INF_CODE, NEG_ZERO,
                   SATURATE, HW_CAST)
    tl.store(q_ptr + rows[:, None] * stride_qr + cols[None, :],
             code.to(q_ptr.dtype.element_ty), mask=mask)


def _segments_fit(nsegs: int, block: int) -> None:
    """_quant_segment_kernel numbers the row segments (rows x scales per row) in int32, as
    its per-segment divisions are cheapest there: a ValueError past that, rather than
    indices that wrap."""
    if nsegs + block > 2**31 - 1:
        raise ValueError(f"the Triton quantizer takes fewer than 2^31 row segments (rows x "
                         f"scales per row); this input has {nsegs}")


@jit
def _quant_segment_kernel(x_ptr, q_ptr, s_in_ptr, s_out_ptr, z_in_ptr, z_out_ptr,
                          S, NSEG, SEG_LEN, K, stride_xr, stride_xk, stride_qr,
                          stride_sir, stride_sik, stride_zir, stride_zik,
                          stride_sor, stride_sok,
                          X_BF16: tl.constexpr, DYNAMIC: tl.constexpr, CODEC: tl.constexpr,
                          QMAX: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
                          MAX_CODE: tl.constexpr, NAN_CODE: tl.constexpr,
                          INF_CODE: tl.constexpr, NEG_ZERO: tl.constexpr,
                          SATURATE: tl.constexpr, HW_CAST: tl.constexpr,
                          BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr):
    """One scale per segment: row r of x is cut into NSEG segments of SEG_LEN columns (the
    last may be ragged, masked by K). Per token/channel NSEG = 1 and SEG_LEN = K; per group
    SEG_LEN = G; per 1x128 block SEG_LEN = 128. A program takes BLOCK_S segments. The zero
    point (asymmetric) is laid out as the scale; the output scale and zero are dense.

    ONE_TILE (SEG_LEN <= BLOCK_K): the segment stays in registers between the reduction and
    the encode, one read of x. Otherwise a first loop reduces and a second reads the row
    again while it is still in L2.
    """
    seg = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    seg_ok = seg < S
    r = (seg // NSEG).to(tl.int64)
    g = seg % NSEG
    col0 = g * SEG_LEN
    x_row = x_ptr + r * stride_xr
    q_row = q_ptr + r * stride_qr
    j = tl.arange(0, BLOCK_K)
    if ONE_TILE:
        cols = col0[:, None] + j[None, :]
        mask = seg_ok[:, None] & (j[None, :] < SEG_LEN) & (cols < K)
        cols = cols.to(tl.int64)
        x = load_f32(x_row[:, None] + cols * stride_xk, mask, X_BF16)
        if DYNAMIC:
            hi, lo = _keys(x, CODEC)
            s, zf = _scale_zero(tl.max(hi, axis=1), tl.min(lo, axis=1), CODEC, QMAX)
            z = zf.to(tl.int32)
        else:
            s, zf, z = _static_scale_zero(s_in_ptr + r * stride_sir + g * stride_sik,
                                          z_in_ptr + r * stride_zir + g * stride_zik,
                                          seg_ok, CODEC, True)
    else:
        if DYNAMIC:
            hi = tl.zeros([BLOCK_S, BLOCK_K], tl.int32)
            lo = tl.zeros([BLOCK_S, BLOCK_K], tl.int32)
            for k0 in range(0, SEG_LEN, BLOCK_K):
                cols = col0[:, None] + (k0 + j)[None, :]
                mask = seg_ok[:, None] & ((k0 + j) < SEG_LEN)[None, :] & (cols < K)
                x = load_f32(x_row[:, None] + cols.to(tl.int64) * stride_xk, mask, X_BF16)
                khi, klo = _keys(x, CODEC)
                hi = tl.maximum(hi, khi)
                if CODEC == 2:
                    lo = tl.minimum(lo, klo)
            s, zf = _scale_zero(tl.max(hi, axis=1), tl.min(lo, axis=1), CODEC, QMAX)
            z = zf.to(tl.int32)
        else:
            s, zf, z = _static_scale_zero(s_in_ptr + r * stride_sir + g * stride_sik,
                                          z_in_ptr + r * stride_zir + g * stride_zik,
                                          seg_ok, CODEC, True)
    tl.store(s_out_ptr + r * stride_sor + g * stride_sok, s, mask=seg_ok)
    if CODEC == 2:
        tl.store(z_out_ptr + r * stride_sor + g * stride_sok, z, mask=seg_ok)
    inv = _inv(s)
    if ONE_TILE:
        code = _encode(x * inv[:, None], zf[:, None], CODEC, MBITS, BIAS, MAX_CODE, NAN_CODE,
                       INF_CODE, NEG_ZERO, SATURATE, HW_CAST)
        tl.store(q_row[:, None] + cols, code.to(q_ptr.dtype.element_ty), mask=mask)
    else:
        for k0 in range(0, SEG_LEN, BLOCK_K):
            cols = col0[:, None] + (k0 + j)[None, :]
            mask = seg_ok[:, None] & ((k0 + j) < SEG_LEN)[None, :] & (cols < K)
            cols = cols.to(tl.int64)
            x = load_f32(x_row[:, None] + cols * stride_xk, mask, X_BF16)
            code = _encode(x * inv[:, None], zf[:, None], CODEC, MBITS, BIAS, MAX_CODE,
                           NAN_CODE, INF_CODE, NEG_ZERO, SATURATE, HW_CAST)
            tl.store(q_row[:, None] + cols, code.to(q_ptr.dtype.element_ty), mask=mask)


@jit
def _quant_block2d_kernel(x_ptr, q_ptr, s_in_ptr, s_out_ptr, z_in_ptr, z_out_ptr, M, K,
                          n_blk_k, stride_xr, stride_xk, stride_qr,
                          stride_sir, stride_sik, stride_zir, stride_zik,
                          stride_sor, stride_sok,
                          X_BF16: tl.constexpr, DYNAMIC: tl.constexpr, CODEC: tl.constexpr,
                          QMAX: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
                          MAX_CODE: tl.constexpr, NAN_CODE: tl.constexpr,
                          INF_CODE: tl.constexpr, NEG_ZERO: tl.constexpr,
                          SATURATE: tl.constexpr, HW_CAST: tl.constexpr,
                          BH: tl.constexpr, BW: tl.constexpr, SUB_R: tl.constexpr):
    """One scale per BH x BW tile of a weight (128 x 128): a program per tile, walking it in
    SUB_R-row slices twice (reduction, then encode; the second pass hits L1/L2)."""
    pid = tl.program_id(0)
    bi = pid // n_blk_k
    bj = pid % n_blk_k
    cols = (bj * BW + tl.arange(0, BW)).to(tl.int64)
    col_ok = cols < K
    sub = tl.arange(0, SUB_R)
    if DYNAMIC:
        hi = tl.zeros([SUB_R, BW], tl.int32)
        lo = tl.zeros([SUB_R, BW], tl.int32)
        for r0 in range(0, BH, SUB_R):
            rows = (bi * BH + r0 + sub).to(tl.int64)
            mask = (rows < M)[:, None] & col_ok[None, :]
            x = load_f32(x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xk, mask,
                         X_BF16)
            khi, klo = _keys(x, CODEC)
            hi = tl.maximum(hi, khi)
            if CODEC == 2:
                lo = tl.minimum(lo, klo)
        s, zf = _scale_zero(tl.max(tl.max(hi, axis=1), axis=0),
                            tl.min(tl.min(lo, axis=1), axis=0), CODEC, QMAX)
        z = zf.to(tl.int32)
    else:
        s, zf, z = _static_scale_zero(s_in_ptr + bi * stride_sir + bj * stride_sik,
                                      z_in_ptr + bi * stride_zir + bj * stride_zik, 0, CODEC,
                                      False)
    tl.store(s_out_ptr + bi * stride_sor + bj * stride_sok, s)
    if CODEC == 2:
        tl.store(z_out_ptr + bi * stride_sor + bj * stride_sok, z)
    inv = _inv(s)
    for r0 in range(0, BH, SUB_R):
        rows = (bi * BH + r0 + sub).to(tl.int64)
        mask = (rows < M)[:, None] & col_ok[None, :]
        x = load_f32(x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xk, mask,
                     X_BF16)
        code = _encode(x * inv, zf, CODEC, MBITS, BIAS, MAX_CODE, NAN_CODE, INF_CODE, NEG_ZERO,
                       SATURATE, HW_CAST)
        tl.store(q_ptr + rows[:, None] * stride_qr + cols[None, :],
                 code.to(q_ptr.dtype.element_ty), mask=mask)


@jit
def _dequant_kernel(q_ptr, s_ptr, z_ptr, o_ptr, R, K, stride_qr, stride_qk, stride_sr,
                    stride_sk, stride_zr, stride_zk, stride_or, n_tiles_k,
                    CODEC: tl.constexpr, HAS_ZERO: tl.constexpr, MBITS: tl.constexpr,
                    BIAS: tl.constexpr, FMT_ID: tl.constexpr, SUB_UNIT: tl.constexpr,
                    PER_TENSOR: tl.constexpr, RB: tl.constexpr, CW: tl.constexpr,
                    OUT_BF16: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """decode(q) * scale in fp32 (INT8: (q - zero) * scale, q - zero exact), rounded once
    to the output dtype. The scale (and zero) of element (r, c) is s[r // RB, c // CW]:
    RB = 1 (per row / group) or 128 (block); CW = 0 means one scale per row, else the group
    / block width. PER_TENSOR reads a single scale."""
    pid = tl.program_id(0)
    pid_r = pid // n_tiles_k
    pid_k = pid % n_tiles_k
    rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # (2^31 rows: no wrap)
    cols = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < R
    mask = row_ok[:, None] & (cols < K)[None, :]
    c = tl.load(q_ptr + rows[:, None] * stride_qr + cols[None, :] * stride_qk, mask=mask, other=0)
    if CODEC == 0:
        v = fp8_decode(c, MBITS, BIAS, FMT_ID, SUB_UNIT)
    else:
        v = c.to(tl.float32)
    if PER_TENSOR:
        if HAS_ZERO:
            v = v - tl.load(z_ptr).to(tl.float32)
        y = v * tl.load(s_ptr)
    elif CW == 0:
        s = tl.load(s_ptr + (rows // RB) * stride_sr, mask=row_ok, other=1.0)
        if HAS_ZERO:
            z = tl.load(z_ptr + (rows // RB) * stride_zr, mask=row_ok, other=0)
            v = v - z.to(tl.float32)[:, None]
        y = v * s[:, None]
    else:
        s = tl.load(s_ptr + (rows // RB)[:, None] * stride_sr + (cols // CW)[None, :] * stride_sk,
                    mask=mask, other=1.0)
        if HAS_ZERO:
            z = tl.load(z_ptr + (rows // RB)[:, None] * stride_zr
                        + (cols // CW)[None, :] * stride_zk, mask=mask, other=0)
            v = v - z.to(tl.float32)
        y = v * s
    o_ptrs = o_ptr + rows[:, None] * stride_or + cols[None, :]
    if OUT_BF16:
        tl.store(o_ptrs, f32_to_bf16_bits(y), mask=mask)
    else:
        tl.store(o_ptrs, y.to(o_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host side
def as_rows(x: torch.Tensor) -> torch.Tensor:
    """x as a 2-D [rows, K] view (a copy only when leading dims cannot be merged)."""
    if x.dim() == 2:
        return x
    if x.dim() == 0:
        return x.reshape(1, 1)
    return x.reshape(-1, x.shape[-1])


def kernel_input(x2: torch.Tensor):
    """(tensor to pass, X_BF16): bf16 travels as its int16 bits."""
    if x2.dtype == torch.bfloat16:
        return x2.view(torch.int16), True
    return x2, False


# The fp8 fields of the encoder's constexprs, unused by the INT8 codecs.
_NO_FP8 = dict(MBITS=0, BIAS=0, MAX_CODE=0, NAN_CODE=0, INF_CODE=0, NEG_ZERO=False,
               SATURATE=False, HW_CAST=False)


def int8_codec(symmetric: bool) -> dict:
    """The encoder constexprs of the INT8 quantizer: QMAX is 127 (absmax / 127) or the 255
    levels of the asymmetric range."""
    if symmetric:
        return dict(CODEC=INT8, QMAX=127.0, **_NO_FP8)
    return dict(CODEC=INT8_ASYM, QMAX=255.0, **_NO_FP8)


@functools.lru_cache(maxsize=None)
def _nvidia_reflect_ftz_option() -> bool:
    """Whether this Triton's NVIDIA backend takes ``enable_reflect_ftz`` (a launch given an
    option its backend lacks raises)."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except Exception:  # noqa: BLE001 - no NVIDIA backend in this Triton
        return False
    return "enable_reflect_ftz" in getattr(CUDAOptions, "__dataclass_fields__", {})


def _launch_options(codec: int) -> dict:
    # The INT8 codecs round with an add right after x * inv (rint_f32): an FMA would fuse
    # them and round once. The FP8 encoder reads the product's bits only. The zero points
    # divide a range end that may be subnormal (-lo / scale): where a Triton version lowers
    # div_rn through libdevice, its flush-to-zero reflection would read that end as 0, so
    # it is turned off on NVIDIA GPUs (AMD's backend has no such option and keeps
    # denormals; the interpreter computes in numpy).
    if codec == FP8:
        return {}
    opts = dict(enable_fp_fusion=False)
    if not interpreting() and torch.version.hip is None and _nvidia_reflect_ftz_option():
        opts["enable_reflect_ftz"] = False
    return opts


def quantize(x: torch.Tensor, scale: Optional[torch.Tensor], zero: Optional[torch.Tensor],
             q: torch.Tensor, enc: dict, tile: Tuple[int, int], scale_shape: Sequence[int]):
    """Quantize ``x`` into ``q`` (x's shape; fp8 codes as uint8, or int8) with the codec
    ``enc`` (the encoder's constexprs: ``fp8_quant.fmt_constants`` or ``int8_codec``), one
    scale per ``tile`` = (rows, cols) of x viewed as [rows, K], 0 standing for the whole
    extent: (0, 0) per tensor, (1, 0) per row, (1, G) per group or 1 x 128 block, (128, 128)
    per weight block (lowbit.scale_layout.quant_tile / scale_shape). ``scale`` None:
    dynamic. ``zero``: the static zero point of the asymmetric codec. -> (scale, zero or
    None) of ``scale_shape``, new dense tensors (a static scale is copied)."""
    codec = enc["CODEC"]
    asym = codec == INT8_ASYM
    dynamic = scale is None
    sshape = tuple(scale_shape)
    dev = x.device
    s_out = torch.empty(sshape, dtype=torch.float32, device=dev)
    z_out = torch.empty(sshape, dtype=torch.int32, device=dev) if asym else None
    if x.numel() == 0:
        if dynamic:  # an empty slice's range is 0: scale 1, zero -128 - 0
            s_out.fill_(1.0)
            if asym:
                z_out.fill_(-128)
        else:
            s_out.copy_(scale)
            if asym:
                z_out.copy_(zero)
        return s_out, z_out

    x2 = as_rows(x)
    xk, x_bf16 = kernel_input(x2)
    rows, k = x2.shape
    q2 = q.view(rows, k)
    s_in = s_out if dynamic else scale
    z_o = z_out if asym else s_out  # (the symmetric kernels read and write no zero)
    z_in = zero if asym and not dynamic else z_o
    interp = interpreting()
    opts = dict(X_BF16=x_bf16, DYNAMIC=dynamic, **enc, **_launch_options(codec))

    tile_rows, tile_cols = tile
    if tile_rows == 0:
        if x.is_contiguous():  # one long row: the widest tiles
            xk, q2, rows, k = xk.reshape(1, -1), q2.reshape(1, -1), 1, x.numel()
        br, bk = elementwise_tile(rows, k, interp)
        n_tiles_k = triton.cdiv(k, bk)
        grid = (triton.cdiv(rows, br) * n_tiles_k,)
        ext = s_out  # unused placeholder when static
        if dynamic:
            ext = torch.zeros(2, dtype=torch.int32, device=dev)  # keys of +0: the range has 0
            _extent_kernel[grid](xk, ext, rows, k, xk.stride(0), xk.stride(1), n_tiles_k,
                                 X_BF16=x_bf16, CODEC=codec, BLOCK_R=br, BLOCK_K=bk,
                                 num_warps=ELEMWISE_WARPS)
        _quant_tensor_kernel[grid](
            xk, q2, s_in, s_out, z_in, z_o, ext, rows, k, xk.stride(0), xk.stride(1),
            q2.stride(0), n_tiles_k, BLOCK_R=br, BLOCK_K=bk, num_warps=ELEMWISE_WARPS, **opts)
        return s_out, z_out

    if tile_rows > 1:
        n_blk_r, n_blk_k = sshape
        si = s_in.view(n_blk_r, n_blk_k) if dynamic else s_in
        zi = z_in.view(n_blk_r, n_blk_k) if dynamic or not asym else z_in
        _quant_block2d_kernel[(n_blk_r * n_blk_k,)](
            xk, q2, si, s_out, zi, z_o, rows, k, n_blk_k, xk.stride(0), xk.stride(1),
            q2.stride(0), si.stride(0), si.stride(1), zi.stride(0), zi.stride(1),
            s_out.stride(0), s_out.stride(1), BH=tile_rows, BW=tile_cols,
            SUB_R=block2d_sub_rows(interp), num_warps=8, **opts)
        return s_out, z_out

    # Per row, group or 1 x 128 block: segments of one row.
    seg_len = tile_cols or k
    nseg = sshape[-1]
    so2 = s_out.view(rows, nseg)
    si2 = so2 if dynamic else s_in.reshape(rows, nseg)
    zi2 = z_in.reshape(rows, nseg)
    nsegs = rows * nseg
    bs, bk, one_tile, warps = segment_tile(nsegs, seg_len, interp)
    _segments_fit(nsegs, bs)
    _quant_segment_kernel[(triton.cdiv(nsegs, bs),)](
        xk, q2, si2, so2, zi2, z_o.view(rows, nseg), nsegs, nseg, seg_len, k,
        xk.stride(0), xk.stride(1), q2.stride(0), si2.stride(0), si2.stride(1),
        zi2.stride(0), zi2.stride(1), so2.stride(0), so2.stride(1),
        BLOCK_S=bs, BLOCK_K=bk, ONE_TILE=one_tile, num_warps=warps, **opts)
    return s_out, z_out


def quantize_launcher(x: torch.Tensor, scale: Optional[torch.Tensor],
                      zero: Optional[torch.Tensor], q_dtype: torch.dtype, enc: dict,
                      tile: Tuple[int, int], scale_shape: Sequence[int]):
    """``launch(x, scale, zero) -> (q of q_dtype, scale, zero or None)``: ``quantize`` for
    later arguments of the signature of these (shapes, strides, dtypes, alignment). Per row,
    group or 1 x 128 block (the activations' scales) and per tensor, the kernels are bound
    once (``bind``) and a call allocates the outputs and launches them on the data pointers
    with the views' strides worked out here; 128 x 128 weight blocks, empty inputs, and rows
    that are no view of x run ``quantize``, as does any call ``bind`` leaves to Triton's own
    launch (the interpreter, a launch hook)."""
    codec = enc["CODEC"]
    asym = codec == INT8_ASYM
    dynamic = scale is None
    sshape = tuple(scale_shape)
    dev, shape = x.device, tuple(x.shape)
    codes = torch.int8 if q_dtype == torch.int8 else torch.uint8  # fp8 codes travel as uint8
    empty, f32, i32, new = torch.empty, torch.float32, torch.int32, allocator()

    def generic(x, scale, zero):
        q = empty(shape, dtype=q_dtype, device=dev)
        s, z = quantize(x, scale, zero, q if codes == q_dtype else q.view(codes), enc, tile,
                        sshape)
        return q, s, z

    tile_rows, tile_cols = tile
    x2 = as_rows(x)
    if x.numel() == 0 or tile_rows > 1 or interpreting() or x2.data_ptr() != x.data_ptr():
        return generic
    xk, x_bf16 = kernel_input(x2)
    rows, k = x2.shape
    opts = dict(X_BF16=x_bf16, DYNAMIC=dynamic, **enc, **_launch_options(codec))
    # Aligned stand-ins of the outputs' dtypes for the binding (Triton specializes on the
    # dtype and the alignment of a pointer, which a fresh allocation has).
    q0, s0, z0 = (empty(16, dtype=t, device=dev) for t in (codes, f32, i32))

    if tile_rows == 0:  # per tensor
        if x.is_contiguous():  # one long row: the widest tiles
            xk, rows, k = xk.reshape(1, -1), 1, x.numel()
        br, bk = elementwise_tile(rows, k, False)
        n_tiles_k = triton.cdiv(k, bk)
        grid = (triton.cdiv(rows, br) * n_tiles_k,)
        sizes = (rows, k, xk.stride(0), xk.stride(1), k, n_tiles_k)  # (q's rows: k apart)
        extent = None
        if dynamic:
            extent = bind(_extent_kernel, grid, (xk, z0, rows, k, xk.stride(0), xk.stride(1),
                                                 n_tiles_k),
                          dict(X_BF16=x_bf16, CODEC=codec, BLOCK_R=br, BLOCK_K=bk,
                               num_warps=ELEMWISE_WARPS))
        s_in0 = s0 if dynamic else scale
        z_in0 = zero if asym and not dynamic else (z0 if asym else s0)
        kernel = bind(_quant_tensor_kernel, grid,
                      (xk, q0, s_in0, s0, z_in0, z0 if asym else s0, z0 if dynamic else s0,
                       *sizes),
                      dict(BLOCK_R=br, BLOCK_K=bk, num_warps=ELEMWISE_WARPS, **opts))

        def launch(x, scale, zero):
            q = new(dev, q_dtype, *shape)
            s = new(dev, f32, *sshape)
            z = new(dev, i32, *sshape) if asym else None
            xp, sp = x.data_ptr(), s.data_ptr()
            zp = z.data_ptr() if asym else sp
            if dynamic:
                ext = torch.zeros(2, dtype=i32, device=dev)  # keys of +0: the range has 0
                if not extent.direct(xp, ext.data_ptr(), *sizes[:4], n_tiles_k):
                    return generic(x, scale, zero)
                ok = kernel.direct(xp, q.data_ptr(), sp, sp, zp, zp, ext.data_ptr(), *sizes)
            else:
                zi = zero.data_ptr() if asym else sp
                ok = kernel.direct(xp, q.data_ptr(), scale.data_ptr(), sp, zi, zp, sp, *sizes)
            return (q, s, z) if ok else generic(x, scale, zero)

        return launch

    # Per row, group or 1 x 128 block: segments of one row.
    seg_len = tile_cols or k
    nseg = sshape[-1]
    nsegs = rows * nseg
    # The given scale and zero as [rows, nseg]: views, or the general path.
    given = [t.reshape(rows, nseg) for t in (scale, zero) if t is not None]
    if any(g.data_ptr() != t.data_ptr() for g, t in zip(given, (scale, zero))):
        return generic
    si = given[0] if not dynamic else None
    zi = given[1] if len(given) > 1 else None
    bs, bk, one_tile, warps = segment_tile(nsegs, seg_len, False)
    _segments_fit(nsegs, bs)
    so_strides = (nseg, 1)  # a fresh [rows, nseg] scale
    si_strides = (si.stride(0), si.stride(1)) if si is not None else so_strides
    zi_strides = (zi.stride(0), zi.stride(1)) if zi is not None else so_strides
    sizes = (nsegs, nseg, seg_len, k, xk.stride(0), xk.stride(1), k, *si_strides,
             *zi_strides, *so_strides)
    kernel = bind(_quant_segment_kernel, (triton.cdiv(nsegs, bs),),
                  (xk, q0, si if si is not None else s0, s0,
                   zi if zi is not None else (z0 if asym else s0), z0 if asym else s0, *sizes),
                  dict(BLOCK_S=bs, BLOCK_K=bk, ONE_TILE=one_tile, num_warps=warps, **opts))

    def launch(x, scale, zero):
        q = new(dev, q_dtype, *shape)
        s = new(dev, f32, *sshape)
        z = new(dev, i32, *sshape) if asym else None
        sp = s.data_ptr()
        zp = z.data_ptr() if asym else sp
        ok = kernel.direct(x.data_ptr(), q.data_ptr(), sp if dynamic else scale.data_ptr(), sp,
                           zero.data_ptr() if zi is not None else zp, zp, *sizes)
        return (q, s, z) if ok else generic(x, scale, zero)

    return launch


def _scale_map(scale: torch.Tensor, tile: Tuple[int, int]):
    """(scale as 2-D, RB, CW, per_tensor) for a dequantization scale whose entries each
    cover ``tile`` (lowbit.scale_layout.scale_tile; CW = 0: one scale per row)."""
    rb, cw = tile
    if rb == 0:
        return scale, 1, 0, True
    if rb == 1:
        return scale.reshape(-1, scale.shape[-1]), 1, cw, False
    return scale, rb, cw, False  # [ceil(M/128), ceil(K/128)] weight blocks


def _strides2(t: torch.Tensor):
    return (t.stride(0), t.stride(1)) if t.dim() == 2 else (0, 0)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor],
               out_dtype: torch.dtype, tile: Tuple[int, int], dec: dict) -> torch.Tensor:
    """decode(q) * scale (INT8: (q - zero) * scale) -> out_dtype, each scale (and zero)
    entry covering ``tile`` of q (as ``_scale_map`` reads it). ``q``: fp8 codes as uint8,
    or int8; ``dec``: the decoder's constexprs (CODEC, MBITS, BIAS, FMT_ID, SUB_UNIT)."""
    out = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    if q.numel() == 0:
        return out
    q2 = as_rows(q)
    rows, k = q2.shape
    o2 = out.view(rows, k)
    out_bf16 = out_dtype == torch.bfloat16
    if out_bf16:
        o2 = o2.view(torch.int16)
    s2, rb, cw, per_tensor = _scale_map(scale, tile)
    z2 = s2 if zero is None else _scale_map(zero, tile)[0]
    br, bk = elementwise_tile(rows, k, interpreting())
    n_tiles_k = triton.cdiv(k, bk)
    _dequant_kernel[(triton.cdiv(rows, br) * n_tiles_k,)](
        q2, s2, z2, o2, rows, k, q2.stride(0), q2.stride(1), *_strides2(s2), *_strides2(z2),
        o2.stride(0), n_tiles_k, HAS_ZERO=zero is not None, PER_TENSOR=per_tensor, RB=rb,
        CW=cw, OUT_BF16=out_bf16, BLOCK_R=br, BLOCK_K=bk, num_warps=ELEMWISE_WARPS, **dec)
    return out
