"""What lowbit's Triton kernels share: the interpreter switch, device facts, the FP8
formats' bit fields, and ``jit``.

This package imports only triton, torch and this module: lowbit's backend
(``lowbit/backends/triton.py``) passes everything else (scale shapes and tiles from
``lowbit.scale_layout``) and checks at load time that ``FP8_FORMATS`` agrees with
``lowbit.reference.formats``, the definition.

Interpreter rule: a kernel runs under Triton's interpreter when ``TRITON_INTERPRET=1`` is
set at the time it is launched, whatever it was when this package was imported; ``jit``
builds the interpreted form of a kernel on first use.
"""
from __future__ import annotations

import functools
import os
from typing import Dict, NamedTuple

import torch


_ENV = getattr(os.environ, "_data", None)
_INTERPRET_KEY = os.fsencode("TRITON_INTERPRET")


def interpreting() -> bool:
    """Whether kernels launched now run under Triton's interpreter (read on every launch:
    from the dict that os.environ keeps in step, where it can, since os.environ.get of an
    unset variable raises and catches a KeyError, about 1 us)."""
    if os.name == "posix" and isinstance(_ENV, dict):
        return _ENV.get(_INTERPRET_KEY) == b"1"
    return os.environ.get("TRITON_INTERPRET") == "1"


def jit(fn):
    """``triton.jit`` with the interpreter chosen at launch (see the module's rule)."""
    return _kernel_class()(fn)


@functools.lru_cache(maxsize=None)
def _kernel_class():
    # Built on first use, so that the device and format facts below import without triton.
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    # id(jitted function) -> its interpreted form (keyed by id: a JITFunction hashes by its
    # source's cache key). Only module-level functions are jitted, so ids are not reused.
    interpreted: Dict[int, InterpretedFunction] = {}

    def interpreted_form(f: JITFunction) -> InterpretedFunction:
        g = interpreted.get(id(f))
        if g is None:
            g = interpreted[id(f)] = InterpretedFunction(f.fn)
        return g

    def interpreted_call(self, *args, **kwargs):
        # Inside an interpreted kernel, a call of any jitted function (ours, or
        # triton.language's own such as tl.max, compiled-only when triton was imported
        # without the interpreter) runs its interpreted form.
        return interpreted_form(self)(*args, **kwargs)

    class _Kernel(JITFunction):
        """A ``triton.jit`` function that launches in its interpreted form whenever
        ``interpreting()`` says so at that moment. It is a JITFunction, so the compiler
        treats calls to it as calls to any jitted function."""

        def run(self, *args, grid, warmup, **kwargs):
            if not interpreting():
                return super().run(*args, grid=grid, warmup=warmup, **kwargs)
            f = interpreted_form(self)
            # JITFunction.__call__ only raises (a device function called from Python); for
            # the launch, device-side calls made by the interpreter run interpreted instead.
            saved = JITFunction.__call__
            JITFunction.__call__ = interpreted_call
            try:
                return f.run(*args, grid=grid, warmup=warmup, **kwargs)
            finally:
                JITFunction.__call__ = saved

    return _Kernel


# ------------------------------------------------------------------------------- devices
def device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=None)
def capability(index: int):
    return torch.cuda.get_device_capability(index)


@functools.lru_cache(maxsize=None)
def smem_per_block(index: int) -> int:
    """The shared memory one program may opt in to on device ``index``: 227 KB on an H100,
    99 KB on sm_86 / sm_89."""
    return torch.cuda.get_device_properties(index).shared_memory_per_block_optin


# ----------------------------------------------------------------------------- fp8 formats
class Fp8Bits(NamedTuple):
    """The bit fields of an FP8 format, as the encoder and decoder take them."""

    mbits: int
    bias: int
    max_value: float
    max_code: int  # largest finite magnitude code
    nan_code: int  # the canonical NaN written
    inf_code: int  # +Inf magnitude code, -1 when the format has no Inf
    negative_zero: bool  # whether 0x80 is -0 (not for e4m3fnuz, where it is NaN)
    fmt_id: int  # fp8_decode's FMT_ID


FP8_FORMATS: Dict[str, Fp8Bits] = {
    "e4m3fn": Fp8Bits(3, 7, 448.0, 0x7E, 0x7F, -1, True, 0),
    "e5m2": Fp8Bits(2, 15, 57344.0, 0x7B, 0x7F, 0x7C, True, 1),
    "e4m3fnuz": Fp8Bits(3, 8, 240.0, 0x7F, 0x80, -1, False, 2),
}
FP8_DTYPES = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2,
              "e4m3fnuz": torch.float8_e4m3fnuz}
FP8_FORMAT_OF = {v: k for k, v in FP8_DTYPES.items()}
