"""What lowbit's quantized Linear modules share: the layer dtype, the bias, argument checks,
the [M, K] view of the input, and the W8A8 forward with its prepared step."""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from .. import _backend, _checks, _compiled_quant, _linear, _native, ops

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MODULE_ENTRY = _native.MODULE_ENTRY  # filled when lowbit._torch_ops loads


def _layer_dtype(cls_name: str, dtype: Union[torch.dtype, str]) -> torch.dtype:
    """The layer dtype as a torch dtype; the name config() writes ("bfloat16") is accepted,
    so ``cls(**mod.config())`` rebuilds the module."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, dtype)
    if dtype not in _DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in _DTYPES)
        raise TypeError(f"{cls_name}: dtype must be one of {names}; got {dtype!r}")
    return dtype


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _layer_dtype_of(mod: nn.Module) -> torch.dtype:
    """The layer dtype: the bias's when there is one (it follows ``module.to(dtype)``),
    else the constructor's (bf16 for an Fp8Linear pickled before modules kept it; the name
    for one pickled when its constructor kept the name config() gives)."""
    if mod.bias is not None:
        return mod.bias.dtype
    return _layer_dtype(type(mod).__name__, getattr(mod, "_dtype", torch.bfloat16))


def _check_linear(linear) -> None:
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear; got {type(linear).__name__}")


def _copy_bias(mod: nn.Module, linear: nn.Linear) -> None:
    if linear.bias is not None:
        mod.bias.data.copy_(linear.bias.detach())


def _new_bias(out_features: int, bias: bool, dtype, device) -> Optional[nn.Parameter]:
    # A Parameter (not a buffer) in the layer dtype, as nn.Linear's: state_dict keys and
    # dtype casts of the model treat it as they treat the original layer's bias.
    if not bias:
        return None
    return nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device),
                        requires_grad=False)


def _check_x(mod: nn.Module, x: torch.Tensor) -> None:
    """A ValueError naming the module when x's last dimension is not in_features (a
    TypeError when x is no tensor)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{type(mod).__name__}: x must be a torch.Tensor; got "
                        f"{type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != mod.in_features:
        raise ValueError(
            f"{type(mod).__name__}: x must have last dimension in_features = "
            f"{mod.in_features}; got shape {tuple(x.shape)}")


def _rows(mod: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """x [..., K] -> (x as [M, K], the output shape [..., N]), after ``_check_x``."""
    _check_x(mod, x)
    return x.reshape(-1, mod.in_features), (*x.shape[:-1], mod.out_features)


def _host_tensor(name: str, v, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``torch.as_tensor(v, dtype)``, with a TypeError naming the argument for what is
    neither a number nor a tensor."""
    try:
        return torch.as_tensor(v, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number or a tensor; got {type(v).__name__} "
                        f"{v!r}") from None


def _static_act_scale(act_scale) -> Optional[torch.Tensor]:
    """``from_linear``'s ``act_scale`` as an fp32 tensor (None stays None); a ValueError
    unless it is one finite value of magnitude at least 2^-126 (checked where its value is
    on the host, as the ops check it)."""
    if act_scale is None:
        return None
    act_scale = _host_tensor("act_scale", act_scale, torch.float32)
    if act_scale.numel() != 1:
        raise ValueError(f"act_scale must be a scalar; got shape {tuple(act_scale.shape)}")
    _checks.quant_scales("from_linear", act_scale=act_scale)
    return act_scale


def _check_state_dtypes(mod: nn.Module, state_dict, prefix: str, codes, scales,
                        expect=None) -> None:
    """A TypeError naming the key where ``load_state_dict`` would turn a state_dict's tensor
    into silently wrong numbers: one of the module's buffers of codes (``codes``: quantized
    values, zero points) of another dtype than the buffer's (fp8 codes saved as uint8 would
    load as the numbers 0-255; ``expect``: name -> the dtype wanted instead, where the module
    converts on the way in), or a scale (``scales``) that is not floating point (truncated).
    A scale of another float dtype converts, as a module cast (``.half()``) converts it."""
    for name in (*codes, *scales):
        have = mod._buffers.get(name)
        v = state_dict.get(prefix + name)
        if have is None or not isinstance(v, torch.Tensor):
            continue
        if name in scales:
            if not v.dtype.is_floating_point or v.dtype.itemsize == 1:  # (int, fp8)
                raise TypeError(f"{type(mod).__name__}: state_dict[{prefix + name!r}] must "
                                f"be a floating-point scale; got {v.dtype}")
            continue
        want = (expect or {}).get(name, have.dtype)
        if v.dtype != want:
            raise TypeError(f"{type(mod).__name__}: state_dict[{prefix + name!r}] must have "
                            f"dtype {want} (the module's {name}: a conversion would change "
                            f"the quantized numbers); got {v.dtype}")


_MISSING = object()


class _Step(NamedTuple):
    """A module's prepared W8A8 step (``W8A8Forward``)."""

    key: tuple  # the input signature (lowbit._backend.step_key)
    held: tuple  # (where it lives: see _holder, name, value) of each _STATE attribute
    args: tuple  # the _STATE values: the step's arguments after x
    run: Callable


class W8A8Forward:
    """The W8A8 forward of a quantized Linear whose family (``_family``, a
    ``lowbit._linear.Family``) names its op, and whose ``_STATE`` attributes are the op's
    arguments after x. On a GPU where lowbit._torch_ops is loaded, a forward is one C++ call
    into the plan the registered op keeps for its signature (lowbit/_native.py); a signature
    that has no plan, or where the library is not loaded, runs the Python path: a forward
    whose input signature (and module tensors) match the last one runs the step the checked
    ops chose then (lowbit/_linear.py), in one host call. Everything a check reads is in the key, so an input the checks would reject never
    matches; the module's tensors must be the very objects the step was built with (looked up
    in the dict that holds each, not through ``nn.Module.__getattr__``, which costs more than
    the rest of the check)."""

    _family: "_linear.Family"
    _STATE: Tuple[str, ...]
    _step: Optional[_Step] = None

    def _state(self) -> tuple:
        return tuple(getattr(self, name) for name in self._STATE)

    def _w8a8(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            entry = _MODULE_ENTRY.get(self._family.op)
            if entry is not None and _backend._context.get() is None:  # (see lowbit/api.py)
                # lowbit._torch_ops: the plan of this signature, in one C++ call.
                y = entry(self, x)
                if y is NotImplemented:  # unseen: the op prepares its plan
                    _check_x(self, x)
                    return ops.OPS[self._family.op](x, *self._state(), "default")
                if y is not None:
                    return y
        key = _backend.step_key(x)
        step = self._step
        if key is not None and step is not None:
            step_key, held, args, run = step
            if step_key == key:
                attrs = self.__dict__
                for where, name, value in held:
                    if (attrs[where] if where else attrs).get(name, _MISSING) is not value:
                        break
                else:
                    return run(x, *args)
        return self._w8a8_checked(x, key)

    def _holder(self, name: str) -> Optional[str]:
        """Where attribute ``name`` lives: "" (the instance dict), "_parameters" or
        "_buffers"; None elsewhere (e.g. a parametrization's property). A name, not the
        dict: the step must not hold the module's own __dict__ (a reference cycle that would
        keep the weights alive after the model is dropped, until a full collection)."""
        if name in self.__dict__:
            return ""
        for where in ("_parameters", "_buffers"):
            if name in self.__dict__[where]:
                return where
        return None

    def _w8a8_checked(self, x: torch.Tensor, key) -> torch.Tensor:
        _check_x(self, x)  # (a prepared step's key holds a shape that passed it)
        state = self._state()
        # The op's own checks first: a module raises what its op raises (the path through
        # lowbit._torch_ops calls the op), whichever path serves it.
        op = ops.DEFS[self._family.op]
        op.check(x, *state)
        if torch.compiler.is_compiling() or type(x) is not torch.Tensor:
            # One registered op per layer in a compiled graph (one dispatcher crossing), and
            # the dispatcher for tensor subclasses (tracing). Opt-in: the quantizer as torch
            # ops that Inductor can fuse into the activation's producer (_compiled_quant).
            if torch.compiler.is_compiling() and _compiled_quant.enabled():
                y = _compiled_quant.linear(self._family.op, x, state)
                if y is not None:
                    return y
            return ops.OPS[self._family.op](x, *state, "default")
        if op.values is not None:  # (values, never under tracing)
            op.values(x, *state)
        y, q_args, g_args = _linear.run_ops(self._family, x, state, "default")
        if key is not None:
            where = [self._holder(n) for n in self._STATE]
            # This module's own step (its own launch objects: the weight's TMA map is kept),
            # the one path that reuses a workspace per stream (backends/cuda/linear.py).
            step = None if None in where else _linear.prepare_step(
                self._family, x, q_args, g_args, state, shared_workspace=True)
            if step is not None:
                held = tuple(zip(where, self._STATE, state))
                self._step = _Step(key, held, state, step)
        return y

    # Quantized tensors and their scales: their dtypes are the format, so dtype casts of the
    # module (``model.half()``, ``model.to(torch.float16)``) move them to the new device but
    # never convert them (torch counts float8 and fp32 scales as floating point and would).
    _FORMAT_TENSORS = ("weight", "weight_scale", "act_scale", "act_zero")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _check_state_dtypes(self, state_dict, prefix, ("weight", "act_zero"),
                            ("weight_scale", "act_scale"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, recurse=True):
        """``nn.Module._apply`` (what ``to``, ``half``, ``cuda``... run) with the format
        tensors kept in their dtype, the layer dtype following a cast to a layer dtype, and the
        prepared step dropped (the bias may have changed dtype in place, under the same
        Parameter)."""
        keep = {id(t) for t in (self._buffers.get(n) for n in self._FORMAT_TENSORS)
                if t is not None and t.is_floating_point()}

        def keeping_format(t):
            if id(t) in keep:
                # fn sees the bits as integers: it moves them (device, pinning, sharing, as
                # it would the tensor) and casts nothing.
                return fn(t.view(_SAME_SIZE_INT[t.element_size()])).view(t.dtype)
            return fn(t)

        self._step = None
        if self.bias is None:
            layer = fn(torch.empty((), dtype=_layer_dtype_of(self)))
            if layer.dtype in _DTYPES:
                self._dtype = layer.dtype
        return super()._apply(keeping_format, recurse)

    def __getstate__(self):
        # The prepared step holds closures over this process's kernels: never pickled.
        state = self.__dict__.copy()
        state["_step"] = None
        return state
