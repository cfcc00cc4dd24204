"""quantize_int8 and dequantize_int8 on the CUDA kernels of ``csrc/int8/`` (the kernels' names
and priorities: ``KERNELS`` in this package's ``__init__``).

The kernels are the FP8 quantizers' skeleton (``csrc/common/quant_kernels.cuh``) with the
INT8 codecs, and this module is ``quantize``'s registration with INT8's arguments: the same
kernel variants (static, tensor, row, group, block128), the same views of strided and offset
inputs, no host synchronization. Symmetric kernels reduce max |x|; asymmetric ones reduce
the range [min(x, 0), max(x, 0)] in the same pass and write an int32 zero point per scale.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from ..._build import _C
from ...scale_layout import quant_tile, scale_shape
from .._device import OnDevice, device_index, raw_stream
from . import DTYPE_CODE, KERNELS, device_reason, kernel_id, register
from .quantize import dequantize_into, make_quantize, needs_amax_word, prepare_dequantize

_STATIC = next(n for n, row in KERNELS["quantize_int8"].items() if row[2] == "static")

# Words of the per-tensor kernel's workspace (csrc/int8/int8_quant.h: both ends of the range).
_WORKSPACE_WORDS = 2


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


# --------------------------------------------------------------------------- quantize_int8
def quantize_launch(kid: int, x_dtype, geometry, granularity: str, group_size: int, block,
                    symmetric: bool):
    """The ``_C.Int8QuantizeLaunch`` of kernel ``kid`` for inputs of ``x_dtype`` whose rows
    are ``geometry`` (rows, cols, row stride, column stride)."""
    rows, cols, rs, cs = geometry
    return _C.Int8QuantizeLaunch(kid, DTYPE_CODE[x_dtype], rows, cols, rs, cs, bool(symmetric),
                                 *quant_tile(granularity, group_size, block))


def _launcher(kid, x, geometry, given, params):
    """launch(src, scale, zero) -> (q, scale, zero) for inputs of x's signature (see
    ``quantize.make_quantize``); a symmetric zero is an empty int32 tensor."""
    granularity, group_size, block, symmetric = params
    dev, shape = x.device, tuple(x.shape)
    idx = device_index(dev)
    s_shape = scale_shape("quantize_int8", shape, granularity, group_size, block)
    z_shape = (0,) if symmetric else s_shape
    params = (kid, x.dtype, geometry, granularity, group_size, block, symmetric)
    run = quantize_launch(*params).launch
    workspace = given[0] is None and needs_amax_word(granularity, group_size, block)
    empty, i8, f32, i32 = torch.empty, torch.int8, torch.float32, torch.int32

    def launch(src, scale, zero):
        q = empty(shape, dtype=i8, device=dev)
        s_out = empty(s_shape, dtype=f32, device=dev)
        z_out = empty(z_shape, dtype=i32, device=dev)
        # Held in a name until the launch is queued (see backends/cuda/quantize.py).
        ws = empty(_WORKSPACE_WORDS, dtype=i32, device=dev) if workspace else None
        with OnDevice(dev):
            run(src.data_ptr(), q.data_ptr(), _ptr(scale), _ptr(zero), s_out.data_ptr(),
                0 if symmetric else z_out.data_ptr(), _ptr(ws), raw_stream(idx))
        return q, s_out, z_out

    # native() for lowbit/_native.py: (a launch object of its own, workspace bytes), made
    # once (see gemm.py).
    launch.native = functools.cache(lambda: (quantize_launch(*params),
                                             4 * _WORKSPACE_WORDS if workspace else 0))
    return launch


def _make_quantize(name: str, m_range, variant: str):
    # given: scale, zero; params: granularity, group_size, block, symmetric
    return make_quantize(name, variant, _STATIC, _launcher, 2, lambda p: (p[0], p[2]))


register("quantize_int8", "int8_quantize", _make_quantize)


# ------------------------------------------------------------------------- dequantize_int8
def _make_dequantize(name: str, m_range, variant):
    kid = kernel_id(name)

    def binding(*a):
        return _C.Int8DequantizeLaunch(kid, *a)

    def run(q, scale, zero, out_dtype):
        if zero is not None:
            zero = zero.contiguous()
        return dequantize_into(q, scale, out_dtype, binding, (), (_ptr(zero),))

    def prepare(q, scale, zero, out_dtype):
        if zero is not None and not zero.is_contiguous():
            return run
        launch = prepare_dequantize(q, scale, out_dtype, binding, ())
        if launch is None:
            return run

        def step(q, scale, zero, out_dtype):
            return launch(q, scale, _ptr(zero))

        step.native = launch.native  # (zero: the plan's pointer, 0 without one)
        return step

    def supports(q, scale, zero, out_dtype) -> Optional[str]:
        return device_reason(q)

    run.__name__ = name
    return run, supports, prepare


register("dequantize_int8", "int8_dequantize", _make_dequantize)
