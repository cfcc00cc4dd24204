"""Quantized drop-in replacements for torch.nn layers."""
from .fp8_linear import Fp8Linear
from .int8_linear import Int8Linear

__all__ = ["Fp8Linear", "Int8Linear"]
