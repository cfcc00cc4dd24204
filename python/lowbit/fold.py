"""Where a per-channel factor on a Linear's input can be folded, so that the full-precision
function stays the same: SmoothQuant (``x / s`` into the activations, ``W * s`` into the
weights) and AWQ both need it.

``input_groups(model, example)`` runs one forward and groups the ``nn.Linear`` layers by the
tensor they read. A group's input may be folded into its *producer* when that tensor is the
output of a norm with a per-channel affine weight (``nn.LayerNorm``, ``nn.RMSNorm``, or a
module whose class name ends in "LayerNorm" or "RMSNorm" with a ``weight`` of the channel
count: the Llama/Mistral/Qwen RMSNorms) or of an ``nn.Linear``, and when nothing but the
group's Linears reads it: a residual connection that also reads a post-norm's output (BERT)
makes the fold change the function, so such a group gets no producer. Uses are seen through a
``TorchFunctionMode`` during the forward: any torch function other than the group's
``F.linear`` calls that takes the tensor (shape and dtype queries aside) counts.

``fold_input_scale(model, group, s)`` divides the producer's output channels by ``s`` and
multiplies the group's weight columns by ``s``. ``apply_input_scale`` does that where the
group has a producer, and otherwise wraps each of its Linears in ``lowbit.nn.PreScale``
(the input multiplied by ``1 / s`` in the layer itself): the same function either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ._batches import run_batch

# Torch functions that read a tensor's metadata, not its values.
_METADATA = {"__get__", "size", "dim", "stride", "numel", "is_contiguous", "element_size",
             "is_floating_point", "data_ptr", "__len__", "ndimension", "get_device", "type"}
_LINEAR_FNS = (F.linear, torch._C._nn.linear)


@dataclass
class InputGroup:
    linears: List[str]  # the nn.Linear layers that read one tensor, in call order
    producer: Optional[str] = None  # the module whose output it is, when foldable
    kind: str = "none"  # "norm", "linear" or "none"
    why: str = ""  # why there is no producer


def _is_norm(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1:
        return False
    if isinstance(m, nn.LayerNorm) or (hasattr(nn, "RMSNorm") and isinstance(m, nn.RMSNorm)):
        return True
    name = type(m).__name__
    if name.startswith("Gemma"):  # scales by (1 + weight): not a plain per-channel weight
        return False
    return name.endswith("LayerNorm") or name.endswith("RMSNorm")


class _Uses(TorchFunctionMode):
    def __init__(self, watched: Dict[int, str], weights: Dict[int, str]):
        super().__init__()
        self.watched, self.weights = watched, weights
        self.readers: Dict[str, List[str]] = {}  # producer -> consumer Linears
        self.other: Dict[str, str] = {}  # producer -> a non-Linear use

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name not in _METADATA and self.watched:
            flat = list(args) + list(kwargs.values())
            for i, a in enumerate(flat):
                p = self.watched.get(id(a)) if isinstance(a, torch.Tensor) else None
                if p is None:
                    continue
                w = flat[1] if len(flat) > 1 else kwargs.get("weight")
                lin = self.weights.get(id(w)) if func in _LINEAR_FNS and i == 0 else None
                if lin is not None:
                    self.readers.setdefault(p, []).append(lin)
                else:
                    self.other.setdefault(p, name or repr(func))
        return func(*args, **kwargs)


def input_groups(model: nn.Module, example: Any, forward=None) -> List[InputGroup]:
    """The model's nn.Linear layers grouped by the tensor each reads in ``model(example)``
    (``example``: a tensor, a tuple of positional inputs or a dict; or ``forward(model,
    example)``), with the producer each group may be folded into; see the module
    docstring."""
    linears = {name: m for name, m in model.named_modules() if type(m) is nn.Linear}
    if not linears:
        raise ValueError("input_groups: the model has no nn.Linear layer")
    weights = {id(m.weight): name for name, m in linears.items()}
    producers = {name: m for name, m in model.named_modules()
                 if _is_norm(m) or type(m) is nn.Linear}
    watched: Dict[int, str] = {}
    keep: List[torch.Tensor] = []  # outputs stay alive, so their ids stay theirs
    input_of: Dict[str, int] = {}  # Linear -> id of the tensor it read
    handles = []
    mode = _Uses(watched, weights)

    def on_output(name):
        def hook(m, args, out):
            if isinstance(out, torch.Tensor):
                keep.append(out)
                watched[id(out)] = name
        return hook

    def on_input(name):
        def hook(m, args):
            if args and isinstance(args[0], torch.Tensor):
                keep.append(args[0])
                input_of[name] = id(args[0])
        return hook

    try:
        for name, m in producers.items():
            handles.append(m.register_forward_hook(on_output(name)))
        for name, m in linears.items():
            handles.append(m.register_forward_pre_hook(on_input(name)))
        with torch.no_grad(), mode:
            run_batch(model, example, forward)
    finally:
        for h in handles:
            h.remove()
    unreached = [n for n in linears if n not in input_of]
    if unreached:
        raise ValueError(f"input_groups: the example did not reach {', '.join(unreached[:8])}")
    by_input: Dict[int, List[str]] = {}
    for name in linears:  # named_modules order
        by_input.setdefault(input_of[name], []).append(name)
    groups = []
    for tid, names in by_input.items():
        g = InputGroup(names)
        p = watched.get(tid)
        if p is None:
            g.why = "its input is no norm's or Linear's output"
        elif p in mode.other:
            g.why = f"{p}'s output is also read by {mode.other[p]} (a residual?)"
        elif sorted(set(mode.readers.get(p, []))) != sorted(names):
            g.why = f"{p}'s output is also read by other layers"
        else:
            g.producer, g.kind = p, ("linear" if type(producers[p]) is nn.Linear else "norm")
        groups.append(g)
    return groups


@torch.no_grad()
def fold_input_scale(model: nn.Module, group: InputGroup, s: torch.Tensor) -> None:
    """Divide ``group``'s producer's output channels by ``s`` [K] (positive) and multiply
    its Linears' weight columns by ``s``: the model computes the same function (up to
    rounding in the weights' dtype)."""
    if group.producer is None:
        raise ValueError(f"fold_input_scale: {group.linears} have no foldable producer "
                         f"({group.why})")
    s = s.detach().to(torch.float64)
    if s.dim() != 1 or not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError("fold_input_scale: s must be a 1-D tensor of positive finite factors")
    mods = dict(model.named_modules())
    p = mods[group.producer]
    if type(p).__name__ == "PreScale":  # a producer pre-scaled by its own group: its Linear
        p = p.inner
    k = s.numel()

    def scaled(t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return (t.double() * f.to(t.device)).to(t.dtype)

    if group.kind == "norm":
        if p.weight.shape != (k,):
            raise ValueError(f"fold_input_scale: {group.producer}.weight has shape "
                             f"{tuple(p.weight.shape)}; s has {k} channels")
        p.weight.copy_(scaled(p.weight, 1 / s))
        if getattr(p, "bias", None) is not None:
            p.bias.copy_(scaled(p.bias, 1 / s))
    else:
        if p.out_features != k:
            raise ValueError(f"fold_input_scale: {group.producer} has {p.out_features} outputs; "
                             f"s has {k} channels")
        p.weight.copy_(scaled(p.weight, (1 / s)[:, None]))
        if p.bias is not None:
            p.bias.copy_(scaled(p.bias, 1 / s))
    for name in group.linears:
        lin = mods[name]
        lin.weight.copy_(scaled(lin.weight, s[None, :]))


def apply_input_scale(model: nn.Module, group: InputGroup, s: torch.Tensor) -> str:
    """Scale ``group``'s weight columns by ``s`` and its input by ``1 / s``: folded into the
    producer when there is one, else each Linear becomes a ``lowbit.nn.PreScale``. Returns
    how ("folded into <producer>" or "pre-scaled")."""
    if group.producer is not None:
        fold_input_scale(model, group, s)
        return f"folded into {group.producer}"
    from .convert import no_fused_layers
    from .nn.prescale import PreScale

    for name in group.linears:
        model.set_submodule(name, PreScale.wrap(model.get_submodule(name), s))
    no_fused_layers(model)
    return "pre-scaled"
