"""lowbit.reference: the NumPy definition of every lowbit number (imports NumPy only).

The CUDA and Triton kernels are tested against these functions; they are also the
``backend="reference"`` implementation of every op.
"""
from .formats import FP8_FORMATS, Fp8Format, fp8_format
from .fp8 import fp8_decode, fp8_encode, round_to_bf16
from .gemm import fp8_scaled_mm, int8_gemm, int8_mm, w4a16_gemm
from .int4 import (
    AWQ_PACK_ORDER,
    dequantize_int4,
    import_awq,
    import_gptq,
    pack_int4,
    quantize_int4,
    round_scale,
    unpack_int4,
)
from .quant import (
    GRANULARITIES,
    MIN_SCALE,
    absmax_scale,
    dequantize_fp8,
    dequantize_int8,
    dynamic_scale,
    expand_scale,
    minmax_scale_zero,
    quantize_fp8,
    quantize_int8,
    scale_shape,
)
from ..scale_layout import scale_tile

__all__ = [
    "FP8_FORMATS", "Fp8Format", "fp8_format", "fp8_encode", "fp8_decode", "round_to_bf16",
    "int8_mm", "int8_gemm", "fp8_scaled_mm", "w4a16_gemm",
    "AWQ_PACK_ORDER", "pack_int4", "unpack_int4", "quantize_int4", "dequantize_int4",
    "round_scale", "import_awq", "import_gptq",
    "GRANULARITIES", "MIN_SCALE", "scale_shape", "scale_tile", "expand_scale",
    "dynamic_scale", "absmax_scale", "minmax_scale_zero",
    "quantize_fp8", "dequantize_fp8", "quantize_int8", "dequantize_int8",
]
