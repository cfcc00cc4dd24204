"""quantize_fp8 and dequantize_fp8 on the CUDA kernels of ``csrc/fp8/`` (the kernels' names
and priorities: ``KERNELS`` in this package's ``__init__``).

Each call allocates its outputs on the input's device and launches on the current stream:
no host synchronization, no ``.item()``, no copy of the input (strided, transposed and
offset inputs go to the kernels as pointer + strides; only an N-D input whose leading
dimensions cannot be merged into one stride is made contiguous first).

The quantize kernels, by the scale they take or compute (``variant`` in ``KERNELS``):

- static: a given scale of any granularity, one pass.
- tensor: dynamic per-tensor scale, two passes (amax with an atomicMax into a 4-byte
  workspace, then scale + quantize; the input is read twice).
- row: dynamic per-row scale (``token`` and ``channel``), the row held in registers between
  the max and the encode: one read of the input.
- group: dynamic scale per 1 x G group (``group``, and ``block`` with ``block=(1, 128)``),
  one pass.
- block128: dynamic scale per 128 x 128 tile, one pass.

The dequantize kernel takes every scale layout the SPEC allows.

``HW_CVT`` (on by default; ``LOWBIT_FP8_HW_CVT=0`` in the environment turns it off): on
sm_89+ GPUs, ``saturate=True`` e4m3fn / e5m2 quantization encodes with the hardware
``cvt.rn.satfinite.{e4m3,e5m2}x2.f32`` (NaN rewritten to the canonical 0x7F) instead of the
integer encoder, which is ALU-bound near the copy bandwidth (see bench/NOTES.md, "CUDA fp8
quantize / dequantize"). Both encoders were checked bit-exact against
the reference for all 2^32 fp32 inputs (tests/test_cuda_fp8_quant.py runs both). Older
GPUs, e4m3fnuz and saturate=False always use the integer encoder.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from ..._build import _C
from ..._checks import FP8_DTYPES, FP8_FORMAT_OF
from ...scale_layout import quant_tile, scale_ld, scale_shape, scale_tile
from .._device import OnDevice, device_index, raw_stream
from . import DTYPE_CODE, FP8_FORMAT_CODE, KERNELS, device_reason, kernel_id, register
from . import available, has_cuda_kernels  # noqa: F401  (this op's availability, for callers)

# Whether saturate=True e4m3fn / e5m2 quantization may use the sm_89+ hardware conversion
# (ignored on older GPUs and for the other modes). Read at each call of the Python path;
# tests flip it. The C++ plans of lowbit._torch_ops keep the encoder of the time they were
# prepared: a flip that must reach every call is followed by lowbit._native.reset().
HW_CVT = os.environ.get("LOWBIT_FP8_HW_CVT", "1") != "0"

_STATIC = next(n for n, row in KERNELS["quantize_fp8"].items() if row[2] == "static")


def _rows_view(t: torch.Tensor):
    """``t`` as a [rows, cols] view with element strides: (view, rows, cols, rs, cs). The
    last dimension is the row; leading dimensions are merged when their strides allow it,
    else the tensor is made contiguous (a copy)."""
    if t.dim() == 0:
        return t, 1, 1, 1, 1
    cols = t.shape[-1]
    if t.dim() == 1:
        return t, 1, cols, cols, t.stride(0)
    if t.dim() == 2:
        return t, t.shape[0], cols, t.stride(0), t.stride(1)
    rows = 1
    for d in t.shape[:-1]:
        rows *= d
    try:
        v = t.view(rows, cols)
    except RuntimeError:  # leading dimensions that no single stride describes
        v = t.reshape(rows, cols)
    return v, rows, cols, v.stride(0), v.stride(1)


def needs_amax_word(granularity: str, group_size: int, block) -> bool:
    """Whether a dynamic scale of this granularity takes a 4-byte workspace (the per-tensor
    kernel's amax word)."""
    return quant_tile(granularity, group_size, block) == (0, 0)


def _dynamic_variant(granularity: str, block) -> str:
    """The kernel variant serving a dynamic scale of this granularity."""
    if granularity == "tensor":
        return "tensor"
    if granularity in ("token", "channel"):
        return "row"
    if granularity == "group" or tuple(block) == (1, 128):
        return "group"
    return "block128"


# ---------------------------------------------------------------------------- quantize_fp8
def quantize_launches(kid: int, x_dtype, geometry, fmt: str, granularity: str,
                      group_size: int, block, saturate: bool):
    """The ``_C.QuantizeLaunch`` objects of kernel ``kid`` for inputs of ``x_dtype`` whose rows
    are ``geometry`` (rows, cols, row stride, column stride), one per encoder: index with
    ``HW_CVT``, so that flipping it takes effect on the next call."""
    rows, cols, rs, cs = geometry
    args = (kid, DTYPE_CODE[x_dtype], rows, cols, rs, cs, FP8_FORMAT_CODE[fmt], bool(saturate),
            *quant_tile(granularity, group_size, block))
    return _C.QuantizeLaunch(*args, False), _C.QuantizeLaunch(*args, True)


def _quantize_launch(kid, x, geometry, scale, fmt, granularity, group_size, block, saturate):
    """launch(src, scale) -> (q, scale): quantizing inputs of x's signature whose rows are
    `src` ([rows, cols] with strides rs, cs: `geometry`), with `scale` (dense) or a dynamic
    one, on kernel `kid`. Everything but the pointers is worked out here, once."""
    dev, shape = x.device, tuple(x.shape)
    idx = device_index(dev)
    q_dtype = FP8_DTYPES[fmt]
    s_shape = scale_shape("quantize_fp8", shape, granularity, group_size, block)
    params = (kid, x.dtype, geometry, fmt, granularity, group_size, block, saturate)
    by_cvt = tuple(q.launch for q in quantize_launches(*params))
    workspace = scale is None and needs_amax_word(granularity, group_size, block)
    empty, f32, i32 = torch.empty, torch.float32, torch.int32

    def launch(src, scale):
        q = empty(shape, dtype=q_dtype, device=dev)
        s_out = empty(s_shape, dtype=f32, device=dev)
        # Held in a name until the launch is queued: a temporary's memory would go back to
        # the allocator before the kernel runs (and to the driver, without the caching
        # allocator).
        ws = empty(1, dtype=i32, device=dev) if workspace else None
        with OnDevice(dev):
            by_cvt[HW_CVT](src.data_ptr(), q.data_ptr(), 0 if scale is None else scale.data_ptr(),
                           s_out.data_ptr(), 0 if ws is None else ws.data_ptr(), raw_stream(idx))
        return q, s_out

    # native() for lowbit/_native.py: (a launch object of its own, of the encoder HW_CVT
    # names when it is made, workspace bytes), made once (see gemm.py).
    launch.native = functools.cache(lambda: (quantize_launches(*params)[HW_CVT],
                                             4 if workspace else 0))
    return launch


def make_quantize(name: str, variant: str, static_name: str, launcher, n_given: int,
                  tiling):
    """(run, supports, prepare) of quantize kernel ``name`` of a family whose op takes
    ``(x, *given, *params)``: ``given`` the ``n_given`` (1 or 2) static tensors (scale, zero
    point; None when dynamic), ``params`` the rest. ``launcher(kid, x, geometry, given,
    params)`` returns ``launch(src, *given)`` for inputs of x's signature whose rows are ``src``
    ([rows, cols] with strides rs, cs: ``geometry``), everything but the pointers worked out
    once; ``tiling(params)`` -> (granularity, block). ``variant`` as in ``KERNELS``;
    ``static_name`` the family's static-scale kernel."""
    kid = kernel_id(name)

    def run(x, *rest):
        v, *geometry = _rows_view(x)
        given = tuple(None if t is None else t.contiguous() for t in rest[:n_given])
        return launcher(kid, x, geometry, given, rest[n_given:])(v, *given)

    def prepare(x, *rest):
        # A remembered signature keeps its launch. Inputs whose rows are no view of x (a copy
        # per call) and static tensors that are not dense keep the general path.
        v, *geometry = _rows_view(x)
        given = rest[:n_given]
        if (v.data_ptr() != x.data_ptr() or x.numel() == 0 or
                any(t is not None and not t.is_contiguous() for t in given)):
            return run
        launch = launcher(kid, x, geometry, given, rest[n_given:])
        if n_given == 1:
            prepared = lambda x, scale, *_: launch(x, scale)  # noqa: E731
        else:
            prepared = lambda x, scale, zero, *_: launch(x, scale, zero)  # noqa: E731
        native = getattr(launch, "native", None)
        if native is not None:
            prepared.native = native
        return prepared

    def supports(x, scale, *rest) -> Optional[str]:
        why = device_reason(x)
        if why:
            return why
        if kid is None:
            return "not in this build of lowbit._C"
        if variant == "static":
            return None if scale is not None else "dynamic scale (this kernel takes a given scale)"
        if scale is not None:
            return f"static scale (served by {static_name})"
        granularity, block = tiling(rest[n_given - 1:])
        if _dynamic_variant(granularity, block) != variant:
            return f"granularity={granularity!r} block={tuple(block)} is another kernel's"
        return None

    run.__name__ = name
    return run, supports, prepare


def _fp8_launcher(kid, x, geometry, given, params):
    return _quantize_launch(kid, x, geometry, given[0], *params)


def _make_quantize(name: str, m_range, variant: str):
    # params: fmt, granularity, group_size, block, saturate
    return make_quantize(name, variant, _STATIC, _fp8_launcher, 1, lambda p: (p[1], p[3]))


register("quantize_fp8", "fp8_quantize", _make_quantize)


# -------------------------------------------------------------------------- dequantize_fp8
def dequantize_into(q, scale, out_dtype, binding, codec_args, extra_ptrs=()):
    """A new ``out_dtype`` tensor of q's shape: codes ``q`` with ``scale`` (any layout)
    through the launch ``binding(*view, *codec_args, tile_rows, tile_cols, scale_ld,
    out_dtype_code)``, launched with (q, scale, *extra_ptrs, out, stream)."""
    if q.numel() == 0:
        return torch.empty(q.shape, dtype=out_dtype, device=q.device)
    v, *geometry = _rows_view(q)
    scale = scale.contiguous()
    return _dequantize_launch(q, scale, out_dtype, binding, codec_args, geometry)(
        v, scale, *extra_ptrs)


def _dequantize_launch(q, scale, out_dtype, binding, codec_args, geometry):
    """launch(src, scale, *extra_ptrs) -> out for inputs of the signature of q and scale (a
    dense scale) whose rows are ``src`` ([rows, cols] with strides rs, cs: ``geometry``):
    the launch object, the output's shape and the stream's device worked out once."""
    dev, shape = q.device, tuple(q.shape)
    idx = device_index(dev)
    rows, cols, rs, cs = geometry
    tile_rows, tile_cols = scale_tile(scale.shape, q.shape)
    params = (rows, cols, rs, cs, *codec_args, tile_rows, tile_cols, scale_ld(scale.shape),
              DTYPE_CODE[out_dtype])
    launch = binding(*params).launch
    empty = torch.empty

    def run(src, scale, *extra_ptrs):
        out = empty(shape, dtype=out_dtype, device=dev)
        with OnDevice(dev):
            launch(src.data_ptr(), scale.data_ptr(), *extra_ptrs, out.data_ptr(),
                   raw_stream(idx))
        return out

    # native() for lowbit/_native.py: (a launch object of its own, no workspace), made once
    # (see gemm.py).
    run.native = functools.cache(lambda: (binding(*params), 0))
    return run


def prepare_dequantize(q, scale, out_dtype, binding, codec_args):
    """The launch a remembered signature of a dequantizer runs (``_dequantize_launch``), or
    None where its calls keep the general path: no elements, rows that are no view of q (a
    copy per call), a scale that is not dense. Its ``native`` is what the op's C++ plan
    launches (the pointers of q and the scale, as here)."""
    v, *geometry = _rows_view(q)
    if v.data_ptr() != q.data_ptr() or q.numel() == 0 or not scale.is_contiguous():
        return None
    return _dequantize_launch(q, scale, out_dtype, binding, codec_args, geometry)


def _make_dequantize(name: str, m_range, variant):
    kid = kernel_id(name)

    def binding(*a):
        return _C.DequantizeLaunch(kid, *a)

    def codec(q):  # (the launch's codec arguments: q's fp8 format)
        return (FP8_FORMAT_CODE[FP8_FORMAT_OF[q.dtype]],)

    def run(q, scale, out_dtype):
        return dequantize_into(q, scale, out_dtype, binding, codec(q))

    def prepare(q, scale, out_dtype):
        launch = prepare_dequantize(q, scale, out_dtype, binding, codec(q))
        if launch is None:
            return run

        def step(q, scale, out_dtype):
            return launch(q, scale)

        step.native = launch.native
        return step

    def supports(q, scale, out_dtype) -> Optional[str]:
        return device_reason(q)

    run.__name__ = name
    return run, supports, prepare


register("dequantize_fp8", "fp8_dequantize", _make_dequantize)
