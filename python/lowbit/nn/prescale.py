"""PreScale: a Linear whose input is multiplied per channel first, ``inner(x * inv_scale)``.

SmoothQuant and AWQ scale a Linear's weight columns by ``s`` and its input by ``1 / s``. Where
the op producing the input can take ``1 / s`` (a norm or a Linear that nothing else reads,
``lowbit.fold``), it is folded there; elsewhere (after an activation function, or a norm
whose output is also a residual, as in BERT) the layer becomes a PreScale: the same function,
one elementwise multiply more. ``lowbit.quantize_`` then quantizes ``inner`` like any Linear.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn


class PreScale(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None,
                 dtype: Union[torch.dtype, str] = torch.float32):
        super().__init__()
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("inv_scale", torch.ones(in_features, dtype=dtype, device=device))
        self.inner = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    @torch.no_grad()
    def wrap(cls, linear: nn.Linear, s: torch.Tensor) -> "PreScale":
        """``linear`` with its weight columns multiplied by ``s`` [K] (positive) and its input
        by ``1 / s``: the same function."""
        if type(linear) is not nn.Linear:
            raise TypeError(f"PreScale.wrap: linear must be an nn.Linear; got "
                            f"{type(linear).__name__}")
        w = linear.weight
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  device=w.device, dtype=w.dtype)
        s = s.detach().double().to(w.device)
        mod.inner = linear
        linear.weight.copy_((w.double() * s[None, :]).to(w.dtype))
        mod.inv_scale.copy_((1 / s).to(w.dtype))
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * self.inv_scale.to(x.dtype))

    def config(self) -> dict:
        """Constructor arguments of an empty module of this structure (``load_quantized``)."""
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.inner.bias is not None,
                "dtype": str(self.inv_scale.dtype).removeprefix("torch.")}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
