"""``lowbit._torch_ops``: the C++ implementations of the registered ops of ``OPS`` (every
op lowbit registers: ``fp8_linear``, ``int8_linear``, ``fp8_scaled_mm``, ``quantize_fp8``,
``dequantize_fp8``, ``int8_mm``, ``int8_gemm``, ``quantize_int8``, ``dequantize_int8``,
``w4a16_gemm``, ``w8a16_gemm``, ``int4_quantize``) on CUDA tensors (csrc/torch/plans.cpp),
their entries for the eager API and the quantized modules, and their control from Python.

A compiled graph calls ``torch.ops.lowbit.<op>`` (once per quantized layer for the linear
ops). With a Python implementation each call costs the dispatcher's crossing into Python and
the signature lookup there, several times what the kernels' launches cost
(bench/NOTES.md). The C++ implementation keeps, per argument signature, a *plan*: the
prepared launch object of ``lowbit._C`` the op chose (for the linear ops, the one launch that
fuses the activation quantizer and the GEMM, lowbit/backends/cuda/linear.py), the workspace
it takes and the outputs' dtypes and sizes, and calls it with no Python. A signature it has
not seen goes to ``torch.ops.lowbit._<op>_prepare``, the Python implementation (the checks,
the checked ops, the kernel choice), which also returns the plan. Same kernels, same
arguments, same bits as the Python path.

The eager API (``lowbit.fp8_scaled_mm`` and the others of ``OPS``, through ``ENTRY``) and the
quantized modules (``Fp8Linear``, ``Int8Linear``, through ``MODULE_ENTRY``: one C++ call reads
the module's tensors) reach the same plans with no dispatcher. An unseen signature goes
through the registered op once (a module's own errors first). A signature whose kernel is
no single launch (a Triton kernel, INT8 with asymmetric activations in a linear layer or a
zero-point ``int8_gemm``) runs the Python path: a module's own Python step, or for a single
op the Python step its plan names (below).

What the plans cannot see, Python tells them:

- ``lowbit.use_backend`` and ``lowbit.explain`` (context variables) hold the plans off while
  any such block is open (``hold``): calls take the Python path, which reads them.
- A kernel registration (``lowbit._backend.register_kernel``) empties the table (``reset``).
- The environment switches the choice reads (``LOWBIT_BACKEND``, ``LOWBIT_ARCH``,
  ``TRITON_INTERPRET``, the Triton kernels' ``LOWBIT_TRITON_AUTOTUNE``,
  ``LOWBIT_TRITON_FP8_PROMOTE`` and ``LOWBIT_TRITON_FP8_HWCAST``, ``LOWBIT_CHECK_SCALES``)
  are read by the C++ side on every call; a change empties the table.
- lowbit's debug log records a choice when a signature is prepared, not per call.
- ``HW_CVT`` (backends/cuda/quantize.py, the fp8 encoder): a plan keeps the encoder of the
  time it was prepared (both give the same bits).
- The hold lasts as long as the ``with`` block. A context copied inside it that runs after
  the block (an asyncio task created there, ``contextvars.copy_context().run``) still sees
  the block's backend in Python: the eager API and the modules check it before they enter
  the plans, but a call through ``torch.ops`` (a compiled graph) no longer sees the hold:
  set the backend inside the task, or pass ``backend=`` to the op.

A single op's signature whose kernel is no single launch (a Triton kernel, an ``int8_gemm``
with ``a_zero``) keeps the Python function its choice runs: the eager entry hands it back,
and ``lowbit.<op>`` calls it with no checks and no choice (the checks are a function of the
signature, as for the C++ plans). Calls through ``torch.ops`` of such a signature run the Python implementation.

The GEMM of asymmetric INT8 activations has no C++ launch: it reads the weight's row sums,
which the Python step keeps per weight (``int8_linear``: its calls take the Python
implementation) or computes per call (``int8_gemm`` with ``a_zero``: its plan names the
Python step, eager; through ``torch.ops``, the Python implementation). The asymmetric
quantizer itself has a plan. The dequantizers have plans where their CUDA kernel reads q in
place; an empty q, a q whose rows no single stride describes (copied first) and a scale or
zero point that is not contiguous take the Python step.

The weight-only GEMMs (``w4a16_gemm``, ``w8a16_gemm``) have plans for their CUDA decode and
tiled kernels (not for an act-order ``perm``, whose gather is a kernel of its own, nor for
int4's dequantize-then-cuBLAS path, two steps). A split launch's arrival counters, which
must be zero when it starts, belong to the launch object, one zeroed buffer per stream; on
a capturing stream the plan declines and the call takes the Python path, which gives each
launch in a graph counters of its own.

The library includes torch's headers: it is built only where the build could import torch
(``pip install --no-build-isolation .`` after torch), and loaded only under the torch version
it was built with. ``LOWBIT_NATIVE_OPS=0`` in the environment leaves it unloaded (the
Python implementation serves every call). ``status()`` says which is the case and why.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
from typing import Callable, Dict, List, Optional

import torch

from . import _backend
from ._env import getenv

_lib: Optional[ctypes.CDLL] = None
_status = "not loaded yet"
PLAN_FORMAT = 5  # csrc/torch/plans.cpp: kPlanFormat
# Launch objects handed to the C++ side, which holds their addresses: kept here until the
# C++ table is emptied (``reset``), up to this many.
_KEEP_MAX = 8192
_keep: Dict[int, object] = {}


def _library_path(build_module) -> str:
    # Beside the build's record (an editable install keeps both in its build tree).
    return os.path.join(os.path.dirname(os.path.abspath(build_module.__file__)), "_torch_ops.so")


def load() -> None:
    """Load lowbit._torch_ops when it was built, under this torch, and not switched off; its
    static registrations then serve the ops' CUDA calls."""
    global _lib, _status, EMPTY
    if _lib is not None:
        return
    if getenv("LOWBIT_NATIVE_OPS") == "0":
        _status = "off (LOWBIT_NATIVE_OPS=0)"
        return
    try:
        from . import _torch_ops_build
    except ImportError:
        _status = ("not built (the build could not import torch, or had no CUDA: "
                   "pip install --no-build-isolation . after torch builds it)")
        return
    built = _torch_ops_build.TORCH_VERSION
    if built != torch.__version__:
        _status = (f"not loaded: built against torch {built}, running torch "
                   f"{torch.__version__} (reinstall lowbit to rebuild it)")
        return
    path = _library_path(_torch_ops_build)
    try:
        # A Python extension (the modules' entry) whose control functions ctypes calls.
        spec = importlib.util.spec_from_file_location(f"{__package__}._torch_ops", path)
        if spec is None:
            raise ImportError(f"no extension module at {path}")
        ext = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ext)
        lib = ctypes.CDLL(path)
    except (ImportError, OSError) as e:
        _status = f"not loaded: {e}"
        return
    missing = [op for op in OPS if not hasattr(ext, op)]
    if getattr(ext, "PLAN_FORMAT", None) != PLAN_FORMAT or missing:
        _status = (f"not loaded: built from another version of lowbit (plan format "
                   f"{getattr(ext, 'PLAN_FORMAT', 'unknown')}, this one {PLAN_FORMAT}"
                   f"{'; no entry for ' + ', '.join(missing) if missing else ''}; reinstall "
                   f"lowbit to rebuild it)")
        return
    lib.lowbit_native_hold.argtypes = [ctypes.c_int64]
    lib.lowbit_native_hold.restype = ctypes.c_int64
    lib.lowbit_native_reset.argtypes = []
    lib.lowbit_native_reset.restype = None
    lib.lowbit_native_stats.argtypes = [ctypes.POINTER(ctypes.c_int64)]
    lib.lowbit_native_stats.restype = None
    _lib = lib
    MODULE_ENTRY.update(fp8_linear=ext.fp8_linear_module, int8_linear=ext.int8_linear_module)
    ENTRY.update({op: getattr(ext, op) for op in OPS})
    EMPTY = getattr(ext, "empty", None)
    _status = f"loaded (built against torch {built})"
    _backend._native_hold, _backend._native_reset = hold, reset


def loaded() -> bool:
    return _lib is not None


# The registered ops the library implements on CUDA tensors.
OPS = ("fp8_linear", "int8_linear", "fp8_scaled_mm", "quantize_fp8", "int8_mm", "int8_gemm",
       "quantize_int8", "w4a16_gemm", "w8a16_gemm", "int4_quantize", "dequantize_fp8",
       "dequantize_int8")
# op -> entry(module, x) for the quantized modules of that op (lowbit/nn/_layer.py): the
# output when a plan serves the call, None when the module's Python path must (no plan for
# the signature, or a call plans do not take: CPU, tensor subclasses, held), NotImplemented
# for a signature not seen yet (the module then calls the registered op, which prepares it).
# Empty when the library is not loaded.
MODULE_ENTRY: Dict[str, Callable] = {}
# op -> entry(*the op's arguments) for the eager API (lowbit/api.py), the same three answers,
# or [step]: the Python function the signature runs (called with the op's arguments but
# ``backend``).
ENTRY: Dict[str, Callable] = {}
# empty(device, dtype, *sizes): torch.empty's meaning without its Python argument parser, for
# the Triton kernels' launches, which lowbit/backends/triton.py hands it to when it loads them
# (after this module's load, which runs when lowbit.ops is imported); None when the library
# is not loaded.
EMPTY: Optional[Callable] = None


def serves(op: str) -> bool:
    """Whether calls of registered op ``op`` on CUDA tensors run the C++ implementation
    (a plan per signature whose kernel is one lowbit._C launch) here."""
    return _lib is not None and op in OPS


def status() -> str:
    """Whether the C++ implementations serve the registered ops of ``OPS`` here, and why not."""
    return _status


def hold(delta: int) -> int:
    """Add ``delta`` to the count of open blocks that hold the plans off; returns it."""
    return _lib.lowbit_native_hold(delta) if _lib is not None else 0


def reset() -> None:
    """Forget every plan, then release the launch objects they held (the C++ side uses none
    of them once its reset returns). The kept objects are swapped out first: one handed over
    by a preparation that finishes during the reset goes to the new dict, so a plan the C++
    side keeps never loses its object (one prepared before the reset is refused there)."""
    global _keep
    old, _keep = _keep, {}
    if _lib is not None:
        _lib.lowbit_native_reset()
    old.clear()


def stats() -> Dict[str, int]:
    """{"plans": signatures kept, "hits": calls a plan served, "misses": calls that went to
    Python, "hold": open blocks}; zeros when the library is not loaded."""
    out = (ctypes.c_int64 * 4)()
    if _lib is not None:
        _lib.lowbit_native_stats(out)
    return dict(zip(("plans", "hits", "misses", "hold"), out))


def plan(step: Optional[Callable], python_step: bool = False) -> List[int]:
    """The plan of a prepared step (lowbit/_linear.py, or the function a single op's choice
    runs) for the C++ side: the "no plan" plan (launch 0) for a step that is not one fused
    CUDA launch, whose signature Python serves from then on (with ``python_step``, the plan
    names the step itself, which the eager entries hand back to be called directly: the
    step takes the op's arguments without ``backend``); [] when there is no step (the call
    could not be prepared: CPU tensors, ``explain``, debug logging...) or the library is not
    loaded."""
    if step is None or _lib is None:
        return []
    native = getattr(step, "native", None)
    if native is None:
        if not python_step:
            return [PLAN_FORMAT, 0, 0, 0, 0]
        _keep_alive(step)
        return [PLAN_FORMAT, 0, 0, 0, id(step)]
    launch, workspace_bytes = native()
    _keep_alive(launch)
    address, entry = launch.native()
    return [PLAN_FORMAT, entry, address, workspace_bytes, 0]


def _keep_alive(obj) -> None:
    """Keep ``obj`` (whose address a plan holds) until the C++ table is emptied."""
    if len(_keep) >= _KEEP_MAX:
        reset()
    _keep[id(obj)] = obj
