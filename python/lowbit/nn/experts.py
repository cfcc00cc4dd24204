"""QuantizedExperts: a transformers mixture-of-experts layer's experts, each expert's two
projections held as lowbit quantized Linears.

transformers (5.x) keeps a MoE layer's experts as 3-D parameters of one module, e.g.
MixtralExperts' ``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I], marked by the
``use_experts_implementation`` decorator with their layout (``is_transposed``: [E, H, 2I] and
[E, I, H]; ``has_gate``: ``up_proj`` alone when False; ``has_bias``: ``<name>_bias`` [E, N];
``is_concatenated``, which only the module's ``_apply_gate`` reads). ``from_experts`` quantizes
each expert's slice as an ``nn.Linear`` of that shape would be (``make(linear)``, e.g.
``Fp8Linear.from_linear``), into ModuleLists under the same names (``gate_up_proj.3`` is
expert 3's), and keeps the rest of the module: its activation, its post-expert norm, its own
``_apply_gate`` (GPT-OSS's clamped SwiGLU over interleaved columns) and its attributes.

The forward computes what the module's eager forward computes, expert by expert: each
expert's tokens (in the order of transformers' loop: by top-k slot, then token) through its
first projection, the gate (or the activation), its down projection and the post-expert
norm, times the routing weight, added into the output in expert order, in fp32 (rounded to
the input dtype once, as transformers' grouped_mm path sums; its eager loop rounds after
each expert, so in bf16 the two differ by that rounding). Routing ids outside
[0, E) (an expert-parallel rank's sentinels) are skipped, as transformers skips them. The
tokens per expert are read to the host once per forward (one synchronization, where
transformers' loop makes several); under ``torch.compile`` that read is a graph break.

At decode sizes W8A8 experts take the grouped path instead (_experts_grouped.py: each
projection of every expert in one launch, no host read); ``path()`` says which a forward
takes.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn

from . import _experts_grouped as _grouped

_FLAGS = ("has_gate", "is_transposed")
# Instance attributes not carried over from the source: a forward patched onto it
# (accelerate's device hooks keep the old one and the hook beside it) would run the source's
# loop over weights this module no longer has; ``config``, the model's config that the
# decorator sets for its dispatch (which this module does not do), would hide config().
# ``_grouped``: the source's reading for the grouped path (a QuantizedExperts source, under
# load_quantized), about layers this module replaces.
_NOT_CARRIED = frozenset({"forward", "_old_forward", "_hf_hook", "config", "_grouped"})


def _capturing(x: torch.Tensor) -> bool:
    """Whether x's CUDA stream is capturing a graph (never while tracing: a compiled graph
    breaks at the loop's host read instead)."""
    return (x.device.type == "cuda" and not torch.compiler.is_compiling()
            and torch.cuda.is_current_stream_capturing())


def experts_layout(mod: nn.Module) -> Optional[Tuple[str, bool, bool, int, int, int]]:
    """(first projection's name, transposed, bias, E, H, I) when ``mod`` is a transformers
    experts module lowbit can quantize, else None: the decorator's flags, and 3-D weights
    (and 2-D biases) of shapes that agree."""
    if not all(isinstance(getattr(mod, f, None), bool) for f in _FLAGS):
        return None
    # The forward must be the decorator's dispatch (a functools.wraps wrapper over the eager
    # loop this module reproduces): a subclass with a forward of its own (Ergo's: a
    # post-expert norm per expert, routes summed after it) computes something else.
    if getattr(getattr(type(mod), "forward", None), "__wrapped__", None) is None:
        return None
    if mod.has_gate and not callable(getattr(type(mod), "_apply_gate", None)):
        return None
    first = "gate_up_proj" if mod.has_gate else "up_proj"
    params = mod._parameters
    w1, w2 = params.get(first), params.get("down_proj")
    if w1 is None or w2 is None or w1.dim() != 3 or w2.dim() != 3:
        return None
    t = mod.is_transposed
    e, h, i = (w2.shape[0], *(reversed(w2.shape[1:]) if t else w2.shape[1:]))
    f = 2 * i if mod.has_gate else i
    if tuple(w1.shape) != ((e, h, f) if t else (e, f, h)):
        return None
    bias = bool(getattr(mod, "has_bias", False))
    if bias:
        b1, b2 = params.get(f"{first}_bias"), params.get("down_proj_bias")
        if b1 is None or b2 is None or tuple(b1.shape) != (e, f) or tuple(b2.shape) != (e, h):
            return None
    return first, t, bias, e, h, i


def _expert_linear(w: torch.Tensor, b: Optional[torch.Tensor], transposed: bool) -> nn.Linear:
    """One expert's slice as the nn.Linear a quantizer takes (weight [out, in])."""
    w = w.detach()
    w = w.t().contiguous() if transposed else w
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    lin.weight = nn.Parameter(w, requires_grad=False)
    if b is not None:
        lin.bias = nn.Parameter(b.detach(), requires_grad=False)
    return lin


class QuantizedExperts(nn.Module):
    """A transformers experts module with quantized experts (see the module docstring).
    Built by ``from_experts`` (``lowbit.quantize_`` does it for every such module) or, empty,
    by ``like`` (``lowbit.load_quantized``)."""

    def __init__(self, source: nn.Module, num_experts: int, hidden_size: int,
                 intermediate_size: int, gated: bool, bias: bool):
        super().__init__()
        _grouped.mark_for_tracing()
        want = (num_experts, hidden_size, intermediate_size, gated, bias)
        if isinstance(source, QuantizedExperts):  # (load_quantized into a quantized model)
            got, first, source_cls = source.config(), source._first, source._source_cls
            got = tuple(got.values())
            children = {k: c for k, c in source.named_children()
                        if k not in (first, "down_proj")}
        else:
            layout = experts_layout(source)
            got = None if layout is None else (*layout[3:], source.has_gate, layout[2])
            if got is not None:
                first, source_cls = layout[0], type(source)
                children = dict(source.named_children())
        if got != want:
            what = "not a transformers experts module" if got is None else \
                "E, H, I = {}, gated={}, bias={}".format(got[:3], *got[3:])
            raise ValueError(f"QuantizedExperts: source must be a transformers experts module "
                             f"with E, H, I = {want[:3]}, gated={gated}, bias={bias}; got "
                             f"{what} ({type(source).__name__})")
        weights = {first, "down_proj", f"{first}_bias", "down_proj_bias"}
        other = [n for n, _ in source.named_parameters(recurse=False) if n not in weights] + \
            [n for n, _ in source.named_buffers(recurse=False)]
        if other:
            raise ValueError(f"QuantizedExperts: {type(source).__name__} holds tensors besides "
                             f"its experts' weights ({', '.join(other)}), which this module "
                             "would drop")
        # The source's attributes (its flags, the constants its _apply_gate reads) and
        # submodules (activation, post-expert norm) carry over, so that its own _apply_gate
        # runs on this module as it ran on the source.
        mine = vars(self)
        for key, value in vars(source).items():
            if key not in mine and key not in _NOT_CARRIED:
                setattr(self, key, value)
        for key, child in children.items():
            self.add_module(key, child)
        self._source_cls = source_cls
        self._first = first
        # False: every forward runs the loop (the grouped path's kernels differ from the
        # per-expert layers' in fp32 summation order; see path()).
        self.grouped = True
        self.num_experts, self.hidden_size = num_experts, hidden_size
        self.intermediate_size, self.gated, self.bias = intermediate_size, gated, bias
        # Placeholders until from_experts or load_quantized puts each expert's layer in.
        self.add_module(first, nn.ModuleList(nn.Identity() for _ in range(num_experts)))
        self.add_module("down_proj", nn.ModuleList(nn.Identity() for _ in range(num_experts)))

    @classmethod
    def like(cls, source: nn.Module, **config) -> "QuantizedExperts":
        """An empty module of ``config()``'s structure over ``source``'s activation, gate and
        attributes; its experts' layers are placeholders."""
        return cls(source, **config)

    @classmethod
    def from_experts(cls, source: nn.Module,
                     make: Callable[[nn.Linear], nn.Module]) -> "QuantizedExperts":
        """Quantize every expert of ``source`` with ``make`` (an ``nn.Linear`` -> a quantized
        module, e.g. ``lambda lin: Fp8Linear.from_linear(lin)``), one expert at a time."""
        layout = experts_layout(source)
        if layout is None:
            raise ValueError(f"QuantizedExperts: source must be a transformers experts module "
                             f"(3-D weights, use_experts_implementation's flags); got "
                             f"{type(source).__name__}")
        first, transposed, bias, e, h, i = layout
        mod = cls(source, e, h, i, source.has_gate, bias)
        p = source._parameters
        for name in (first, "down_proj"):
            w, b = p[name], p.get(f"{name}_bias") if bias else None
            layers = getattr(mod, name)
            for x in range(e):
                layers[x] = make(_expert_linear(w[x], None if b is None else b[x], transposed))
        return mod

    def _prepared(self) -> "_grouped.Prepared":
        # Read at the first eager forward, again once any layer or state tensor it read was
        # replaced, and after .to() (devices).
        got = self.__dict__.get("_grouped")
        if got is None or not got.holds():
            got = self.__dict__["_grouped"] = _grouped.Prepared(self)
        return got

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_grouped", None)  # (the devices may change)
        return super()._apply(fn, recurse)

    def __getstate__(self):
        # (the forward's reading is not carried: it is taken again from what was unpickled
        # or copied, and it holds weak references, which pickle cannot take)
        state = super().__getstate__()  # (a copy, without a compiled call of torch's)
        state.pop("_grouped", None)
        return state

    def __setstate__(self, state):
        # (a module unpickled in a fresh process, by torch.load of a whole model, is not
        # built through __init__)
        super().__setstate__(state)
        _grouped.mark_for_tracing()

    def path(self, tokens: int, top_k: int, x: Optional[torch.Tensor] = None) -> str:
        """Which path a forward of ``tokens`` tokens routed to ``top_k`` experts each takes:
        ``"grouped"`` (each projection of every expert in one launch,
        lowbit/nn/_experts_grouped.py) or ``"loop: <why>"``. ``x``: a tensor like the
        forward's input (its device and dtype matter), by default an empty one on the
        experts' device in their layer dtype."""
        if x is None:
            lay = getattr(self, self._first)[0]
            x = torch.empty(0, device=lay.weight.device,
                            dtype=getattr(lay, "dtype", torch.bfloat16))
        why = self._loop_reason(x, tokens * top_k)
        return "grouped" if why is None else f"loop: {why}"

    def _loop_reason(self, x: torch.Tensor, pairs: int) -> Optional[str]:
        """None when a forward of ``pairs`` routed pairs on ``x`` takes the grouped path, else
        why it runs the loop."""
        return self._decide(x, pairs)[0]

    def _decide(self, x: torch.Tensor, pairs: int
                ) -> Tuple[Optional[str], Optional["_grouped.Prepared"]]:
        """(``_loop_reason``, the eager reading the grouped path runs on: None when tracing,
        which reads the layers itself, or where the loop runs without one)."""
        if not self.__dict__.get("grouped", True):
            return "grouped is False", None
        if torch.compiler.is_compiling():  # (decided once, for the trace)
            prep = None
            fam, why = _grouped.family(self)
        else:
            prep = self._prepared()
            fam, why = prep.family, prep.why
        return _grouped.path_reason(self, x, pairs, fam, why), prep

    def config(self) -> dict:
        """The structure ``like`` rebuilds (``lowbit.load_quantized``)."""
        return {"num_experts": self.num_experts, "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size, "gated": self.gated,
                "bias": self.bias}

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() == 0 or \
                hidden_states.shape[-1] != self.hidden_size:
            got = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else \
                type(hidden_states).__name__
            raise ValueError(f"QuantizedExperts: hidden_states must have last dimension "
                             f"hidden_size = {self.hidden_size}; got {got}")
        x = hidden_states.reshape(-1, self.hidden_size)
        if top_k_index.dim() != 2 or top_k_index.shape[0] != x.shape[0] or \
                tuple(top_k_weights.shape) != tuple(top_k_index.shape):
            raise ValueError(f"QuantizedExperts: top_k_index and top_k_weights must both be "
                             f"[tokens = {x.shape[0]}, top_k]; got {tuple(top_k_index.shape)} "
                             f"and {tuple(top_k_weights.shape)}")
        why, prep = self._decide(x, top_k_index.numel())
        if why is None:
            return _grouped.forward(self, x, top_k_index, top_k_weights, prep).reshape(
                hidden_states.shape)
        if _capturing(x):  # (before any launch: torch's own error would name a CPU copy)
            raise RuntimeError(
                f"QuantizedExperts: this forward runs the per-expert loop ({why}), which "
                "reads the routing counts on the host and cannot be captured in a CUDA "
                "graph; the grouped path captures (QuantizedExperts.path says which runs)")
        # The experts' contributions summed in fp32 and rounded once, as transformers'
        # grouped_mm and batched_mm paths sum them (its eager loop rounds after each).
        out = torch.zeros(x.shape, dtype=torch.promote_types(x.dtype, torch.float32),
                          device=x.device)
        tokens = x.shape[0]
        # Slot-major, as transformers' loop (torch.where over the [top_k, tokens] mask)
        # visits an expert's tokens: the same rows in the same order into each GEMM.
        ids = top_k_index.t().reshape(-1)
        weights = top_k_weights.t().reshape(-1)
        # Ids past the experts (an expert-parallel rank's sentinels) go to bucket E, skipped;
        # a negative id to bucket E + 1, an error (transformers' one_hot rejects it too).
        e_all = self.num_experts
        bucket = torch.where(ids < 0, e_all + 1, ids.clamp(max=e_all))
        order = torch.argsort(bucket, stable=True)
        counts = torch.bincount(bucket, minlength=e_all + 2).tolist()  # the one host sync
        if counts[e_all + 1]:
            raise ValueError(f"QuantizedExperts: top_k_index holds {counts[e_all + 1]} "
                             "negative expert id(s)")
        first, down = getattr(self, self._first), self.down_proj
        gate = self._source_cls._apply_gate if self.has_gate else None
        post = self.post_expert_norm if getattr(self, "has_post_expert_norm", False) else None
        # Every expert's rows gathered once, in expert order: each expert then takes a slice
        # (a view, no launch). A decode step's loop is host-bound (bench/NOTES.md, "MoE
        # experts quantized"): per expert the two GEMMs, the gate, one multiply, one add.
        order = order[:sum(counts[:e_all])]  # (the sentinels' rows: no expert reads them)
        token = order % tokens
        rows = x[token]
        scale = weights[order].to(out.dtype)[:, None]
        start = 0
        for e in range(e_all):
            n = counts[e]
            if n == 0:
                continue
            end = start + n
            y = first[e](rows[start:end])
            y = gate(self, y) if gate is not None else self.act_fn(y)
            y = down[e](y)
            if post is not None:
                y = post(y)
            # (y in the layer dtype times an fp32 scale: the product in fp32, one launch; a
            # layer wider than the sum, an fp64 one, is rounded to it first)
            if torch.promote_types(y.dtype, out.dtype) != out.dtype:
                y = y.to(out.dtype)
            out.index_add_(0, token[start:end], y * scale[start:end])
            start = end
        return out.to(x.dtype).reshape(hidden_states.shape)

    def extra_repr(self) -> str:
        kind = "gated" if self.gated else "not gated"
        return (f"experts={self.num_experts}, {self.hidden_size} -> {self.intermediate_size} "
                f"({kind}) -> {self.hidden_size}, bias={self.bias}, "
                f"layers={type(getattr(self, self._first)[0]).__name__}")
