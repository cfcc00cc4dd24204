"""Quantized drop-in replacements for torch.nn layers."""
from .fp8_linear import Fp8Linear
from .int4_linear import Int4Linear
from .int8_linear import Int8Linear
from .experts import QuantizedExperts
from .prescale import PreScale
from .siblings import SiblingLinear

__all__ = ["Fp8Linear", "Int8Linear", "Int4Linear", "PreScale", "QuantizedExperts",
           "SiblingLinear"]
