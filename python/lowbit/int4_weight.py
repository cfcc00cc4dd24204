"""Int4Weight: a group-wise int4 weight in the canonical layout of the SPEC."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from . import reference as R
from .scale_layout import int4_group_size
from .reference.int4 import (PREPACK_AXES, PREPACK_TILE_K, PREPACK_TILE_N, UNPACK_AXES,
                             prepacked_shape)

CANONICAL = "canonical"
# The CUDA mixed-input GEMM's layout (lowbit/reference/int4.py describes it).
PREPACKED = "mma16x64"


def _nibbles(qweight: torch.Tensor) -> torch.Tensor:
    """canonical uint8 [N, K // 2] -> uint8 nibbles [N, K], on qweight's device."""
    return torch.stack([qweight & 0xF, qweight >> 4], dim=-1).reshape(qweight.shape[0],
                                                                      2 * qweight.shape[1])


def prepack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """canonical uint8 [N, K // 2] -> the prepacked int32 [ceil(N/16), ceil(K/64), 32, 4],
    with tensor ops on qweight's device (no host copy); reference.prepack_int4's twin."""
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise ValueError(f"qweight must be uint8 [N, K // 2]; got {qweight.dtype} "
                         f"{tuple(qweight.shape)}")
    n, k = qweight.shape[0], qweight.shape[1] * 2
    r, c, _, _ = prepacked_shape(n, k)
    u = torch.nn.functional.pad(_nibbles(qweight), (0, c * PREPACK_TILE_K - k,
                                                    0, r * PREPACK_TILE_N - n))
    a = u.reshape(r, 2, 8, c, 4, 4, 2, 2).permute(PREPACK_AXES)
    b = a[..., 0] | (a[..., 1] << 4)
    return b.reshape(r, c, 32, 16).contiguous().view(torch.int32)


def unpack_int4_prepacked(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The prepacked int32 [ceil(n/16), ceil(k/64), 32, 4] -> canonical uint8 [n, k // 2], on
    packed's device; reference.unpack_int4_prepacked's twin."""
    if packed.dtype != torch.int32 or tuple(packed.shape) != prepacked_shape(n, k) or k % 2:
        raise ValueError(f"packed must be int32 {prepacked_shape(n, k)} for n = {n}, k = {k} "
                         f"(k even); got {packed.dtype} {tuple(packed.shape)}")
    r, c = packed.shape[:2]
    b = packed.contiguous().view(torch.uint8).reshape(r, c, 8, 4, 4, 2, 2)
    a = torch.stack([b & 0xF, b >> 4], dim=-1).permute(UNPACK_AXES)
    u = a.reshape(r * PREPACK_TILE_N, c * PREPACK_TILE_K)[:n, :k]
    return u[:, 0::2] | (u[:, 1::2] << 4)


@dataclass
class Int4Weight:
    """Packed int4 weight of logical shape [N, K].

    qweight  uint8 [N, K // 2]  canonical: byte j of row n: k = 2j low nibble, k = 2j + 1 high
             or int32 [ceil(N/16), ceil(K/64), 32, 4], the CUDA GEMM's prepacked layout
             ("mma16x64", after ``prepack()``; ``unpack()`` goes back)
    scales   [N, K // G]        fp16, bf16 or fp32
    zeros    uint8 [N, K // G]  or None (zero point 8: symmetric)
    perm     int64 [K] or None  act-order GPTQ: the GEMM reads x[:, perm]
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: Optional[torch.Tensor]
    group_size: int
    perm: Optional[torch.Tensor] = None

    def __post_init__(self):
        # Per channel is held as one group of the whole row (group_size = K); -1, the
        # spelling int4_quantize takes, is resolved here where K is known (the canonical
        # layout's; the prepacked one pads K, so it must be given as K there).
        if self.group_size == -1:
            if self.qweight.dim() != 2:
                raise ValueError("Int4Weight: a prepacked weight per channel takes group_size "
                                 "= K; got -1")
            self.group_size = int4_group_size(-1, self.qweight.shape[1] * 2)

    @property
    def layout(self) -> str:
        """``"canonical"`` or ``"mma16x64"`` (prepacked), told apart by qweight's rank."""
        return PREPACKED if self.qweight.dim() == 4 else CANONICAL

    @property
    def shape(self) -> Tuple[int, int]:
        if self.layout == CANONICAL:
            return (self.qweight.shape[0], self.qweight.shape[1] * 2)
        # The prepacked tiles are padded: the scales [N, K // G] carry N and K.
        return (self.scales.shape[0], self.scales.shape[1] * self.group_size)

    def prepack(self) -> "Int4Weight":
        """The same weight in the CUDA GEMM's prepacked layout, converted on its device once
        (the GEMM never repacks). Already prepacked: returned as it is."""
        if self.layout == PREPACKED:
            return self
        return Int4Weight(prepack_int4(self.qweight), self.scales, self.zeros, self.group_size,
                          self.perm)

    def unpack(self) -> "Int4Weight":
        """The same weight in the canonical layout (the exact inverse of ``prepack``)."""
        if self.layout == CANONICAL:
            return self
        return Int4Weight(unpack_int4_prepacked(self.qweight, *self.shape), self.scales,
                          self.zeros, self.group_size, self.perm)

    def canonical_qweight(self) -> torch.Tensor:
        """qweight in the canonical layout, whatever this weight's layout."""
        return self.unpack().qweight

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    def to(self, device) -> "Int4Weight":
        """The same weight on ``device`` (a device only: the packed layout has fixed dtypes)."""
        if isinstance(device, torch.dtype):
            raise TypeError(f"Int4Weight.to takes a device; got the dtype {device}")
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Int4Weight(mv(self.qweight), mv(self.scales), mv(self.zeros), self.group_size,
                          mv(self.perm))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(u - z) * scale as a dense [N, K] tensor (K in checkpoint order when perm is set),
        on the weight's device: reference.dequantize_int4's values (one fp32 subtract and one
        fp32 multiply per element), then cast to ``dtype``."""
        u = _nibbles(self.canonical_qweight()).float()
        g = self.group_size
        z = 8.0 if self.zeros is None else self.zeros.float().repeat_interleave(g, dim=1)
        w = (u - z) * self.scales.float().repeat_interleave(g, dim=1)
        if self.perm is not None:
            w = w[:, torch.argsort(self.perm.to(w.device))]
        return w.to(dtype)

    # -- serialization: a flat dict of tensors, so safetensors and state_dict both carry it.
    # The canonical layout is what is stored (the interchange format): a prepacked weight
    # loads back canonical, and prepack() after loading gives the kernel's layout again.
    def state_dict(self, prefix: str = "") -> Dict[str, torch.Tensor]:
        d = {
            prefix + "qweight": self.canonical_qweight(),
            prefix + "scales": self.scales,
            prefix + "group_size": torch.tensor(self.group_size, dtype=torch.int64),
        }
        if self.zeros is not None:
            d[prefix + "zeros"] = self.zeros
        if self.perm is not None:
            d[prefix + "perm"] = self.perm
        return d

    @classmethod
    def from_state_dict(cls, d: Dict[str, torch.Tensor], prefix: str = "") -> "Int4Weight":
        missing = [prefix + k for k in ("qweight", "scales", "group_size") if prefix + k not in d]
        if missing:
            raise ValueError(f"Int4Weight.from_state_dict: the state dict lacks {missing} (it "
                             f"holds {sorted(d)})")
        return cls(d[prefix + "qweight"], d[prefix + "scales"], d.get(prefix + "zeros"),
                   int(d[prefix + "group_size"]), d.get(prefix + "perm"))

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous().cpu() for k, v in self.state_dict().items()}, path)

    @classmethod
    def load(cls, path: str, device="cpu") -> "Int4Weight":
        from safetensors.torch import load_file

        return cls.from_state_dict(load_file(path, device=str(device)))

    # -- importers
    @classmethod
    def from_awq(cls, qweight, qzeros, scales, group_size: int) -> "Int4Weight":
        """AWQ GEMM checkpoint tensors (qweight int32 [K, N/8], qzeros int32 [K/G, N/8],
        scales [K/G, N]) -> canonical."""
        dev = scales.device
        q, s, z = R.import_awq(qweight.cpu().numpy(), qzeros.cpu().numpy(),
                               scales.float().cpu().numpy(), group_size)
        return cls(torch.from_numpy(q).to(dev), torch.from_numpy(s).to(scales.dtype).to(dev),
                   torch.from_numpy(z).to(dev), group_size)

    @classmethod
    def from_gptq(cls, qweight, qzeros, scales, g_idx=None, *, group_size: int,
                  version: int = 1) -> "Int4Weight":
        """GPTQ checkpoint tensors (qweight int32 [K/8, N], qzeros int32 [K/G, N/8], scales
        [K/G, N], optional g_idx [K]; v1 stores zero - 1) -> canonical. ``group_size`` -1
        (per channel) is held as K."""
        dev = scales.device
        q, s, z, perm = R.import_gptq(
            qweight.cpu().numpy(), qzeros.cpu().numpy(), scales.float().cpu().numpy(),
            None if g_idx is None else g_idx.cpu().numpy(), group_size=group_size,
            version=version)
        return cls(torch.from_numpy(q).to(dev), torch.from_numpy(s).to(scales.dtype).to(dev),
                   torch.from_numpy(z).to(dev), group_size,
                   None if perm is None else torch.from_numpy(perm).to(dev))
