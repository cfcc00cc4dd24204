"""Sibling Linears that read one input (attention's q, k and v; an MLP's gate and up),
computed as one layer: ``lowbit.fuse_siblings(model)``.

Each member becomes a ``SiblingLinear`` (no tensors of its own but its place in the group).
The first member owns ``fused``: the quantized layer whose weight is the members' quantized
weights one after another (per-channel scales and biases too, so the numbers are the
members' own, not a re-quantization; a member without a bias gets zeros in the fused bias,
which leave its outputs as they were). A member's call whose input is the tensor the group's
last fused call took, with no in-place change since (its version counter), returns its
columns of that call's output; any other call runs the fused layer again and keeps the output
for the siblings not yet served. (A tensor made under ``torch.inference_mode`` has no version
counter, and inside a ``torch.compile``d graph versions are not traced: in both an in-place
change of the input between two siblings' calls goes unseen, so fuse only layers that read one
input unchanged, as attention's projections and gated MLPs do.) One activation quantization,
one GEMM launch and one host call serve the whole group, where the separate layers took three
of each.

What it changes for the caller:
- a member's output is a view of the fused output (its columns), not a contiguous tensor, as
  vLLM's merged QKV layer gives (``.view`` over the leading dimensions works, ``.view(-1)``
  does not);
- FP8 members' outputs may differ from the separate layers' in the last bits where the
  GEMM accumulates in another order for the wider N (a K split chosen for the narrow
  weight); INT8 accumulates exactly and gives the same numbers;
- a group under a module named as transformers names a cross-attention (``CROSS_ATTENTION``:
  q reads the decoder's states, k and v the encoder's) is not fused; members whose inputs
  turn out to differ elsewhere are found at the first such call: the group warns once and
  from then on each member runs alone, on views of its rows of the fused weight.

Kept as it is: a member called twice with no sibling between, calls of one member only, the
calls under ``torch.compile`` (the group's hand-off is traced as Python) and CUDA graphs.
Not thread-safe across threads running one model at once (the hand-off is per group, as a
prepared step is per module), nor for ``nn.DataParallel``'s replicas (they would share it).
``Fp8Linear``, ``Int8Linear`` (W8A8 and weight-only) and ``Int4Linear`` fuse; an int4 member
running alone holds its rows prepacked anew (a copy: the prepacked layout has no row views).
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..int4_weight import CANONICAL
from .fp8_linear import Fp8Linear
from .int4_linear import Int4Linear
from .int8_linear import Int8Linear

# Member names fused by default: attention projections and gated MLPs of the common
# architectures (BERT, RoBERTa, ViT; Llama, Mistral, Qwen, Whisper, CLIP; DistilBERT; T5;
# w1 / w3 of gated MLPs written as in Mixtral's experts, wi_0 / wi_1 as in T5 v1.1). Only
# siblings that are all present and all quantized alike fuse.
DEFAULT_GROUPS: Tuple[Tuple[str, ...], ...] = (
    ("query", "key", "value"),
    ("q_proj", "k_proj", "v_proj"),
    ("q_lin", "k_lin", "v_lin"),
    ("q", "k", "v"),
    ("gate_proj", "up_proj"),
    ("w1", "w3"),
    ("wi_0", "wi_1"),
)
# Modules whose query reads other states than their key and value (the decoder's against
# the encoder's), by the names transformers gives them (T5, BART and Whisper, BERT as a
# decoder): a group under one is kept, where fusing would warn and part at the first call.
CROSS_ATTENTION = frozenset({"EncDecAttention", "encoder_attn", "crossattention"})
# Each fusable class's tensors with a row per output channel, concatenated in the fused
# layer (bias included); its other tensors (static activation scale and zero point, int4's
# act-order permutation of K) are per layer and must be equal across the members.
ROWS = {Fp8Linear: ("weight", "weight_scale", "bias"),
        Int8Linear: ("weight", "weight_scale", "bias"),
        Int4Linear: ("qweight", "scales", "zeros", "bias")}


class _Handoff:
    """A group's state between its members' calls, a plain object: setting an attribute of
    an nn.Module costs about 1 us (Module.__setattr__'s checks), a sibling's whole call
    about 2."""

    def __init__(self, sizes: Tuple[int, ...]):
        self.all = (1 << len(sizes)) - 1  # a bit per member
        self.split = list(sizes)
        self.pending = None  # (x, x's version, each member's output, members not yet served)
        self.apart = False  # the members were found not to read one input

    def __getstate__(self):
        state = self.__dict__.copy()
        state["pending"] = None  # (tensors of a call in flight: never pickled)
        return state


class SiblingLinear(nn.Module):
    """One member of a group of quantized Linears that read one input (see the module
    docstring). ``index``: its place in the group; ``sizes``: every member's out_features, in
    order; ``members``: every member's name in the parent, in order (the first holds
    ``fused``)."""

    def __init__(self, in_features: int, sizes: Sequence[int], index: int,
                 members: Sequence[str]):
        super().__init__()
        sizes, members = tuple(int(s) for s in sizes), tuple(members)
        if len(sizes) < 2 or len(members) != len(sizes) or not 0 <= index < len(sizes):
            raise ValueError(f"SiblingLinear: index {index} must name one of at least two "
                             f"members and their sizes; got sizes={sizes}, members={members}")
        self.in_features, self.sizes, self.index = in_features, sizes, index
        self.members, self.owner = members, members[0]
        self.out_features = sizes[index]
        self.start = sum(sizes[:index])
        self._bit = 1 << index
        self._hand = _Handoff(sizes) if index == 0 else None  # the owner's, once linked
        self._own = None  # the member alone (on views of the fused rows), once apart

    # The owning member, found through the parent once the group is linked (fuse_siblings,
    # load_quantized): a plain attribute, not a registered child (the owner is the parent's).
    def _link(self, owner: "SiblingLinear") -> None:
        if owner is not self:  # (the owner holding itself would be a reference cycle)
            self.__dict__["_owner"] = owner
            self.__dict__["_hand"] = owner._hand

    @property
    def group(self) -> "SiblingLinear":
        owner = self if self.index == 0 else self.__dict__.get("_owner")
        if owner is None:
            raise RuntimeError(f"SiblingLinear: member {self.index} of its group is not linked "
                               "to its owner (build groups with lowbit.fuse_siblings, load "
                               "them with lowbit.load_quantized)")
        return owner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._hand
        if h is None:
            self.group  # (raises: not linked)
        compiling = torch.compiler.is_compiling()
        if h.apart:
            own = self._own_layer()
            if own is not None:
                return own(x)
            if not compiling:
                return self._build_own()(x)
            # (no module can be built inside a traced graph: the fused layer's columns)
            return torch.split_with_sizes(self.group.fused(x), h.split, -1)[self.index]
        pending = h.pending
        if pending is not None:
            px, version, parts, left = pending
            if px is x and left & self._bit and (compiling or version == _version(x)):
                left &= ~self._bit
                h.pending = (px, version, parts, left) if left else None
                return parts[self.index]
            if not compiling:
                # A call that is not its siblings' input while some sibling was never served
                # (another input, this member called again, the input changed in place): the
                # members are not called together on one input, and fusing would compute
                # columns nobody reads. Each runs alone from now on. (Under torch.compile
                # the call below hands off anew: correct, and the eager call that first
                # meets the pattern parts the group.)
                h.pending = None
                h.apart = True
                warnings.warn(f"lowbit: the fused layers {'+'.join(self.members)} are not "
                              "called together on one input; each now runs alone (fuse only "
                              "layers that read one input)", RuntimeWarning, stacklevel=2)
                return self._build_own()(x)
        # Every member's columns as views at once: one split costs about what one narrow
        # does, and a sibling's call then only picks its view.
        parts = torch.split_with_sizes(self.group.fused(x), h.split, -1)
        h.pending = (x, -1 if compiling else _version(x), parts, h.all & ~self._bit)
        return parts[self.index]

    def _held(self) -> tuple:
        fused = self.group.fused
        return (*fused._parameters.values(), *fused._buffers.values())

    def _own_layer(self) -> Optional[nn.Module]:
        """This member alone, built by ``_build_own`` and still over the fused layer's
        tensors: a cast or move of the model replaces some (``.half()`` replaces the bias
        and int4's scales, not the integer weight), and views of the old ones would compute
        with them."""
        own = self._own
        if own is None:
            return None
        held = self._held()
        if len(own[0]) != len(held) or any(a is not b for a, b in zip(own[0], held)):
            return None
        return own[1]

    def _build_own(self) -> nn.Module:
        self._own = (self._held(), rows_of(self.group.fused, self.start, self.out_features))
        return self._own[1]

    def config(self) -> dict:
        return {"in_features": self.in_features, "sizes": list(self.sizes),
                "index": self.index, "members": list(self.members)}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"columns {self.start}:{self.start + self.out_features} of {self.owner}.fused")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_own"] = None
        return state


def _version(x: torch.Tensor) -> int:
    """x's version counter (bumped by every in-place change); -1 for an inference tensor
    (made under torch.inference_mode), which has none."""
    return -1 if x.is_inference() else x._version


def _weight(mod: nn.Module) -> torch.Tensor:
    return mod.qweight if isinstance(mod, Int4Linear) else mod.weight


def _rows(mod: nn.Module) -> dict:
    """``mod``'s row tensors (``ROWS``) that it has, by name; an int4 weight in the canonical
    layout (its prepacked one interleaves rows)."""
    out = {}
    for name in ROWS[type(mod)]:
        t = getattr(mod, name)
        if t is not None:
            out[name] = t.detach()
    if isinstance(mod, Int4Linear) and mod.layout != CANONICAL:
        out["qweight"] = mod.weight_int4().canonical_qweight()
    return out


def _per_layer(mod: nn.Module) -> dict:
    rows = ROWS[type(mod)]
    return {n: t for n, t in mod._buffers.items() if n not in rows}


def _build(like: nn.Module, out_features: int, rows: dict, copy: bool = False) -> nn.Module:
    """A module of ``like``'s class and configuration with ``out_features`` outputs, the
    given row tensors (held as they are: views stay views) and ``like``'s per-layer ones
    (``copy``: copies of them); an int4 layer is prepacked as ``like`` is."""
    mod = type(like)(**dict(like.config(), out_features=out_features, bias="bias" in rows),
                     device=_weight(like).device)
    for name, t in _per_layer(like).items():
        mod._buffers[name] = t.clone() if copy and t is not None else t
    for name, t in rows.items():
        if name == "bias":
            mod.bias = nn.Parameter(t, requires_grad=False)
        else:
            mod._buffers[name] = t
    if isinstance(like, Int4Linear) and like.layout != CANONICAL:
        mod.prepack()
    return mod


def rows_of(mod: nn.Module, start: int, size: int) -> nn.Module:
    """A module of ``mod``'s class computing output channels start:start + size of ``mod``:
    its row tensors views of ``mod``'s (an int4 weight prepacked anew, from the canonical
    rows), the per-layer ones shared."""
    return _build(mod, size, {n: t.narrow(0, start, size) for n, t in _rows(mod).items()})


_EITHER = ("out_features", "bias")  # config keys in which members may differ


def _fusable(members: List[nn.Module]) -> Optional[str]:
    """None when ``members`` can be one layer, else why not."""
    first = members[0]
    if not all(type(m) is type(first) for m in members):
        return "members of different classes"
    if type(first) not in ROWS:
        return f"{type(first).__name__} does not fuse"
    if len({m.in_features for m in members}) > 1:
        return "members of different in_features"
    # (a bias or not may differ: the fused layer adds zeros for a member without one, as
    # Whisper's k_proj beside q_proj and v_proj)
    cfg = {k: v for k, v in first.config().items() if k not in _EITHER}
    for m in members[1:]:
        if {k: v for k, v in m.config().items() if k not in _EITHER} != cfg:
            return "members configured differently (mode, format, dtype, groups)"
        for name, t in _per_layer(m).items():
            other = first._buffers[name]
            if (t is None) != (other is None) or (t is not None and not torch.equal(t, other)):
                return f"members with different {name}"
        if isinstance(m, Int4Linear) and m.layout != first.layout:
            return "members in different weight layouts"
    if len({_weight(m).device for m in members}) > 1:
        return "members on different devices"
    return None


def _fused_of(members: List[nn.Module]) -> nn.Module:
    parts = [_rows(m) for m in members]
    bias = next((p["bias"] for p in parts if "bias" in p), None)
    if bias is not None:
        # A member without a bias adds zeros: x + 0 is x in fp32 (but -0, which turns +0).
        for p, m in zip(parts, members):
            p.setdefault("bias", bias.new_zeros(m.out_features))
    with torch.no_grad():
        rows = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    # The per-layer tensors copied: shared with a member still registered elsewhere in the
    # model (an alias), a checkpoint would keep only one name of the two, and the fused
    # layer would load without its act-order permutation or activation scale.
    return _build(members[0], sum(m.out_features for m in members), rows, copy=True)


def fuse_siblings(model: nn.Module,
                  groups: Sequence[Sequence[str]] = DEFAULT_GROUPS) -> Dict[str, str]:
    """Fuse, in place, each set of sibling quantized Linears named in ``groups`` (member
    names within one parent, in order) into one layer (see the module docstring).

    Returns what happened, by the parent's name and the group's members
    (``"encoder.layer.0.attention.self: query+key+value"``): "fused", or why not (a member
    missing is no entry: the group does not apply to that parent)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_siblings: model must be a torch.nn.Module; got "
                        f"{type(model).__name__}")
    if isinstance(groups, str) or any(isinstance(g, str) for g in groups):
        # (one group passed bare would be read as groups of single letters)
        raise ValueError(f"fuse_siblings: groups must be a sequence of groups, each a tuple of "
                         f"member names, e.g. [('query', 'key', 'value')]; got {groups!r}")
    groups = [tuple(g) for g in groups]
    if any(len(g) < 2 or len(set(g)) != len(g) or not all(isinstance(n, str) for n in g)
           for g in groups):
        raise ValueError(f"fuse_siblings: groups must be sequences of at least two distinct "
                         f"member names; got {groups!r}")
    report: Dict[str, str] = {}
    for parent_name, parent in list(model.named_modules()):
        children = parent._modules
        for names in groups:
            members = [children.get(n) for n in names]
            if any(m is None for m in members):
                continue
            key = f"{parent_name}: {'+'.join(names)}" if parent_name else "+".join(names)
            if all(isinstance(m, SiblingLinear) for m in members):
                continue  # (fused before)
            if not CROSS_ATTENTION.isdisjoint(parent_name.split(".")):
                report[key] = "kept: cross-attention (the query reads other states)"
                continue
            why = _fusable(members)
            if why is not None:
                report[key] = f"kept: {why}"
                continue
            fused = _fused_of(members)
            sizes = [m.out_features for m in members]
            new = [SiblingLinear(members[0].in_features, sizes, i, names)
                   for i in range(len(names))]
            new[0].fused = fused
            for n, m in zip(names, new):
                setattr(parent, n, m)
            link(parent)
            report[key] = "fused"
    return report


def link(parent: nn.Module) -> None:
    """Point every ``SiblingLinear`` child of ``parent`` at its group's owner (after
    fuse_siblings, and after load_quantized has built empty members)."""
    for child in parent._modules.values():
        if isinstance(child, SiblingLinear):
            owner = parent._modules.get(child.owner)
            if not isinstance(owner, SiblingLinear) or owner.index != 0 or \
                    owner.sizes != child.sizes or owner.members != child.members:
                raise ValueError(f"SiblingLinear: its owner {child.owner!r} is not the first "
                                 f"member of a group of sizes {child.sizes}")
            child._link(owner)
