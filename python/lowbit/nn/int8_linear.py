"""Int8Linear: an nn.Linear whose weight is stored in INT8 (symmetric, one fp32 scale per
output channel, quantized once).

Modes:
- ``"w8a8"`` (default): activations are quantized to int8 per token at run time (dynamic),
  or per tensor with a static scale from calibration (``act_scale``); symmetric
  ([-127, 127]) by default, or asymmetric (``act_symmetric=False``: [-128, 127] with an int32
  zero point per token, or the static ``act_zero``), which spends the 8 bits on the range the
  activations use (after a ReLU or GELU, most of it is positive). The product runs on
  ``lowbit.int8_gemm``: exact int32 accumulation, the zero-point correction
  ``acc - z[m] * sum_k w[n, k]``, then ``* s_x[m] * s_w[n] + bias`` in fp32, rounded to x's
  dtype.
- ``"w8a16"``: weight-only, ``lowbit.w8a16_gemm``: the activations stay in their dtype and
  the int8 weight is dequantized inside the GEMM (fp32 accumulation). For layers whose
  activations have outliers that int8 cannot hold; at decode sizes it streams half the
  bytes of a bf16 weight.

The W8A8 forward is the registered ``int8_linear`` op (lowbit/_linear.py): one op per layer
in a compiled graph, and in eager mode on a GPU a step prepared once per input signature
(``W8A8Forward``). Whichever backend serves the ops (the CUDA or Triton kernels, the NumPy
reference on a CPU) serves the module.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import _linear, api
from ._layer import (W8A8Forward, _check_linear, _copy_bias, _dtype_name, _host_tensor,
                     _layer_dtype, _layer_dtype_of, _new_bias, _rows, _static_act_scale)

MODES = ("w8a8", "w8a16")


class Int8Linear(W8A8Forward, nn.Module):
    _family = _linear.INT8
    # int8_linear's arguments after x
    _STATE = ("weight", "weight_scale", "bias", "act_scale", "act_zero", "act_symmetric")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 mode: str = "w8a8", static_act_scale: bool = False,
                 act_symmetric: bool = True, device=None, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.act_symmetric = bool(act_symmetric)
        self._step = None  # see W8A8Forward
        self._dtype = _layer_dtype(type(self).__name__, dtype)
        self.register_buffer(
            "weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale",
                             torch.ones(out_features, 1, dtype=torch.float32, device=device))
        self.register_buffer("act_scale", torch.ones((), dtype=torch.float32, device=device)
                             if static_act_scale else None)
        self.register_buffer("act_zero", torch.zeros((), dtype=torch.int32, device=device)
                             if static_act_scale and not act_symmetric else None)
        self.bias = _new_bias(out_features, bias, self._dtype, device)

    dtype = property(_layer_dtype_of, doc=_layer_dtype_of.__doc__)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, mode: str = "w8a8",
                    act_scale: Optional[torch.Tensor] = None, act_symmetric: bool = True,
                    act_zero: Optional[torch.Tensor] = None) -> "Int8Linear":
        """Quantize ``linear.weight`` per output channel (symmetric, absmax / 127, once).

        ``act_scale``: a static per-tensor activation scale (fp32 scalar, e.g. a calibrated
        absmax / 127, or (max - min) / 255 when asymmetric); None quantizes activations per
        token at run time. ``act_symmetric=False``: asymmetric activations, with the static
        int32 zero point ``act_zero`` when ``act_scale`` is given.
        """
        _check_linear(linear)
        act_scale = _static_act_scale(act_scale)
        if act_zero is not None and (act_symmetric or act_scale is None):
            raise ValueError("act_zero goes with a static act_scale and act_symmetric=False")
        if act_scale is not None and not act_symmetric and act_zero is None:
            raise ValueError("act_zero is required with a static act_scale when "
                             "act_symmetric=False")
        w = linear.weight.detach()
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, mode=mode,
                  static_act_scale=act_scale is not None, act_symmetric=act_symmetric,
                  device=w.device, dtype=w.dtype)
        q, s, _ = api.quantize_int8(w, granularity="channel")
        mod.weight.copy_(q)
        mod.weight_scale.copy_(s)
        if act_scale is not None:
            mod.act_scale.copy_(act_scale.reshape(()))
        if act_zero is not None:
            z = _host_tensor("act_zero", act_zero)
            if z.numel() != 1 or z.dtype.is_floating_point or not -128 <= int(z) <= 127:
                raise ValueError(f"act_zero must be one integer in [-128, 127]; got {act_zero!r}")
            mod.act_zero.copy_(z.reshape(()))
        _copy_bias(mod, linear)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "w8a16":
            x2, out_shape = _rows(self, x)
            return api.w8a16_gemm(x2, self.weight, self.weight_scale,
                                  self.bias).reshape(out_shape)
        return self._w8a8(x)  # takes x as it is (no reshape per call), checked there

    def config(self) -> dict:
        """The constructor's arguments for an empty module of this structure (load_state_dict
        then fills it): ``Int8Linear(**mod.config())``."""
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "mode": self.mode,
                "static_act_scale": self.act_scale is not None,
                "act_symmetric": self.act_symmetric, "dtype": _dtype_name(self.dtype)}

    def extra_repr(self) -> str:
        act = "static per-tensor" if self.act_scale is not None else "dynamic per-token"
        act += "" if self.act_symmetric else ", asymmetric"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, mode={self.mode}, activations={act}")
