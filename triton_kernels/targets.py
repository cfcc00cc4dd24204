"""What a GPU's matrix cores multiply, for the choices that depend on the chip rather than on
Triton (this module imports no triton: lowbit's own API reads it too)."""
from __future__ import annotations

import torch

# The AMD chips whose matrix cores multiply e4m3fnuz (CDNA3: MI300); CDNA4 (gfx950) takes the
# OCP formats instead, and Triton calls its fnuz dot deprecated there.
FNUZ_NATIVE_ARCHS = ("gfx940", "gfx941", "gfx942")


def fnuz_native(device: torch.device) -> bool:
    """Whether ``device`` (a torch "cuda" device, which under ROCm is an AMD GPU) multiplies
    e4m3fnuz operands in its matrix cores."""
    if device.type != "cuda" or torch.version.hip is None:
        return False
    arch = torch.cuda.get_device_properties(device).gcnArchName
    return arch.split(":")[0] in FNUZ_NATIVE_ARCHS
