"""Int4Linear: an nn.Linear whose weight is stored in int4, group-wise (W4A16, the AWQ/GPTQ
scheme), in the SPEC's canonical layout (``lowbit.Int4Weight``):

    qweight  uint8 [N, K // 2]   two nibbles per byte, k = 2j low, k = 2j + 1 high
    scales   [N, K // G]         the layer dtype when it is bf16/fp16, else fp32
    zeros    uint8 [N, K // G]   or None (symmetric: zero point 8)
    perm     int64 [K]           or None (GPTQ act-order checkpoints only)

The forward is ``lowbit.w4a16_gemm(x, weight, bias)``: activations stay in their own dtype
(bf16, fp16, or fp32, which the op takes as well: an fp32 model computes in fp32, with no
cast of its activations), the weight is dequantized group by group inside the op.

On an NVIDIA GPU the module holds qweight in the CUDA kernels' prepacked layout
(``prepack()``; ``from_linear`` does it there by default), converted once; its state_dict
still carries the canonical layout, and a canonical checkpoint loads into a prepacked module.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import api, scale_layout
from .._backend import available_kernels
from ..int4_weight import CANONICAL, Int4Weight, prepack_int4
from ..ops import int4_scale_dtype
from ._layer import (_check_linear, _check_state_dtypes, _copy_bias, _dtype_name,
                     _layer_dtype, _new_bias, _rows)


def cuda_kernels_run_on(device: torch.device) -> bool:
    """Whether one of lowbit's CUDA W4A16 kernels (which read the prepacked layout) can run
    on ``device``: an NVIDIA GPU, and the kernels built in."""
    if device.type != "cuda" or torch.version.hip:
        return False
    return bool(available_kernels("w4a16_gemm", ("cuda",)))


def int4_quantize_backend(device: torch.device, group_size: int = 128) -> Optional[str]:
    """The backend to quantize a weight on ``device`` with: None (``auto``: the CUDA kernel on
    an NVIDIA GPU, the Triton kernel on other GPUs and for a weight per channel, whose
    ``group_size`` is none of scale_layout.GROUP_SIZES, the reference on the CPU), or
    ``"reference"`` by name where no GPU kernel of ``int4_quantize`` runs for it (neither
    lowbit's CUDA kernels nor Triton): there the weight goes through the host, once, at
    conversion."""
    if device.type != "cuda":
        return None
    if group_size in scale_layout.GROUP_SIZES and not torch.version.hip and \
            available_kernels("int4_quantize", ("cuda",)):
        return None
    return None if available_kernels("int4_quantize", ("triton",)) else "reference"


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 group_size: int = 128, symmetric: bool = True, device=None,
                 dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        name = type(self).__name__
        group_size = scale_layout.int4_group_size(group_size, in_features)
        scale_layout.check_group_size(name, group_size, k=in_features, k_what="in_features",
                                      whole_k=True)
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.symmetric = group_size, symmetric
        self._dtype = _layer_dtype(name, dtype)
        groups = (out_features, in_features // group_size)
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2,
                                                    dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(groups, dtype=int4_scale_dtype(self._dtype),
                                                  device=device))
        self.register_buffer("zeros", None if symmetric else
                             torch.full(groups, 8, dtype=torch.uint8, device=device))
        self.register_buffer("perm", None)
        self.bias = _new_bias(out_features, bias, self._dtype, device)

    @property
    def dtype(self) -> torch.dtype:
        """The layer dtype: the bias's, else the scales' (the scales are held in the layer
        dtype, and both follow a cast of the module, e.g. ``.half()``)."""
        return self.bias.dtype if self.bias is not None else self.scales.dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, group_size: int = 128, symmetric: bool = True,
                    prepack: Optional[bool] = None) -> "Int4Linear":
        """Quantize ``linear.weight`` group-wise by round to nearest (``lowbit.int4_quantize``
        where the weight lives, see ``int4_quantize_backend``: absmax / 7 per group when
        symmetric, (max - min) / 15 with a zero point otherwise).

        ``prepack``: hold the weight in the CUDA kernels' layout (``Int4Weight.prepack``);
        None does so when the weight is on a GPU that lowbit's CUDA W4A16 kernels run on."""
        _check_linear(linear)
        w = linear.weight.detach()
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  group_size=group_size, symmetric=symmetric, device=w.device, dtype=w.dtype)
        q = api.int4_quantize(w, group_size=mod.group_size, symmetric=symmetric,
                              backend=int4_quantize_backend(w.device, mod.group_size))
        mod.qweight.copy_(q.qweight)
        mod.scales.copy_(q.scales)
        if not symmetric:
            mod.zeros.copy_(q.zeros)
        _copy_bias(mod, linear)
        if prepack if prepack is not None else cuda_kernels_run_on(w.device):
            mod.prepack()
        return mod

    @property
    def layout(self) -> str:
        """The weight's layout: ``"canonical"`` or the CUDA kernels' prepacked one."""
        return self.weight_int4().layout

    def prepack(self) -> "Int4Linear":
        """Convert the weight to the CUDA kernels' prepacked layout, once, on its device (the
        Triton kernel reads the canonical one: ``unpack`` goes back). Returns self."""
        self.qweight = self.weight_int4().prepack().qweight
        return self

    def unpack(self) -> "Int4Linear":
        """Convert the weight back to the canonical layout. Returns self."""
        self.qweight = self.weight_int4().canonical_qweight()
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # Checkpoints hold the canonical layout (the SPEC's interchange format), whatever the
        # module runs on.
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.layout != CANONICAL:
            destination[prefix + "qweight"] = self.weight_int4().canonical_qweight()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints hold qweight canonical (uint8), whatever layout the module runs on.
        _check_state_dtypes(self, state_dict, prefix, ("qweight", "zeros"), ("scales",),
                            {"qweight": torch.uint8})
        # A None buffer has no state_dict key, so a saved act-order module would not load into
        # the module its config() builds: the saved perm makes room for itself.
        perm = state_dict.get(prefix + "perm")
        if perm is not None and self.perm is None:
            self.perm = torch.empty_like(perm, device=self.qweight.device)
        key = prefix + "qweight"
        q = state_dict.get(key)
        if q is not None and self.layout != CANONICAL and q.dim() == 2:
            # A canonical checkpoint into a prepacked module: converted on the way in.
            state_dict = dict(state_dict)
            state_dict[key] = prepack_int4(q.to(self.qweight.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def weight_int4(self) -> Int4Weight:
        """The weight as a ``lowbit.Int4Weight`` over this module's buffers (no copy)."""
        return Int4Weight(self.qweight, self.scales, self.zeros, self.group_size, self.perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, out_shape = _rows(self, x)
        # lowbit.w4a16_gemm's op on the module's tensors, without an Int4Weight per call (the
        # op checks the same shapes; a prepared signature runs its C++ plan).
        return api._call("w4a16_gemm", x2, self.qweight, self.scales, self.zeros,
                         self.group_size, self.perm, self.bias, "default").reshape(out_shape)

    def config(self) -> dict:
        """The constructor's arguments for an empty module of this structure (load_state_dict
        then fills it): ``Int4Linear(**mod.config())``. A ``perm`` is not structure: a
        state_dict that holds one brings it along."""
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "group_size": self.group_size,
                "symmetric": self.symmetric, "dtype": _dtype_name(self.dtype)}

    def extra_repr(self) -> str:
        zp = "symmetric" if self.symmetric else "asymmetric"
        order = ", act-order" if self.perm is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, group_size={self.group_size}, {zp}{order}")
