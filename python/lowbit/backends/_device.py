"""Device helpers shared by the GPU backends: the device index, its capability, the raw
current stream, and a guard that makes a tensor's device current for a launch."""
from __future__ import annotations

import functools
from typing import Optional

import torch

from .._env import getenv

try:
    _raw_stream = torch._C._cuda_getCurrentRawStream  # no Stream object per call
except AttributeError:  # pragma: no cover - older torch
    _raw_stream = None


# torch.cuda.current_device() without its lazy-init check: OnDevice runs for tensors already
# on a CUDA device, so CUDA is initialized.
_current_device = getattr(torch._C, "_cuda_getDevice", None) or torch.cuda.current_device


def device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=None)
def capability(index: int):
    return torch.cuda.get_device_capability(index)


def arch_override() -> Optional[int]:
    """``LOWBIT_ARCH`` (e.g. 80 or 89): the GPU kernels and ``auto``'s table behave as on that
    arch, so that older paths run on a newer card. None when unset."""
    v = getenv("LOWBIT_ARCH")
    if not v:
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"LOWBIT_ARCH must be a compute capability such as 80 or 89; got {v!r}")


def raw_stream(idx: int) -> int:
    """The handle of device ``idx``'s current stream."""
    if _raw_stream is not None:
        return _raw_stream(idx)
    return torch.cuda.current_stream(idx).cuda_stream


def stream(device: torch.device) -> int:
    """The handle of ``device``'s current stream."""
    return raw_stream(device_index(device))


class OnDevice:
    """Makes ``device`` current for a launch when it is not already (kernels launch on the
    current device); a no-op in the common case."""

    __slots__ = ("idx", "prev")

    def __init__(self, device: torch.device):
        self.idx = device.index
        self.prev = None

    def __enter__(self):
        if self.idx is not None:
            cur = _current_device()
            if cur != self.idx:
                self.prev = cur
                torch.cuda.set_device(self.idx)

    def __exit__(self, *exc):
        if self.prev is not None:
            torch.cuda.set_device(self.prev)
