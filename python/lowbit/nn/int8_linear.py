"""Int8Linear: an nn.Linear whose weight is stored in INT8 (symmetric, one fp32 scale per
output channel, quantized once).

Modes:
- ``"w8a8"`` (default): activations are quantized to int8 (symmetric) per token at run time
  (dynamic), or per tensor with a static scale from calibration (``act_scale``), and the
  product runs on ``lowbit.int8_gemm``: exact int32 accumulation, then
  ``y = acc * s_x[m] * s_w[n] + bias`` in fp32, rounded to x's dtype.
- ``"w8a16"``: weight-only; the weight is dequantized to the activation dtype and multiplied
  by ``F.linear``. For layers whose activations have outliers that int8 cannot hold.

The forward calls the public ops only, so whichever backend serves them (the NumPy reference
today) serves the module, eager or under ``torch.compile``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import api
from ._layer import (_check_linear, _copy_bias, _dtype_name, _layer_dtype, _layer_dtype_of,
                     _new_bias, _rows, _static_act_scale)

MODES = ("w8a8", "w8a16")


class Int8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 mode: str = "w8a8", static_act_scale: bool = False, device=None,
                 dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self._dtype = _layer_dtype(type(self).__name__, dtype)
        self.register_buffer(
            "weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale",
                             torch.ones(out_features, 1, dtype=torch.float32, device=device))
        self.register_buffer("act_scale", torch.ones((), dtype=torch.float32, device=device)
                             if static_act_scale else None)
        self.bias = _new_bias(out_features, bias, self._dtype, device)

    dtype = property(_layer_dtype_of, doc=_layer_dtype_of.__doc__)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, mode: str = "w8a8",
                    act_scale: Optional[torch.Tensor] = None) -> "Int8Linear":
        """Quantize ``linear.weight`` per output channel (symmetric, absmax / 127, once).

        ``act_scale``: a static per-tensor activation scale (fp32 scalar, e.g. a calibrated
        absmax / 127); None quantizes activations per token at run time.
        """
        _check_linear(linear)
        act_scale = _static_act_scale(act_scale)
        w = linear.weight.detach()
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, mode=mode,
                  static_act_scale=act_scale is not None, device=w.device, dtype=w.dtype)
        q, s, _ = api.quantize_int8(w, granularity="channel")
        mod.weight.copy_(q)
        mod.weight_scale.copy_(s)
        if act_scale is not None:
            mod.act_scale.copy_(act_scale.reshape(()))
        _copy_bias(mod, linear)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, out_shape = _rows(self, x)
        if self.mode == "w8a16":
            w = api.dequantize_int8(self.weight, self.weight_scale, out_dtype=x.dtype)
            y = F.linear(x2, w, None if self.bias is None else self.bias.to(x.dtype))
        else:
            gran = "tensor" if self.act_scale is not None else "token"
            q, s, _ = api.quantize_int8(x2, self.act_scale, granularity=gran, symmetric=True)
            y = api.int8_gemm(q, self.weight, s, self.weight_scale, self.bias,
                              out_dtype=x.dtype)
        return y.reshape(out_shape)

    def config(self) -> dict:
        """The constructor's arguments for an empty module of this structure (load_state_dict
        then fills it): ``Int8Linear(**mod.config())``."""
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "mode": self.mode,
                "static_act_scale": self.act_scale is not None,
                "dtype": _dtype_name(self.dtype)}

    def extra_repr(self) -> str:
        act = "static per-tensor" if self.act_scale is not None else "dynamic per-token"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, mode={self.mode}, activations={act}")
