"""CUDA kernels for fp8_scaled_mm (lowbit._C), registered with the backend registry.

Small-M path (M <= 64): ``sm89_fp8_gemm_smallm`` (fp8 mma.sync, sm_89 / sm_90) and
``sm80_fp8_gemm_smallm`` (fp8 widened to fp16 in registers; every arch from sm_80). Setting
``LOWBIT_ARCH=80`` in the environment makes the sm_89+ kernels step aside, so the sm_80 paths
can be exercised on a Hopper card.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from .._backend import register_kernel
from .._build import _C, has_cuda_kernels

SMALL_M_MAX = 64
_OUT_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

try:
    _raw_stream = torch._C._cuda_getCurrentRawStream  # no Stream object per call
except AttributeError:  # pragma: no cover - older torch
    _raw_stream = None


def _stream(device: torch.device) -> int:
    if _raw_stream is not None:
        return _raw_stream(device.index if device.index is not None else torch.cuda.current_device())
    return torch.cuda.current_stream(device).cuda_stream


def arch_override() -> Optional[int]:
    v = os.environ.get("LOWBIT_ARCH")
    return int(v) if v else None


@functools.lru_cache(maxsize=None)
def _capability_of(index: int):
    return torch.cuda.get_device_capability(index)


def _capability(device: torch.device):
    return _capability_of(device.index if device.index is not None else torch.cuda.current_device())


def _available() -> Optional[str]:
    if not has_cuda_kernels():
        return "lowbit._C was built without CUDA"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def _scale_mode(s: torch.Tensor, rows: int) -> int:
    if s.dim() == 0:
        return 0
    return 1 if s.shape == (rows, 1) else 2


def _aligned(t: torch.Tensor) -> bool:
    return t.stride(1) == 1 and t.stride(0) % 16 == 0 and t.data_ptr() % 16 == 0


def _supports_smallm(a, b, a_scale, b_scale, bias, out_dtype, fast_accum) -> Optional[str]:
    if a.device.type != "cuda":
        return f"needs CUDA tensors; got {a.device}"
    if a.dtype != torch.float8_e4m3fn or b.dtype != torch.float8_e4m3fn:
        return f"takes e4m3fn operands; got {a.dtype} x {b.dtype}"
    if a.shape[0] > SMALL_M_MAX:
        return f"M = {a.shape[0]} > {SMALL_M_MAX} (a small-M kernel)"
    if a.shape[1] % 16:
        return f"K = {a.shape[1]} is not a multiple of 16"
    if not (_aligned(a) and _aligned(b)):
        return "a and b need K-contiguous rows with 16-byte-aligned starts and strides"
    return None


def _supports_sm89(*args) -> Optional[str]:
    why = _supports_smallm(*args)
    if why:
        return why
    if not _C.fp8_gemm_smallm_has_sm89():
        return "this build has no arch >= 89"
    cap = _capability(args[0].device)
    if arch_override() is not None and arch_override() < 89:
        return f"LOWBIT_ARCH={arch_override()} asks for the sm_80 path"
    if cap not in ((8, 9), (9, 0)):
        return f"built for sm_89 and sm_90a; device is sm_{cap[0]}{cap[1]}"
    return None


def _supports_sm80(*args) -> Optional[str]:
    why = _supports_smallm(*args)
    if why:
        return why
    if _capability(args[0].device) < (8, 0):
        return "needs sm_80 or newer"
    return None


def _run_smallm(variant: str):
    def run(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
        m, k = a.shape
        n = b.shape[0]
        out = torch.empty((m, n), dtype=out_dtype, device=a.device)
        if m == 0 or n == 0:
            return out
        if a_scale.dim() == 2 and a_scale.stride(1) != 1:
            a_scale = a_scale.contiguous()
        if b_scale.dim() == 2 and b_scale.stride(1) != 1:
            b_scale = b_scale.contiguous()
        if bias is not None and bias.stride(0) != 1:
            bias = bias.contiguous()
        _C.fp8_gemm_smallm(
            variant, a.data_ptr(), a.stride(0), b.data_ptr(), b.stride(0),
            a_scale.data_ptr(), a_scale.stride(0) if a_scale.dim() == 2 else 0,
            _scale_mode(a_scale, m),
            b_scale.data_ptr(), b_scale.stride(0) if b_scale.dim() == 2 else 0,
            _scale_mode(b_scale, n),
            0 if bias is None else bias.data_ptr(),
            _OUT_CODE[bias.dtype] if bias is not None else 0,
            out.data_ptr(), out.stride(0), _OUT_CODE[out_dtype], m, n, k, bool(fast_accum),
            _stream(a.device))
        return out

    run.__name__ = f"{variant}_fp8_gemm_smallm"
    return run


register_kernel("fp8_scaled_mm", "cuda", "sm89_fp8_gemm_smallm", supports=_supports_sm89,
                available=_available, priority=20)(_run_smallm("sm89"))
register_kernel("fp8_scaled_mm", "cuda", "sm80_fp8_gemm_smallm", supports=_supports_sm80,
                available=_available, priority=10)(_run_smallm("sm80"))
