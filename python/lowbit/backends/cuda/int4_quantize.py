"""int4_quantize on the CUDA kernel of ``csrc/wxa16/int4_quant.cu``: group-wise int4 weight
quantization into the canonical packed layout, bit-exact with the reference (scales and zero
points included), for any strides of the weight and every arch from sm_80.

The weight is read once (16-byte vectors when its rows are contiguous and aligned); one launch,
no host synchronization. A signature's launch object is built once (``prepare``), like every
op's: the C++ plan of the signature (lowbit/_native.py) then launches it with no Python.
"""
from __future__ import annotations

from typing import Optional

import torch

from ... import ops as _ops
from ..._build import _C
from ...scale_layout import GROUP_SIZES
from .._device import OnDevice, device_index, raw_stream
from . import DTYPE_CODE, device_reason, kernel_id, register


def _make(name: str, m_range, variant):
    kid = kernel_id(name)

    def prepare(w, group_size, symmetric):
        """The launch of this signature (shape, strides, dtype, group, symmetry), built once:
        the step that allocates the outputs and launches it."""
        n, k = w.shape
        dev, idx = w.device, device_index(w.device)
        g = (n, k // group_size)
        sdtype = _ops.int4_scale_dtype(w.dtype)
        zshape = (0,) if symmetric else g
        launch = _C.Int4QuantizeLaunch(kid, DTYPE_CODE[w.dtype], n, k, w.stride(0),
                                       w.stride(1), group_size, bool(symmetric))
        go, empty = launch.launch, torch.empty

        def prepared(w, group_size, symmetric):
            q = empty((n, k // 2), dtype=torch.uint8, device=dev)
            s = empty(g, dtype=sdtype, device=dev)
            z = empty(zshape, dtype=torch.uint8, device=dev)
            with OnDevice(dev):
                go(w.data_ptr(), q.data_ptr(), s.data_ptr(), 0 if symmetric else z.data_ptr(),
                   raw_stream(idx))
            return q, s, z

        prepared.native = lambda: (launch, 0)
        prepared.__name__ = name
        return prepared

    def run(w, group_size, symmetric):
        return prepare(w, group_size, symmetric)(w, group_size, symmetric)

    def supports(w, group_size, symmetric) -> Optional[str]:
        if group_size not in GROUP_SIZES:
            # A warp's lanes reduce a group of at most 128: one group per row (per channel)
            # has no kernel here.
            return (f"{name} quantizes groups of {GROUP_SIZES}; per channel (group_size = K "
                    f"= {group_size}) runs on triton_int4_quantize")
        return device_reason(w)

    run.__name__ = name
    return run, supports, prepare


register("int4_quantize", "int4_quantize", _make)
