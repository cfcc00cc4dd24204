"""Int4Weight: a group-wise int4 weight in the canonical layout of the SPEC."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from . import reference as R


@dataclass
class Int4Weight:
    """Canonical packed int4 weight of logical shape [N, K].

    qweight  uint8 [N, K // 2]  byte j of row n: k = 2j low nibble, k = 2j + 1 high nibble
    scales   [N, K // G]        fp16, bf16 or fp32
    zeros    uint8 [N, K // G]  or None (zero point 8: symmetric)
    perm     int64 [K] or None  act-order GPTQ: the GEMM reads x[:, perm]
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: Optional[torch.Tensor]
    group_size: int
    perm: Optional[torch.Tensor] = None

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.qweight.shape[0], self.qweight.shape[1] * 2)

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
        """(u - z) * scale as a dense [N, K] tensor (K in checkpoint order when perm is set)."""
        w = R.dequantize_int4(
            self.qweight.cpu().numpy(), self.scales.float().cpu().numpy(),
            None if self.zeros is None else self.zeros.cpu().numpy(), self.group_size)
        if self.perm is not None:
            inv = np.argsort(self.perm.cpu().numpy())
            w = w[:, inv]
        return torch.from_numpy(np.ascontiguousarray(w)).to(dtype).to(self.device)

    # -- serialization: a flat dict of tensors, so safetensors and state_dict both carry it
    def state_dict(self, prefix: str = "") -> Dict[str, torch.Tensor]:
        d = {
            prefix + "qweight": self.qweight,
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
        [K/G, N], optional g_idx [K]; v1 stores zero - 1) -> canonical."""
        dev = scales.device
        q, s, z, perm = R.import_gptq(
            qweight.cpu().numpy(), qzeros.cpu().numpy(), scales.float().cpu().numpy(),
            None if g_idx is None else g_idx.cpu().numpy(), group_size=group_size,
            version=version)
        return cls(torch.from_numpy(q).to(dev), torch.from_numpy(s).to(scales.dtype).to(dev),
                   torch.from_numpy(z).to(dev), group_size,
                   None if perm is None else torch.from_numpy(perm).to(dev))
