"""CUDA kernels for fp8_scaled_mm (lowbit._C), registered with the backend registry.

- ``sm90_fp8_gemm_wgmma``: TMA + wgmma (sm_90a), 128 x 128 tiles, for M > 64.
- ``sm90_fp8_gemm_swapab``: TMA + wgmma (sm_90a) with the operands swapped, for 1 <= M <= 64:
  the weight streams through wgmma's 64-row A operand and the activations are its narrow B
  operand (n = M rounded up to 8/16/32/64); K is split over a thread-block cluster when N has
  too few 128-row tiles to fill the GPU, reduced deterministically through distributed
  shared memory.
- ``sm89_fp8_gemm_smallm``: fp8 mma.sync, split-K inside a CTA, for M <= 64 (sm_89, sm_90).
- ``sm80_fp8_gemm_smallm``: the same with fp8 widened to fp16 in registers: every arch from
  sm_80 (which has no fp8 tensor cores), M <= 64.
- ``sm89_fp8_gemm_mma``: 128 x 128 tiles on fp8 mma.sync with a cp.async ring, any M (sm_89,
  sm_90): the large-M path of cards without wgmma.
- ``sm80_fp8_gemm_mma``: the same with fp8 widened to fp16 in registers, any M, every arch
  from sm_80.

Priorities: at M <= 64 the small-M kernels come before the tiled ones, which take the rest.

Setting ``LOWBIT_ARCH=80`` (or 89) in the environment makes the kernels of newer archs step
aside, so that the older paths are exercised on a Hopper card.

The sm_90a kernels launch as programmatic dependent launches: each may start its setup
(barriers, tensor-map prefetch) while the kernel before it in the stream finishes, and waits
for that kernel (``griddepcontrol.wait``) before it reads or writes global memory; each lets
the next one start once its threads are past their last mainloop. Results do not change.
``LOWBIT_PDL=0`` in the environment (read at import) or ``set_programmatic_launch(False)``
gives plain stream order.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from .._backend import register_kernel
from .._build import _C, has_cuda_kernels
from ._device import OnDevice, arch_override, capability, device_index, raw_stream
from .cuda import available as _available

SMALL_M_MAX = 64
PDL_ENV = "LOWBIT_PDL"
_OUT_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@functools.lru_cache(maxsize=None)
def _built() -> frozenset:
    return frozenset(_C.fp8_gemm_kernels_built()) if has_cuda_kernels() else frozenset()


def set_programmatic_launch(on: bool) -> None:
    """Launch the sm_90a GEMMs as programmatic dependent launches (the default) or not."""
    if has_cuda_kernels():
        _C.set_programmatic_launch(bool(on))


def programmatic_launch() -> bool:
    """Whether the sm_90a GEMMs launch as programmatic dependent launches."""
    return has_cuda_kernels() and bool(_C.programmatic_launch())


if os.environ.get(PDL_ENV, "1") == "0":
    set_programmatic_launch(False)


def _scale_mode(s: torch.Tensor, rows: int) -> int:
    if s.dim() == 0:
        return 0
    return 1 if s.shape == (rows, 1) else 2


def _aligned(t: torch.Tensor) -> bool:
    """K-contiguous rows with 16-byte-aligned starts, one after another (a broadcast operand,
    row stride 0, is not one: TMA cannot read it). A single row's stride is not used."""
    if t.stride(1) != 1 or t.data_ptr() % 16:
        return False
    return t.shape[0] <= 1 or (t.stride(0) % 16 == 0 and t.stride(0) >= t.shape[1])


def _row_stride(t: torch.Tensor) -> int:
    # The stride of a single row is arbitrary in torch (a [1, K] view may report 0 or any
    # value): the kernels get K, which is what a packed row would have.
    return t.stride(0) if t.shape[0] > 1 else t.shape[1]


def _common(a, b) -> Optional[str]:
    if a.device.type != "cuda":
        return f"needs CUDA tensors; got {a.device}"
    if a.dtype != torch.float8_e4m3fn or b.dtype != torch.float8_e4m3fn:
        return f"takes e4m3fn operands; got {a.dtype} x {b.dtype}"
    if a.shape[1] == 0:
        return "K = 0"
    if a.shape[1] % 16:
        return f"K = {a.shape[1]} is not a multiple of 16"
    if b.shape[0] > _BIG:
        return f"N = {b.shape[0]} is beyond the kernels' int32 row and tile counts"
    if not (_aligned(a) and _aligned(b)):
        return "a and b need K-contiguous rows with 16-byte-aligned starts and strides"
    return None


def _supports(kernel: str, min_arch: int, archs, m_range):
    """supports() for a kernel built for ``archs`` (capabilities) taking M in m_range."""

    def supports(a, b, a_scale, b_scale, bias, out_dtype, fast_accum) -> Optional[str]:
        # The M range first: it is the cheapest test, and the one that sorts the kernels of a
        # backend (every call of the GPU ops pays for the rejections before the choice).
        m = a.shape[0]
        if not m_range[0] <= m <= m_range[1]:
            return f"M = {m} outside [{m_range[0]}, {m_range[1]}]"
        why = _common(a, b)
        if why:
            return why
        if kernel not in _built():
            return "not in this build (arch list)"
        over = arch_override()
        if over is not None and over < min_arch:
            return f"LOWBIT_ARCH={over} asks for an older arch's path"
        cap = capability(device_index(a.device))
        if archs is not None and cap not in archs:
            return f"built for {sorted(archs)}; device is sm_{cap[0]}{cap[1]}"
        if cap < (8, 0):
            return "needs sm_80 or newer"
        return None

    return supports


def _runner(kernel: str):
    def launcher(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
        # The launch of one argument signature, for dense scales and bias and M, N > 0: every
        # value below is a function of the signature, so a remembered choice keeps this
        # function and each call repeats only the allocation, the pointers and the call.
        m, k = a.shape
        n = b.shape[0]
        dev, idx, shape = a.device, a.device.index, (m, n)
        lda, ldb = _row_stride(a), _row_stride(b)
        sa_ld = a_scale.stride(0) if a_scale.dim() == 2 else 0
        sb_ld = b_scale.stride(0) if b_scale.dim() == 2 else 0
        sa_mode, sb_mode = _scale_mode(a_scale, m), _scale_mode(b_scale, n)
        bias_code = _OUT_CODE[bias.dtype] if bias is not None else 0
        out_code, fast = _OUT_CODE[out_dtype], bool(fast_accum)
        launch = _C.fp8_gemm

        def prepared(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
            out = torch.empty(shape, dtype=out_dtype, device=dev)
            with OnDevice(dev):
                launch(kernel, a.data_ptr(), lda, b.data_ptr(), ldb, a_scale.data_ptr(), sa_ld,
                       sa_mode, b_scale.data_ptr(), sb_ld, sb_mode,
                       0 if bias is None else bias.data_ptr(), bias_code, out.data_ptr(), n,
                       out_code, m, n, k, fast, raw_stream(idx))
            return out

        prepared.__name__ = kernel
        return prepared

    def run(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
        m, n = a.shape[0], b.shape[0]
        if m == 0 or n == 0:
            return torch.empty((m, n), dtype=out_dtype, device=a.device)
        # The kernels index per-row scales by m and n alone: make them dense (free when they
        # already are).
        args = (a, b, a_scale.contiguous(), b_scale.contiguous(),
                None if bias is None else bias.contiguous(), out_dtype, fast_accum)
        return launcher(*args)(*args)

    def prepare(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
        # Scales or a bias that are not dense are made dense on every call: the general path.
        if a.shape[0] == 0 or b.shape[0] == 0 or not (
                a_scale.is_contiguous() and b_scale.is_contiguous() and
                (bias is None or bias.is_contiguous())):
            return run
        return launcher(a, b, a_scale, b_scale, bias, out_dtype, fast_accum)

    run.__name__ = kernel
    run.prepare = prepare
    return run


_BIG = (1 << 31) - 128  # the kernels count rows and tiles in int32: M and N stay below this
for _name, _min_arch, _archs, _mr, _prio in (
    ("sm90_fp8_gemm_wgmma", 90, {(9, 0)}, (SMALL_M_MAX + 1, _BIG), 30),
    ("sm90_fp8_gemm_swapab", 90, {(9, 0)}, (1, SMALL_M_MAX), 25),
    ("sm89_fp8_gemm_smallm", 89, {(8, 9), (9, 0)}, (0, SMALL_M_MAX), 20),
    ("sm89_fp8_gemm_mma", 89, {(8, 9), (9, 0)}, (0, _BIG), 15),
    ("sm80_fp8_gemm_smallm", 80, None, (0, SMALL_M_MAX), 10),
    ("sm80_fp8_gemm_mma", 80, None, (0, _BIG), 5),
):
    _run = _runner(_name)
    register_kernel("fp8_scaled_mm", "cuda", _name, supports=_supports(_name, _min_arch, _archs, _mr),
                    available=_available, priority=_prio, prepare=_run.prepare)(_run)
