"""int4_quantize on the CUDA kernel of ``csrc/wxa16/int4_quant.cu``: group-wise int4 weight
quantization into the canonical packed layout, bit-exact with the reference (scales and zero
points included), for any strides of the weight and every arch from sm_80.

The weight is read once (16-byte vectors when its rows are contiguous and aligned); one launch,
no host synchronization. Weight quantization runs once per model, so a launch object is built
per call rather than cached.
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

    def run(w, group_size, symmetric):
        n, k = w.shape
        dev = w.device
        g = (n, k // group_size)
        q = torch.empty((n, k // 2), dtype=torch.uint8, device=dev)
        s = torch.empty(g, dtype=_ops.int4_scale_dtype(w.dtype), device=dev)
        z = torch.empty((0,) if symmetric else g, dtype=torch.uint8, device=dev)
        launch = _C.Int4QuantizeLaunch(kid, DTYPE_CODE[w.dtype], n, k, w.stride(0),
                                       w.stride(1), group_size, bool(symmetric))
        with OnDevice(dev):
            launch.launch(w.data_ptr(), q.data_ptr(), s.data_ptr(),
                          0 if symmetric else z.data_ptr(), raw_stream(device_index(dev)))
        return q, s, z

    def supports(w, group_size, symmetric) -> Optional[str]:
        if group_size not in GROUP_SIZES:
            # A warp's lanes reduce a group of at most 128: one group per row (per channel)
            # has no kernel here.
            return (f"{name} quantizes groups of {GROUP_SIZES}; per channel (group_size = K "
                    f"= {group_size}) runs on triton_int4_quantize")
        return device_reason(w)

    run.__name__ = name
    return run, supports, None


register("int4_quantize", "int4_quantize", _make)
