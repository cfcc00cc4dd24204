"""lowbit: quantized-inference kernels for PyTorch (FP8, INT8, INT4).

Ops (also registered as ``torch.ops.lowbit.<name>``): quantize_fp8, dequantize_fp8,
quantize_int8, dequantize_int8, int8_mm, int8_gemm, fp8_scaled_mm, int4_quantize,
w4a16_gemm, w8a16_gemm. ``lowbit.reference`` is the NumPy definition of every number.
"""
from importlib.metadata import PackageNotFoundError, version as _version

from . import ops  # noqa: F401  (registers torch.ops.lowbit.*)
from . import backends  # noqa: F401  (registers every backend's kernels)
from ._backend import BACKENDS, Choice, default_backend, explain, use_backend
from ._build import build_info
from .api import (
    dequantize_fp8,
    dequantize_int8,
    fp8_linear,
    fp8_scaled_mm,
    int4_quantize,
    int8_gemm,
    int8_linear,
    int8_mm,
    native_fp8_format,
    quantize_fp8,
    quantize_int8,
    w4a16_gemm,
    w8a16_gemm,
)
from .int4_weight import Int4Weight
from . import nn  # noqa: E402
from .calibrate import (AbsMaxObserver, Calibration, MseObserver, PercentileObserver,
                        calibrate)
from .convert import SCHEMES, QuantizeSummary, quantize_
from .serialize import load_quantized, save_quantized
from .nn.siblings import fuse_siblings
from .smoothquant import SmoothReport, smooth_quant
from .awq import AwqReport, awq
from .mixed import Plan, apply_plan, mixed_precision, sensitivity
from .validate import ValidationReport, validate

try:
    __version__ = _version("lowbit")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = [
    "quantize_fp8", "dequantize_fp8", "quantize_int8", "dequantize_int8", "int8_mm",
    "int8_gemm", "fp8_scaled_mm", "fp8_linear", "int8_linear", "int4_quantize", "w4a16_gemm",
    "w8a16_gemm", "native_fp8_format", "Int4Weight",
    "BACKENDS", "Choice", "default_backend", "explain", "use_backend", "build_info",
    "quantize_", "QuantizeSummary", "SCHEMES", "save_quantized", "load_quantized",
    "fuse_siblings",
    "validate", "ValidationReport", "calibrate", "Calibration", "AbsMaxObserver",
    "PercentileObserver", "MseObserver", "smooth_quant", "SmoothReport",
    "awq", "AwqReport", "mixed_precision", "sensitivity", "apply_plan", "Plan",
]
