"""A quantized linear layer's forward on the CUDA kernels in one host call.

``Fp8Linear`` (W8A8) runs two ops per forward: ``quantize_fp8`` on the activations, then
``fp8_scaled_mm`` on the result (``Int8Linear``: ``quantize_int8``, then ``int8_gemm``). Once a forward of an input signature has run both through
the checked ops on CUDA kernels, ``fp8_linear_step`` builds the same two launches into one
``_C.Fp8LinearLaunch`` (``_C.Int8LinearLaunch``): a call then allocates the output and makes
one call into C++, which launches the quantizer and then the GEMM on the current stream. The
quantized activations and their scales go through a workspace: for a module's eager forward
(``shared_workspace``), one kept per device and stream (``_workspace``) and shared by every
layer. The stream runs each layer's quantizer after the GEMM that last read it (on sm_90 both
launch programmatically, and the quantizer waits for that GEMM before it writes), and a
call enqueues its two kernels in one C++ call under the GIL, so no other thread's launch on
the stream falls between them. It grows to the largest layer's need and is kept until
``release_workspaces()``. Under CUDA graph capture, and for the registered op (which compiled
graphs call, also inside their CUDA-graph warm-up), each call allocates its own. A module keeps a
launch object of its own, so its GEMM encodes the weight's TMA map once (see
``csrc/common/tensor_map_cache.h``); the registered ``fp8_linear`` op keeps one per
signature, shared by the layers of that shape. The kernels, their arguments and so the
results are the ones the two op calls give.

Where the GEMM chosen is the sm_90a swap-AB kernel (M <= 64) and the quantizer a per-token or
static per-tensor one (symmetric for INT8) on bf16 / fp16 rows, the launch object runs one
kernel instead, with the quantizer in the GEMM's prologue (``sm90_fp8_linear_swapab``,
``sm90_int8_linear_swapab``; ``csrc/common/sm90_gemm_swapab.cuh``): the same codes, scales
and output as the two kernels, bit for bit, and no workspace. The step's name says which
ran. ``LOWBIT_FUSED_QUANT=1`` turns it on, ``0`` off; unset, ``FUSED_BY_DEFAULT`` decides:
off, since on the H200 the fused kernel ran slower than the two launches at every M
(bench/NOTES.md, "The first GPU run since 6200c02").

Where the two launches run and the GEMM is an sm_90a kernel (swap-AB or wgmma), it may load the
first ring of weight tiles before its grid-dependency wait, so that under programmatic
dependent launch the weight streams while the quantizer runs (``GemmArgs::b_static`` in
``csrc/common/gemm_args.h``; the launch object's ``weight_early``): safe because the quantizer
never writes the weight and lets the GEMM start only once every earlier kernel of the stream
has completed. ``LOWBIT_EARLY_WEIGHTS=1`` turns it on, ``0`` off; unset,
``WEIGHT_EARLY_BY_DEFAULT`` decides: on, since on the H100 it took 0.5-1.7 us off every
two-kernel forward measured at M = 1-64, bringing the forward at M = 1-16 within 1.02-1.10x
(FP8) and 1.01-1.15x (INT8) of the GEMM alone on pre-quantized input (bench/NOTES.md, "Early
weight loads, measured"). Unset, the wgmma GEMMs load early only to ``WGMMA_EARLY_MAX_M``
rows: 0.8-1.2 us faster a forward at M = 128-256 on 4096 x 4096, level at 128 x 4096 x
14336, but 0.2-0.7 us slower at 512 x 14336 x 4096 and 1.1-5.4 us at 4096^3 (H100,
2026-12-07, two interleaved rounds; bench/NOTES.md).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import torch

from ..._build import _C
from ..._env import getenv
from ...scale_layout import scale_shape
from .._device import OnDevice, device_index, raw_stream
from . import FUSED_LINEAR, kernel_id, quantize
from .gemm import _aligned, gemm_launch
from .quantize import _rows_view, needs_amax_word, quantize_launches


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


_WORKSPACE: dict = {}  # (device index, stream handle) -> uint8 tensor
_capturing = torch.cuda.is_current_stream_capturing


def _workspace(dev: torch.device, idx: int, stream: int, nbytes: int,
               shared: bool) -> torch.Tensor:
    """A workspace of at least ``nbytes`` for a launch on ``stream`` (see the module's
    docstring); the caller holds it until the launch is enqueued (a larger one may replace
    it in the cache meanwhile)."""
    if not shared or _capturing():
        return torch.empty(nbytes, dtype=torch.uint8, device=dev)
    ws = _WORKSPACE.get((idx, stream))
    if ws is None or ws.numel() < nbytes:
        ws = _WORKSPACE[(idx, stream)] = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    return ws


def release_workspaces() -> None:
    """Drop the W8A8 forwards' per-stream workspaces (the caching allocator then holds their
    memory, which ``torch.cuda.empty_cache()`` returns); the next forward allocates anew."""
    _WORKSPACE.clear()


def _plan(x, weight, weight_scale, bias, act_scale, op, granularity, group_size, block,
          zero_points: bool, amax_words: int):
    """The shared part of a fused step: None when the inputs need what the fused call does
    not do (a copy of x's rows, scales or a bias that are not dense, an empty side), else
    (rows view, scale shape, workspace bytes, scale, zero and amax offsets). Workspace: q
    [rows, cols] at 0, its scales at a 256-byte boundary, then the zero points and the
    per-tensor quantizer's words (-1: none)."""
    if x.dim() < 1:
        return None
    v, rows, cols, rs, cs = _rows_view(x)
    n = weight.shape[0]
    if (v.data_ptr() != x.data_ptr() or rows == 0 or cols == 0 or n == 0
            or not _aligned(weight) or not weight_scale.is_contiguous()
            or (act_scale is not None and not act_scale.is_contiguous())
            or (bias is not None and not bias.is_contiguous())):
        return None
    s_shape = scale_shape(op, (rows, cols), granularity, group_size, block)
    scale_offset = _round_up(rows * cols, 256)
    end = scale_offset + 4 * math.prod(s_shape)
    zero_offset = amax_offset = -1
    if zero_points:
        zero_offset = _round_up(end, 16)
        end = zero_offset + 4 * math.prod(s_shape)
    if act_scale is None and needs_amax_word(granularity, group_size, block):
        amax_offset = _round_up(end, 16)
        end = amax_offset + 4 * amax_words
    return (rows, cols, rs, cs), s_shape, _round_up(end, 16), scale_offset, zero_offset, amax_offset


FUSED_ENV = "LOWBIT_FUSED_QUANT"
FUSED_BY_DEFAULT = False


def _switch(env: str, default: bool) -> bool:
    """An on/off environment switch of this module: "1" on, anything else off, unset
    ``default``."""
    v = getenv(env)
    return default if v is None else v == "1"


def fused_enabled() -> bool:
    """Whether a forward may run its quantizer inside the GEMM (``FUSED_ENV``)."""
    return _switch(FUSED_ENV, FUSED_BY_DEFAULT)


WEIGHT_EARLY_ENV = "LOWBIT_EARLY_WEIGHTS"
WEIGHT_EARLY_BY_DEFAULT = True
# The GEMMs that read GemmArgs::b_static.
WEIGHT_EARLY_GEMMS = ("sm90_fp8_gemm_swapab", "sm90_int8_gemm_swapab",
                      "sm90_fp8_gemm_wgmma", "sm90_int8_gemm_wgmma")
# The wgmma GEMMs' early loads by default: to this many rows (the module's docstring).
WGMMA_EARLY_MAX_M = 256


def weight_early(gemm_kernel: str, rows: int = 0) -> bool:
    """Whether a layer's GEMM ``gemm_kernel`` loads its first weight stages before waiting for
    the layer's quantizer, for ``rows`` activation rows (``WEIGHT_EARLY_ENV``; unset, the
    wgmma GEMMs only to ``WGMMA_EARLY_MAX_M``; the module's docstring)."""
    if gemm_kernel not in WEIGHT_EARLY_GEMMS:
        return False
    if getenv(WEIGHT_EARLY_ENV) is None:
        return WEIGHT_EARLY_BY_DEFAULT and (not gemm_kernel.endswith("_wgmma")
                                            or rows <= WGMMA_EARLY_MAX_M)
    return _switch(WEIGHT_EARLY_ENV, WEIGHT_EARLY_BY_DEFAULT)


def _fused_kernel(op: str, quant_kernel: str, gemm_kernel: str, x: torch.Tensor,
                  geometry: tuple, weight_scale: torch.Tensor, n: int) -> int:
    """The kernel id of the op's quantizer-in-the-GEMM kernel (``FUSED_LINEAR``) when it can
    run this forward (what ``_C.<Family>LinearLaunch`` takes as ``fused_kernel_id``), else
    -1: the chosen kernels are the ones it replaces, the weight's scale is per tensor or per
    channel, and x's rows are bf16 / fp16, K-contiguous, 16-byte aligned and apart (no row
    overlaps the next: the kernel declines a row stride below K)."""
    name, quantizers, gemm = FUSED_LINEAR[op]
    if not fused_enabled() or gemm_kernel != gemm or quant_kernel not in quantizers:
        return -1
    rows, cols, rs, cs = geometry
    if (x.dtype not in (torch.bfloat16, torch.float16) or cs != 1 or x.data_ptr() % 16
            or (rows > 1 and ((rs * 2) % 16 or rs < cols)) or cols % 16
            or tuple(weight_scale.shape) not in ((), (n, 1))):
        return -1
    kid = kernel_id(name)
    return -1 if kid is None else kid


def fused_kernel_name(op: str, quant_kernel: str, gemm_kernel: str, x: torch.Tensor,
                      weight_scale: torch.Tensor) -> Optional[str]:
    """The kernel that runs linear op ``op``'s forward on x in place of ``quant_kernel`` and
    ``gemm_kernel`` (the kernels its two ops chose), or None: those two run."""
    n = weight_scale.shape[0] if weight_scale.dim() else 0
    kid = _fused_kernel(op, quant_kernel, gemm_kernel, x, _rows_view(x)[1:], weight_scale, n)
    return FUSED_LINEAR[op][0] if kid >= 0 else None


def _gemm_geometry(weight, weight_scale, cols):
    n = weight.shape[0]
    ldb = weight.stride(0) if n > 1 else cols
    sb_ld = weight_scale.stride(0) if weight_scale.dim() == 2 else 0
    return n, ldb, sb_ld


def fp8_linear_step(quant_kernel: str, gemm_kernel: str, x: torch.Tensor,
                    act_scale: Optional[torch.Tensor], q_rest: tuple, weight: torch.Tensor,
                    weight_scale: torch.Tensor, bias: Optional[torch.Tensor],
                    out_dtype: torch.dtype, shared_workspace: bool = False
                    ) -> Optional[Callable]:
    """step(x, weight, weight_scale, bias, act_scale) -> y for arguments of the signature of
    those given here: ``quantize_fp8(x, act_scale, *q_rest)`` on CUDA kernel
    ``quant_kernel``, then ``fp8_scaled_mm`` of the result with ``weight``, ``weight_scale``
    and ``bias`` on ``gemm_kernel``, into an output of shape ``(*x.shape[:-1], N)``. The
    arguments passed both ops' checks and chose these kernels. None when the inputs need what
    the fused call does not do: the caller then runs the ops. ``shared_workspace``: see the
    module's docstring."""
    fmt, granularity, group_size, block, saturate = q_rest
    q_kid, g_kid = kernel_id(quant_kernel), kernel_id(gemm_kernel)
    plan = None if q_kid is None or g_kid is None else _plan(
        x, weight, weight_scale, bias, act_scale, "quantize_fp8", granularity, group_size,
        block, False, 1)
    if plan is None:
        return None
    geometry, s_shape, ws_bytes, scale_offset, _, amax_offset = plan
    rows, cols = geometry[:2]
    n, ldb, sb_ld = _gemm_geometry(weight, weight_scale, cols)
    gemm = gemm_launch(g_kid, rows, n, cols, cols, ldb, s_shape,
                       s_shape[-1] if len(s_shape) == 2 else 0, tuple(weight_scale.shape), sb_ld,
                       None if bias is None else bias.dtype, out_dtype, False)
    quants = quantize_launches(q_kid, x.dtype, geometry, fmt, granularity, group_size, block,
                               saturate)
    fused = -1 if (fmt, saturate) != ("e4m3fn", True) else _fused_kernel(
        "fp8_linear", quant_kernel, gemm_kernel, x, geometry, weight_scale, n)
    if fused >= 0:
        ws_bytes = 0  # one kernel, from x to out
    early = fused < 0 and weight_early(gemm_kernel, rows)
    objects = tuple(_C.Fp8LinearLaunch(q, gemm, scale_offset, amax_offset, fused, early)
                    for q in quants)
    launches = tuple(o.launch for o in objects)
    dev, idx, out_shape = x.device, device_index(x.device), (*x.shape[:-1], n)
    empty = torch.empty

    def step(x, weight, weight_scale, bias, act_scale):
        out = empty(out_shape, dtype=out_dtype, device=dev)
        with OnDevice(dev):
            stream = raw_stream(idx)
            ws = _workspace(dev, idx, stream, ws_bytes, shared_workspace)
            launches[quantize.HW_CVT](
                x.data_ptr(), 0 if act_scale is None else act_scale.data_ptr(),
                weight.data_ptr(), weight_scale.data_ptr(),
                0 if bias is None else bias.data_ptr(), ws.data_ptr(), out.data_ptr(), stream)
        return out

    step.__name__ = objects[0].fused or f"{quant_kernel}+{gemm_kernel}"
    step.weight_early = early
    if not shared_workspace:
        # native() for lowbit/_native.py: (a launch object of its own, workspace bytes), made
        # once. Its own object: the C++ side launches it under its lock, not the GIL.
        step.native = functools.cache(lambda: (
            _C.Fp8LinearLaunch(quants[quantize.HW_CVT], gemm, scale_offset, amax_offset, fused,
                               early),
            ws_bytes))
    return step


def int8_linear_step(quant_kernel: str, gemm_kernel: str, x: torch.Tensor, q_args: tuple,
                     out_dtype: torch.dtype, shared_workspace: bool, weight: torch.Tensor,
                     weight_scale: torch.Tensor, bias: Optional[torch.Tensor],
                     act_scale: Optional[torch.Tensor], act_zero: Optional[torch.Tensor],
                     act_symmetric: bool) -> Optional[Callable]:
    """The INT8 twin of ``fp8_linear_step``: ``quantize_int8`` with ``q_args`` (its arguments
    after x) on ``quant_kernel``, then ``int8_gemm`` on ``gemm_kernel``, as one
    ``_C.Int8LinearLaunch``: step(x, weight, weight_scale, bias, act_scale, act_zero,
    act_symmetric) -> y. Asymmetric activations need the weight's row sums: computed here
    once, and again whenever the weight has been written in place since (its version
    counter moved) or its storage replaced (``weight.data = ...``: a new pointer)."""
    from .int8_gemm import int8_gemm_launch, row_sums
    from .int8_quantize import quantize_launch

    _, _, _, granularity, group_size, block, symmetric = q_args
    q_kid, g_kid = kernel_id(quant_kernel), kernel_id(gemm_kernel)
    plan = None if q_kid is None or g_kid is None else _plan(
        x, weight, weight_scale, bias, act_scale, "quantize_int8", granularity, group_size,
        block, not symmetric, 2)
    if plan is None:
        return None
    geometry, s_shape, ws_bytes, scale_offset, zero_offset, amax_offset = plan
    rows, cols = geometry[:2]
    n, ldb, _ = _gemm_geometry(weight, weight_scale, cols)
    zero_mode = 0 if symmetric else (2 if len(s_shape) == 2 else 1)
    gemm = int8_gemm_launch(g_kid, rows, n, cols, cols, ldb, len(s_shape) == 2,
                            weight_scale.dim() == 2, zero_mode,
                            None if bias is None else bias.dtype, out_dtype)
    quant = quantize_launch(q_kid, x.dtype, geometry, granularity, group_size, block, symmetric)
    fused = -1 if not symmetric else _fused_kernel(
        "int8_linear", quant_kernel, gemm_kernel, x, geometry, weight_scale, n)
    if fused >= 0:
        ws_bytes = 0  # one kernel, from x to out
    early = fused < 0 and weight_early(gemm_kernel, rows)
    obj = _C.Int8LinearLaunch(quant, gemm, scale_offset, zero_offset, amax_offset, fused,
                              early)
    launch = obj.launch
    dev, idx, out_shape = x.device, device_index(x.device), (*x.shape[:-1], n)
    empty = torch.empty
    sums = [None, None]  # [row sums, the weight's (pointer, version) they were computed at]

    def b_sum(weight) -> int:
        if symmetric:
            return 0
        at = (weight.data_ptr(), weight._version)
        if sums[0] is None or sums[1] != at:
            sums[0], sums[1] = row_sums(weight), at
        return sums[0].data_ptr()

    def step(x, weight, weight_scale, bias, act_scale, act_zero, act_symmetric):
        out = empty(out_shape, dtype=out_dtype, device=dev)
        with OnDevice(dev):
            stream = raw_stream(idx)
            ws = _workspace(dev, idx, stream, ws_bytes, shared_workspace)
            launch(x.data_ptr(), 0 if act_scale is None else act_scale.data_ptr(),
                   0 if act_zero is None else act_zero.data_ptr(), weight.data_ptr(),
                   weight_scale.data_ptr(), b_sum(weight),
                   0 if bias is None else bias.data_ptr(), ws.data_ptr(), out.data_ptr(),
                   stream)
        return out

    step.__name__ = obj.fused or f"{quant_kernel}+{gemm_kernel}"
    step.weight_early = early
    if not shared_workspace and symmetric:
        # (Asymmetric activations: no plan; the row sums above stay with this Python step.)
        step.native = functools.cache(lambda: (
            _C.Int8LinearLaunch(quant, gemm, scale_offset, zero_offset, amax_offset, fused,
                                early),
            ws_bytes))
    return step
