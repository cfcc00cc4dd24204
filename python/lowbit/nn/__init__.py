"""Quantized drop-in replacements for torch.nn layers."""
from .fp8_linear import Fp8Linear

__all__ = ["Fp8Linear"]
