"""fp8_scaled_mm on the CUDA kernels of ``csrc/fp8/`` (names, M ranges and priorities:
``KERNELS`` in this package's ``__init__``; what each kernel does: ``csrc/fp8/fp8_gemm.h``).

- ``sm90_*``: TMA + wgmma (sm_90a): 128 x 128 tiles for M > 64, and for 1 <= M <= 64 the
  operands swapped (the weight streams through wgmma's 64-row A operand, the activations are
  its narrow B operand), K split over a thread-block cluster when N has too few tiles to fill
  the GPU, reduced deterministically through distributed shared memory. At M = 33..64 the
  tokens may fill the 64-row operand instead and the weight tile be 112 or 96 rows, the
  height that leaves the fewest SMs idle (``LOWBIT_SWAPAB_ROWS=128|112|96`` forces one).
- ``sm89_*``: fp8 mma.sync (sm_89, sm_90): split-K inside a CTA for M <= 64, 128 x 128 tiles
  with a cp.async ring for any M (the large-M path of cards without wgmma).
- ``sm80_*``: the same with fp8 widened to fp16 in registers: every arch from sm_80 (which
  has no fp8 tensor cores).

Setting ``LOWBIT_ARCH=80`` (or 89) in the environment makes the kernels of newer archs step
aside, so that the older paths are exercised on a Hopper card.

The sm_90a kernels launch as programmatic dependent launches: each may start its setup
(barriers, tensor-map prefetch) while the kernel before it in the stream finishes, and waits
for that kernel (``griddepcontrol.wait``) before it reads or writes global memory; each lets
the next one start once its threads are past their last mainloop. The quantize kernels
launch the same way on sm_90 devices (they wait before reading x and let the next kernel in
at once), so a quantize -> GEMM chain overlaps the GEMM's setup with the quantizer. Results
do not change. ``LOWBIT_PDL=0`` in the environment (read at import) or ``set_programmatic_launch(False)``
gives plain stream order.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from ..._build import _C, has_cuda_kernels
from .._device import OnDevice, arch_override, capability, device_index, raw_stream
from . import _BIG, DTYPE_CODE, SMALL_M_MAX, kernel_id, min_arch, register

__all__ = ["SMALL_M_MAX", "PDL_ENV", "set_programmatic_launch", "programmatic_launch",
           "gemm_launch", "kernel_supports", "operand_reason", "row_stride"]

PDL_ENV = "LOWBIT_PDL"

# The devices a kernel of each min arch runs on (None: every arch from sm_80): sm_90a code
# runs only on 9.0; the sm_89 kernels are built for 89 and 90a.
_RUNS_ON = {90: {(9, 0)}, 89: {(8, 9), (9, 0)}, 80: None}


def set_programmatic_launch(on: bool) -> None:
    """Launch the sm_90a GEMMs and the sm_90 quantizers as programmatic dependent launches (the
    default) or not."""
    if has_cuda_kernels():
        _C.set_programmatic_launch(bool(on))


def programmatic_launch() -> bool:
    """Whether the sm_90a GEMMs and the sm_90 quantizers launch as programmatic dependent
    launches."""
    return has_cuda_kernels() and bool(_C.programmatic_launch())


if os.environ.get(PDL_ENV, "1") == "0":
    set_programmatic_launch(False)


def _scale_tile(shape, rows: int, block_rows: int):
    """The (tile_rows, tile_cols) of an operand's scale of ``shape``, as the GEMMs take it: per
    tensor, per row ([rows, 1]), else per block of 128 along K (block_rows: 1 for a, 128 for
    b)."""
    if len(shape) == 0:
        return 0, 0
    return (1, 0) if tuple(shape) == (rows, 1) else (block_rows, 128)


def _aligned(t: torch.Tensor) -> bool:
    """K-contiguous rows with 16-byte-aligned starts, one after another (a broadcast operand,
    row stride 0, is not one: TMA cannot read it). A single row's stride is not used."""
    if t.stride(1) != 1 or t.data_ptr() % 16:
        return False
    return t.shape[0] <= 1 or (t.stride(0) % 16 == 0 and t.stride(0) >= t.shape[1])


def row_stride(t: torch.Tensor) -> int:
    # The stride of a single row is arbitrary in torch (a [1, K] view may report 0 or any
    # value): the kernels get K, which is what a packed row would have.
    return t.stride(0) if t.shape[0] > 1 else t.shape[1]


def gemm_launch(kid: int, m: int, n: int, k: int, lda: int, ldb: int, a_scale_shape,
                a_scale_ld: int, b_scale_shape, b_scale_ld: int, bias_dtype, out_dtype,
                fast_accum: bool):
    """The ``_C.GemmLaunch`` of kernel ``kid`` for one argument signature (scales and bias
    dense, the output [m, n] contiguous): what a prepared call and ``Fp8Linear``'s fused
    forward (``lowbit.backends.cuda.linear``) launch."""
    return _C.GemmLaunch(kid, m, n, k, lda, ldb, *_scale_tile(a_scale_shape, m, 1), a_scale_ld,
                         *_scale_tile(b_scale_shape, n, 128), b_scale_ld,
                         DTYPE_CODE[bias_dtype] if bias_dtype is not None else 0,
                         DTYPE_CODE[out_dtype], n, bool(fast_accum))


def operand_reason(a, b, dtype: torch.dtype) -> Optional[str]:
    """Why the 8-bit GEMM kernels cannot take operands a, b of ``dtype``, or None."""
    if a.device.type != "cuda":
        return f"needs CUDA tensors; got {a.device}"
    if a.dtype != dtype or b.dtype != dtype:
        return f"takes {str(dtype).replace('torch.', '')} operands; got {a.dtype} x {b.dtype}"
    if a.shape[1] == 0:
        return "K = 0"
    if a.shape[1] % 16:
        return f"K = {a.shape[1]} is not a multiple of 16"
    if a.shape[1] > _BIG:
        return f"K = {a.shape[1]} is beyond the kernels' int32 K-step counts"
    if b.shape[0] > _BIG:
        return f"N = {b.shape[0]} is beyond the kernels' int32 row and tile counts"
    if not (_aligned(a) and _aligned(b)):
        return "a and b need K-contiguous rows with 16-byte-aligned starts and strides"
    return None


def kernel_supports(name: str, m_range, dtype: torch.dtype):
    """``supports(a, b, *rest)`` of GEMM kernel ``name``: its M range, the operands (``dtype``,
    layout), this build and the device's arch."""
    kid, arch = kernel_id(name), min_arch(name)

    def supports(a, b, *rest) -> Optional[str]:
        # The M range first: it is the cheapest test, and the one that sorts the kernels of a
        # backend (every call of the GPU ops pays for the rejections before the choice).
        m = a.shape[0]
        if not m_range[0] <= m <= m_range[1]:
            return f"M = {m} outside [{m_range[0]}, {m_range[1]}]"
        why = operand_reason(a, b, dtype)
        if why:
            return why
        if kid is None:
            return "not in this build (arch list)"
        why = arch_reason(arch, a.device)
        if why:
            return why
        if capability(device_index(a.device)) < (8, 0):
            return "needs sm_80 or newer"
        return None

    return supports


def arch_reason(arch: int, device: torch.device) -> Optional[str]:
    """Why a kernel of min arch ``arch`` (80, 89, 90) cannot run on ``device`` here: the
    device's arch (_RUNS_ON), or LOWBIT_ARCH stepping down to an older arch's path."""
    over = arch_override()
    if over is not None and over < arch:
        return f"LOWBIT_ARCH={over} asks for an older arch's path"
    cap = capability(device_index(device))
    runs_on = _RUNS_ON[arch]
    if runs_on is not None and cap not in runs_on:
        return f"built for {sorted(runs_on)}; device is sm_{cap[0]}{cap[1]}"
    return None


def _make_gemm(name: str, m_range, variant):
    kid = kernel_id(name)
    supports = kernel_supports(name, m_range, torch.float8_e4m3fn)

    def launcher(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
        # The launch of one argument signature, for dense scales and bias and M, N > 0: every
        # value below is a function of the signature, so a remembered choice keeps this
        # function and each call repeats only the allocation, the pointers and the call.
        m, k = a.shape
        n = b.shape[0]
        dev, idx, shape = a.device, a.device.index, (m, n)
        sa_ld = a_scale.stride(0) if a_scale.dim() == 2 else 0
        sb_ld = b_scale.stride(0) if b_scale.dim() == 2 else 0
        params = (kid, m, n, k, row_stride(a), row_stride(b), a_scale.shape, sa_ld,
                  b_scale.shape, sb_ld, None if bias is None else bias.dtype, out_dtype,
                  fast_accum)
        launch = gemm_launch(*params).launch
        empty = torch.empty

        def prepared(a, b, a_scale, b_scale, bias, out_dtype, fast_accum):
            out = empty(shape, dtype=out_dtype, device=dev)
            with OnDevice(dev):
                launch(a.data_ptr(), b.data_ptr(), a_scale.data_ptr(), b_scale.data_ptr(),
                       0 if bias is None else bias.data_ptr(), out.data_ptr(), raw_stream(idx))
            return out

        prepared.__name__ = name
        # native() for lowbit/_native.py: (a launch object of its own, workspace bytes), made
        # once. Its own object: the C++ side launches it under its lock, not the GIL.
        prepared.native = functools.cache(lambda: (gemm_launch(*params), 0))
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

    run.__name__ = name
    return run, supports, prepare


register("fp8_scaled_mm", "fp8_gemm", _make_gemm)
