"""Backend choice and the kernel registry.

Every op runs one *kernel*: a function registered here under (op, backend) with a name that
says arch, dtype and variant. ``choose`` picks it:

- ``backend="reference"``: the NumPy kernel. It runs anywhere; CUDA inputs are copied through
  the host (that copy is what the caller asked for).
- ``backend="cuda"`` / ``"triton"``: the first kernel of that backend that supports the
  inputs (CUDA's in heuristic order, as ``auto`` orders them; Triton's by priority), or a
  ``ValueError`` (no CUDA device, or CPU tensors) / ``NotImplementedError`` (no such kernel
  for these inputs) saying why.
- ``backend="auto"`` (the default): CPU tensors run the reference kernel (it *is* the CPU
  backend); CUDA tensors run the first supporting kernel in heuristic order, and never fall
  back to the host: with no GPU kernel for the inputs it raises ``NotImplementedError``
  naming what is missing.

The default backend is ``"auto"``; ``LOWBIT_BACKEND`` in the environment or the
``use_backend`` context manager changes it. ``explain`` returns the choice without running it.

A GPU choice is remembered per call signature (op, backend, device, the environment switches
that kernels read, and each argument's shape, strides, dtype, device and data-pointer
alignment, or its value): what the argument checks, ``supports()`` and ``available()`` look
at, never tensor values. An eager decode loop then pays for the checks and the choice once
per shape, not once per call (``checked``).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ._checks import CHECK_SCALES_ENV
from ._env import getenv

BACKENDS = ("auto", "cuda", "triton", "reference")
ENV_VAR = "LOWBIT_BACKEND"

_log = logging.getLogger("lowbit")
_context: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("lowbit_backend", default=None)
_explaining: contextvars.ContextVar[bool] = contextvars.ContextVar("lowbit_explain", default=False)


def check_backend_name(name, argname: str = "backend") -> str:
    if name not in BACKENDS:
        raise ValueError(f"{argname} must be one of {BACKENDS}; got {name!r}")
    return name


def default_backend() -> str:
    """The backend that ``backend=None`` means here: context manager, then env, then auto."""
    name = _context.get()
    if name is not None:
        return name
    env = getenv(ENV_VAR)
    if env:
        return check_backend_name(env, ENV_VAR)
    return "auto"


def arg(backend: Optional[str]) -> str:
    """The public ``backend=`` argument as the registered ops take it: ``None`` travels as
    ``"default"`` and is resolved when the op runs, so the context manager and the
    environment variable also steer ops inside a ``torch.compile``d function."""
    return "default" if backend is None else check_backend_name(backend)


# Set by lowbit/_native.py when the C++ implementations of the linear ops are loaded:
# hold(delta) holds their plans off while a block whose context they cannot see is open;
# reset() empties their table when the choices may change.
_native_hold: Optional[Callable[[int], int]] = None
_native_reset: Optional[Callable[[], None]] = None


@contextlib.contextmanager
def _holding_native():
    hold = _native_hold
    if hold is not None:
        hold(1)
    try:
        yield
    finally:
        if hold is not None:
            hold(-1)


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops inside the ``with`` block on backend ``name`` unless an op says otherwise."""
    token = _context.set(check_backend_name(name))
    try:
        with _holding_native():
            yield
    finally:
        _context.reset(token)


@dataclass(frozen=True)
class Kernel:
    op: str
    backend: str
    name: str
    fn: Callable
    # supports(*op_args) -> None when the kernel handles these inputs, else the reason.
    supports: Optional[Callable] = None
    # available() -> None when the kernel can run in this process, else the reason.
    available: Optional[Callable[[], Optional[str]]] = None
    priority: int = 0
    # prepare(*op_args) -> a function of the op's arguments, specialized to everything their
    # signature holds (shapes, strides, dtypes, devices, alignment, non-tensor values): what
    # a remembered choice runs, so that an eager call repeats no per-signature work.
    prepare: Optional[Callable] = None


@dataclass(frozen=True)
class Choice:
    """Which kernel an op runs for given inputs, and why."""

    op: str
    backend: str
    kernel: str
    reason: str
    rejected: Sequence[str] = ()
    fn: Optional[Callable] = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        s = f"{self.op}: {self.backend}/{self.kernel} ({self.reason})"
        if self.rejected:
            s += "; not chosen: " + "; ".join(self.rejected)
        return s


_KERNELS: Dict[str, List[Kernel]] = {}
# Per op, its fake (lowbit/ops.py) as a function of the op's arguments: what an eager call
# on meta tensors runs, as the registered op does there.
META_FNS: Dict[str, Callable] = {}


def register_kernel(op: str, backend: str, name: str, *, supports=None, available=None,
                    priority: int = 0, prepare=None):
    """Decorator: register ``fn`` as kernel ``name`` of ``backend`` for ``op``. Higher
    priority is tried first by ``auto`` within the GPU backends; ``prepare``: see Kernel."""
    if backend not in BACKENDS[1:]:
        raise ValueError(f"backend must be one of {BACKENDS[1:]}; got {backend!r}")

    def deco(fn):
        _KERNELS.setdefault(op, []).append(
            Kernel(op, backend, name, fn, supports, available, priority, prepare))
        global _generation
        _KERNELS[op].sort(key=lambda k: -k.priority)
        _generation += 1  # a new kernel may change any remembered choice
        _choices.clear()
        if _native_reset is not None:
            _native_reset()
        return fn

    return deco


def kernels(op: str) -> List[Kernel]:
    return list(_KERNELS.get(op, ()))


def available_kernels(op: str, backends: Sequence[str]) -> List[Kernel]:
    """The kernels of ``op`` in ``backends`` that can run in this process (``available()``
    gives no reason against them), in registry order."""
    return [k for k in _KERNELS.get(op, ()) if k.backend in backends
            and (k.available is None or k.available() is None)]


class _Explained(Exception):
    def __init__(self, choice: Choice):
        super().__init__(str(choice))
        self.choice = choice


def _gpu_unavailable_reason() -> Optional[str]:
    if not torch.cuda.is_available():
        return "torch sees no CUDA device on this machine"
    return None


def _interpreting() -> bool:
    return getenv("TRITON_INTERPRET") == "1"


# Environment switches that a kernel's supports(), available() or prepare() reads (the Triton
# GEMM's and quantizers' launchers read theirs once per signature).
_CHOICE_ENV = ("LOWBIT_ARCH", "TRITON_INTERPRET", "LOWBIT_TRITON_AUTOTUNE",
               "LOWBIT_TRITON_FP8_PROMOTE", "LOWBIT_TRITON_FP8_HWCAST")
_CHOICES_MAX = 4096
_REMEMBER_ON = ("cuda",)  # device types whose choices are remembered
# signature -> (the op's kernel list, the registry generation, the choice), stored only by
# calls whose arguments passed the op's checks (``run``). A hit needs the same list object
# (held here, so its id cannot be reused) and generation (bumped by every registration).
_choices: Dict[tuple, tuple] = {}
_generation = 0


def _signature(op: str, device: torch.device, backend: str, args) -> Optional[tuple]:
    # Run on every eager GPU call: kept to attribute reads and one tuple per tensor.
    sig = [op, device, backend]
    for name in _CHOICE_ENV:
        sig.append(getenv(name))
    for x in args:
        if isinstance(x, torch.Tensor):
            try:
                sig.append((x.shape, x.stride(), x.dtype, x.device, x.data_ptr() % 16))
            except RuntimeError:  # a tensor without strides or storage (sparse...)
                return None
        elif type(x) is list:
            sig.append(tuple(x))
        else:
            sig.append(x)
    return tuple(sig)


def _remembered(key: Optional[tuple], regs) -> Optional["Choice"]:
    try:
        hit = _choices.get(key) if key is not None else None
    except TypeError:  # an unhashable argument: never stored either
        return None
    if hit is not None and hit[0] is regs and hit[1] == _generation:
        return hit[2]
    return None


def _try(kernel: Kernel, args) -> Optional[str]:
    if kernel.available is not None:
        why = kernel.available()
        if why:
            return why
    if kernel.supports is not None:
        return kernel.supports(*args)
    return None


def _meta_choice(op: str) -> Choice:
    return Choice(op, "meta", "fake", "meta tensors: outputs of the right shapes and dtypes, "
                  "no values (the op's fake)", fn=META_FNS[op])


def choose(op: str, device: torch.device, backend: str, args, remember: bool = False) -> Choice:
    """Pick the kernel for ``op`` on inputs ``args`` (already validated) on ``device``;
    ``remember``: the arguments passed the op's checks, so their signature may be stored."""
    regs = _KERNELS.get(op, [])
    generation = _generation
    if device.type == "meta" and device.type not in _REMEMBER_ON:
        # Shapes and dtypes only, whatever backend is asked for (none computes on meta).
        # (Tests stand meta tensors in for a GPU's by adding "meta" to _REMEMBER_ON.)
        return _meta_choice(op)
    if backend == "reference" or (backend == "auto" and device.type == "cpu"):
        (ref,) = [k for k in regs if k.backend == "reference"]
        why = ("requested" if backend == "reference" else "CPU tensors")
        if device.type != "cpu":
            why += "; copies through the host"
        return Choice(op, "reference", ref.name, why, fn=ref.fn)

    key = _signature(op, device, backend, args) if device.type in _REMEMBER_ON else None
    known = _remembered(key, regs)
    if known is not None:
        return known

    if backend in ("cuda", "triton"):
        if device.type != "cuda" and not (backend == "triton" and _interpreting()):
            raise ValueError(
                f"{op}: backend={backend!r} needs CUDA tensors; got tensors on {device}")
        missing = _gpu_unavailable_reason() if device.type == "cuda" else None
        if missing:
            raise ValueError(f"{op}: backend={backend!r} cannot run: {missing}")
        candidates = [k for k in regs if k.backend == backend]
    else:  # auto on a GPU
        candidates = [k for k in regs if k.backend in ("cuda", "triton")]
    if device.type == "cuda" and backend in ("auto", "cuda"):
        # The measured preference of lowbit/heuristics.py, then priority. Pinned to CUDA, the
        # CUDA kernels in that order (the sm_90a weight-only kernels where they lead, not the
        # portable order). Pinned to Triton, its kernels by priority: the table names one of
        # a weight-only op's two Triton kernels, which split the M range by their supports.
        # Imported here: heuristics reads the device helpers of lowbit.backends, whose
        # modules import this one to register their kernels.
        from . import heuristics

        order = heuristics.preferred(op, device, args)
        if order:
            rank = {name: i for i, name in enumerate(order)}
            candidates.sort(key=lambda k: rank.get(k.name, len(rank)))

    rejected = []
    for k in candidates:
        why = _try(k, args)
        if why is None:
            reason = ("requested" if backend != "auto"
                      else "first supporting kernel in measured order (lowbit/heuristics.py)")
            choice = Choice(op, k.backend, k.name, reason, tuple(rejected), fn=k.fn)
            if remember and key is not None:
                if k.prepare is not None:
                    choice = replace(choice, fn=k.prepare(*args))
                if len(_choices) >= _CHOICES_MAX:
                    _choices.clear()
                try:
                    _choices[key] = (regs, generation, choice)
                except TypeError:  # an unhashable argument
                    pass
            return choice
        rejected.append(f"{k.backend}/{k.name}: {why}")
    wanted = "CUDA or Triton" if backend == "auto" else backend
    detail = ("; ".join(rejected)) if rejected else f"no {wanted} kernel for {op} is built yet"
    raise NotImplementedError(
        f"lowbit.{op}: no {wanted} kernel runs these inputs on {device} ({detail}). "
        f"Pass backend='reference' to compute it through the host.")


def run(op: str, device: torch.device, backend: str, args, choice: Optional[Choice] = None):
    """Choose a kernel and run it on ``args`` (or report the choice under ``explain``)."""
    if choice is None:
        if backend == "default":
            backend = default_backend()
        choice = choose(op, device, backend, args, remember=True)  # callers checked args
    if _explaining.get():
        raise _Explained(choice)
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("%s", choice)
    return choice.fn(*args)


def checked(op: str, check: Callable, values: Optional[Callable] = None) -> Callable:
    """The eager implementation of ``op``: a function of the op's arguments followed by
    ``backend`` that runs ``check(*args)`` (the op's argument checks), ``values(*args)``
    (checks that read tensor values, every call), then ``run``. A call whose signature (see
    ``_signature``: everything the checks read, the devices included) already passed the
    checks and chose a GPU kernel skips ``check`` and the choice: the checks are a function
    of the signature alone. This is also what ``torch.ops.lowbit.<op>`` runs."""

    def call(*args):
        backend = args[-1]
        args = args[:-1]
        if backend == "default":
            backend = default_backend()
        first = args[0]
        choice = device = None
        if type(first) is torch.Tensor:
            device = first.device
            if device.type in _REMEMBER_ON:
                choice = _remembered(_signature(op, device, backend, args), _KERNELS.get(op))
        if choice is None:
            check(*args)
        if values is not None:
            values(*args)
        return run(op, first.device if device is None else device, backend, args, choice)

    def prepare(*args):
        """``call``, and the plan of the function its remembered choice runs for this
        signature (lowbit/_native.py): (*outputs, plan)."""
        from . import _native

        out = call(*args)
        plan = []
        if getenv(CHECK_SCALES_ENV) != "1":  # (value checks on every call: Python)
            choice = remembered_choice(op, args[:-1], args[-1])
            plan = _native.plan(None if choice is None else choice.fn, python_step=True)
        return (*out, plan) if isinstance(out, tuple) else (out, plan)

    call.__name__ = call.__qualname__ = op
    call.prepare = prepare
    return call


# ------------------------------------------------------------- modules that chain ops
# A quantized module's forward is a fixed chain of op calls (quantize, then GEMM). Once a
# forward of an input signature has run through the checked ops, the functions the
# remembered choices run are known, and later forwards of that signature may call them
# directly: one host call per forward instead of one per op, and no lookup per op.
# LOWBIT_FUSED_QUANT: whether a linear layer's quantizer may run inside its GEMM;
# LOWBIT_EARLY_WEIGHTS: whether its GEMM may load weights before waiting for the quantizer
# (both lowbit/backends/cuda/linear.py). CHECK_SCALES_ENV stays last (step_key reads it there).
_STEP_ENV = _CHOICE_ENV + ("LOWBIT_FUSED_QUANT", "LOWBIT_EARLY_WEIGHTS", CHECK_SCALES_ENV)


def remembered_choice(op: str, args, backend: Optional[str] = None) -> Optional[Choice]:
    """The remembered GPU choice for ``op`` on ``args`` (the op's arguments without
    ``backend``) under ``backend`` (None or "default": lowbit's current default), or None
    where there is none: CPU tensors, or a signature that has not passed the op's checks
    yet. Its ``fn`` is the function the op runs for this signature."""
    first = args[0]
    if type(first) is not torch.Tensor or first.device.type not in _REMEMBER_ON:
        return None
    if backend is None or backend == "default":
        backend = default_backend()
    return _remembered(_signature(op, first.device, backend, args), _KERNELS.get(op))


def step_key(x: torch.Tensor) -> Optional[tuple]:
    """The key under which a module keeps the chain prepared for input ``x``: everything the
    chained ops' signatures and choices depend on that is not the module's own state (the
    input's shape, strides, dtype, device and alignment, the default backend, the registry
    generation and the kernels' switches). None where a prepared chain must not run: tracing,
    ``explain``, debug logging of choices, or ``LOWBIT_CHECK_SCALES=1`` (whose value checks
    run in the checked ops only)."""
    if torch.compiler.is_compiling() or type(x) is not torch.Tensor:
        return None
    device = x.device
    if device.type not in _REMEMBER_ON or _explaining.get() or _log.isEnabledFor(logging.DEBUG):
        return None
    env = tuple(map(getenv, _STEP_ENV))
    if env[-1] == "1":
        return None
    return (x.shape, x.stride(), x.dtype, device, x.data_ptr() % 16, default_backend(),
            _generation, env)


def explain(fn: Callable, *args, **kwargs) -> Choice:
    """The kernel ``fn(*args, **kwargs)`` would run, and why, without running it.

    ``fn`` is a public lowbit op, e.g. ``lowbit.explain(lowbit.fp8_scaled_mm, a, b, sa, sb)``.
    Argument errors are raised as the op itself would raise them.
    """
    token = _explaining.set(True)
    try:
        with _holding_native():
            fn(*args, **kwargs)
    except _Explained as e:
        return e.choice
    finally:
        _explaining.reset(token)
    raise RuntimeError(f"{getattr(fn, '__name__', fn)} is not a lowbit op")
