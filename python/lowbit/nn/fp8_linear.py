"""Fp8Linear: an nn.Linear whose weight is stored in FP8 (one scale per output channel,
quantized once), in ``fmt`` e4m3fn (the default: NVIDIA's and the OCP's format) or
e4m3fnuz (AMD MI300's: max 240, no -0; the layer then runs on the Triton kernels, natively
on MI300, decoded to fp16 elsewhere).

Modes:
- ``"w8a8"`` (default): activations are quantized to the weight's format per token at run
  time (dynamic),
  or per tensor with a static scale from calibration (``act_scale``), and the product runs
  on ``lowbit.fp8_scaled_mm``: ``y = (q_x @ q_w.T) * s_x[m] * s_w[n] + bias``.
- ``"w8a16"``: weight-only; the weight is dequantized to the activation dtype and multiplied
  by ``F.linear``. For cards without FP8 tensor cores (sm_80) and for layers whose
  activations do not tolerate FP8.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import _linear, api
from .._checks import FLOAT_DTYPES, FP8_FORMAT_OF, FP8_WEIGHT_DTYPES
from ._layer import (W8A8Forward, _check_linear, _copy_bias, _dtype_name, _layer_dtype,
                     _layer_dtype_of, _new_bias, _rows, _static_act_scale)

MODES = ("w8a8", "w8a16")
FORMATS = {FP8_FORMAT_OF[d]: d for d in FP8_WEIGHT_DTYPES}  # fmt -> the weight's dtype


class Fp8Linear(W8A8Forward, nn.Module):
    _family = _linear.FP8
    _STATE = ("weight", "weight_scale", "bias", "act_scale")  # fp8_linear's arguments after x

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 mode: str = "w8a8", static_act_scale: bool = False, device=None,
                 dtype: torch.dtype = torch.bfloat16, fmt: str = "e4m3fn"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {sorted(FORMATS)}; got {fmt!r}")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.register_buffer(
            "weight", torch.zeros(out_features, in_features, dtype=FORMATS[fmt],
                                  device=device))
        self.register_buffer("weight_scale",
                             torch.ones(out_features, 1, dtype=torch.float32, device=device))
        self.register_buffer("act_scale", torch.ones((), dtype=torch.float32, device=device)
                             if static_act_scale else None)
        self._dtype = _layer_dtype(type(self).__name__, dtype)  # without a bias: config()'s
        self.bias = _new_bias(out_features, bias, self._dtype, device)
        self._step = None  # see W8A8Forward

    dtype = property(_layer_dtype_of, doc=_layer_dtype_of.__doc__)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, mode: str = "w8a8",
                    act_scale: Optional[torch.Tensor] = None,
                    fmt: str = "e4m3fn") -> "Fp8Linear":
        """Quantize ``linear.weight`` to ``fmt`` per output channel (absmax / 448 for e4m3fn,
        / 240 for e4m3fnuz, once).

        ``act_scale``: a static per-tensor activation scale (fp32 scalar, e.g. a calibrated
        absmax / 448, or / 240 for e4m3fnuz: ``lowbit.calibrate``'s format of the same
        name); None quantizes activations per token at run time.
        """
        _check_linear(linear)
        act_scale = _static_act_scale(act_scale)
        w = linear.weight.detach()
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, mode=mode,
                  static_act_scale=act_scale is not None, device=w.device,
                  dtype=w.dtype, fmt=fmt)
        q, s = api.quantize_fp8(w, fmt=fmt, granularity="channel")
        mod.weight.copy_(q)
        mod.weight_scale.copy_(s)
        if act_scale is not None:
            mod.act_scale.copy_(act_scale.reshape(()))
        _copy_bias(mod, linear)
        return mod

    def config(self) -> dict:
        """The constructor's keyword arguments that rebuild an empty module of this structure
        (``lowbit.load_quantized`` builds one, then loads the state)."""
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "mode": self.mode,
                "static_act_scale": self.act_scale is not None,
                "dtype": _dtype_name(self.dtype), "fmt": self.fmt}

    @property
    def fmt(self) -> str:
        """The weight's (and the activations') fp8 format."""
        return FP8_FORMAT_OF[self.weight.dtype]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "w8a16":
            x2, out_shape = _rows(self, x)
            if x.dtype not in FLOAT_DTYPES:  # (dequantize_fp8 would name its out_dtype)
                raise TypeError(f"{type(self).__name__}: x must have dtype bfloat16, float16 "
                                f"or float32; got {x.dtype}")
            w = api.dequantize_fp8(self.weight, self.weight_scale, out_dtype=x.dtype)
            y = F.linear(x2, w, None if self.bias is None else self.bias.to(x.dtype))
            return y.reshape(out_shape)
        return self._w8a8(x)

    def extra_repr(self) -> str:
        act = "static per-tensor" if self.act_scale is not None else "dynamic per-token"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, mode={self.mode}, fmt={self.fmt}, "
                f"activations={act}")
