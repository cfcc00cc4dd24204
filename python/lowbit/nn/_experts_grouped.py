"""QuantizedExperts' grouped path: at decode sizes, each projection of every expert in one
launch (``lowbit.triton_kernels.experts_gemm``), with the routing worked out on the device.

The loop (experts.py) reads the tokens per expert to the host and runs two GEMMs, a gate, a
multiply and an add per expert hit: host-bound at decode, a graph break under
``torch.compile``, impossible to capture in a CUDA graph. Here a forward is a fixed
sequence of launches whose sizes depend only on the number of tokens and top_k:

1. x quantized per token once (each expert's layer would quantize its rows the same way:
   a per-token scale depends on the row only);
2. the first projection of every routed pair (pair p = slot * T + token, transformers'
   slot-major order) in one launch, into one row per pair: each program finds its expert's
   pairs in the routing itself (triton_kernels/experts_gemm.py);
3. the module's own gate (or activation), then those rows quantized per token;
4. the down projection in one launch, whose epilogue rounds each pair's row to x's dtype
   and multiplies it by the pair's routing weight in fp32 (a model with a post-expert norm:
   the norm, then that product in torch); the rows summed per token over the slots in
   fp32, rounded once to x's dtype.

What it runs is what the loop runs, layer for layer (the same quantized activations, the
same epilogue's roundings); the GEMMs' fp32 sums run in another order, and the experts'
contributions are summed by slot rather than by expert, so results agree with the loop's
to fp32 summation order, not bit for bit. Routing ids outside [0, E) are skipped, as the
loop skips sentinels; the loop raises on a negative id, which it can see on the host, and
this path, which never reads ids on the host, skips it too.

It serves W8A8 experts with dynamic per-token activations: every expert an ``Fp8Linear``
(e4m3fn) or every one a symmetric ``Int8Linear``, all of one layer dtype, on a CUDA device
(or under ``TRITON_INTERPRET=1``), for at most ``MAX_PAIRS`` routed pairs; the others run
the loop. ``QuantizedExperts.path(tokens)`` says which a forward takes, and why.
"""
from __future__ import annotations

import itertools
import weakref
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import _backend, ops
from ..backends import _device
from ..backends import triton as _triton
from ._layer import _dtype_name

# Routed pairs (tokens x top_k) up to which a forward takes the grouped path. A Mixtral
# block on an H100, its weights read in 16-byte pieces (bench/NOTES.md, "The grouped path
# to 256 pairs"): grouped ahead of the loop from 2 to 256 pairs (M = 1-128 at top-2; 814
# against 1270 us eager at 256), level at 512, where the loop's GEMMs run full tiles and
# each grouped program reads the whole routing.
MAX_PAIRS = 256


def family(mod) -> Tuple[Optional[str], str]:
    """("fp8" or "int8", "") when the grouped kernel serves ``mod``'s experts, else (None,
    the reason)."""
    from .fp8_linear import Fp8Linear
    from .int8_linear import Int8Linear

    layers = [*getattr(mod, mod._first), *mod.down_proj]
    kinds = set()
    for lay in layers:
        if isinstance(lay, Fp8Linear):
            if lay.mode != "w8a8" or lay.weight.dtype != torch.float8_e4m3fn:
                return None, f"an Fp8Linear expert in mode {lay.mode}, {lay.fmt}"
            kinds.add("fp8")
        elif isinstance(lay, Int8Linear):
            if lay.mode != "w8a8" or not lay.act_symmetric:
                return None, "an Int8Linear expert that is not W8A8 with symmetric activations"
            kinds.add("int8")
        else:
            return None, f"a {type(lay).__name__} expert (the grouped kernel runs W8A8 only)"
        if lay.act_scale is not None:
            return None, "an expert with a static activation scale"
        if not lay.weight.is_contiguous():
            return None, "an expert whose weight is not contiguous"
        if getattr(lay, "_hf_hook", None) is not None:
            # (accelerate's offload hooks run in the layer's forward, which the grouped
            # kernel does not call: it reads the tensors where they are)
            return None, "an expert with a forward hook of accelerate's"
    if len(kinds) != 1:
        return None, "experts of more than one precision"
    dtypes = {lay.dtype for lay in layers}
    if len(dtypes) != 1:
        return None, "experts of more than one layer dtype"
    firsts = getattr(mod, mod._first)
    for group in (firsts, mod.down_proj):
        if len({lay.bias is None for lay in group}) != 1:
            return None, "experts with and without a bias in one projection"
    devices = {t.device for lay in layers
               for t in (lay.weight, lay.weight_scale, lay.bias) if t is not None}
    if len(devices) != 1:
        return None, "experts on more than one device"
    return kinds.pop(), ""


def _kernel_reason(x_device: torch.device, fam: str, device: torch.device) -> Optional[str]:
    """None when the grouped kernel of ``fam`` runs for x on ``x_device`` and experts on
    ``device``, else why not. Constant for a trace (``mark_for_tracing``): it reads the
    card's capability, through a cache Dynamo would warn about."""
    if device != x_device:
        return f"x is on {x_device}, the experts on {device}"
    if x_device.type != "cuda" and not _backend._interpreting():
        return f"x is on {x_device} (the grouped kernel runs on CUDA, or under TRITON_INTERPRET=1)"
    if x_device.type == "cuda":
        if fam == "fp8" and torch.version.hip:
            return "fp8 e4m3fn experts on ROCm (the grouped kernel's fp8 is NVIDIA's)"
        cap = _device.capability(_device.device_index(x_device))
        arch = _device.arch_override() or cap[0] * 10 + cap[1]
        need = 89 if fam == "fp8" else 80
        if arch < need:
            return (f"sm_{arch} (the grouped kernel's {fam} tensor-core dot needs sm_{need}; "
                    "the loop runs the layers' own kernels)")
    return _triton.available()


class Projection(NamedTuple):
    """What the grouped path reads of one projection's experts: their weights, scales and
    biases (None without), and the first expert's ``_STATE`` (its quantizer's arguments:
    every expert quantizes its input alike)."""
    weights: List[Tensor]
    scales: List[Tensor]
    biases: Optional[List[Tensor]]
    family: object  # the layers' lowbit._linear.Family
    state: tuple


def _projection(layers) -> Projection:
    first = layers[0]
    return Projection([lay.weight for lay in layers], [lay.weight_scale for lay in layers],
                      None if first.bias is None else [lay.bias for lay in layers],
                      first._family, first._state())


class Prepared:
    """An eager forward's reading of the module: the path decision (``family``) and where
    each projection's tensors live, kept while it holds. It holds while every object it read
    is still in its place: the two ModuleLists, each expert's layer and each layer's
    ``_STATE`` attributes (a reload, a replaced layer or Parameter, a static scale set
    later: each puts a new object in one of those places, and the reading is taken again).
    It remembers those objects by identity and holds only the dicts they live in (a weight
    replaced before the next forward is freed at once, a replaced layer's tensors at the
    next forward; a weak reference tells when an object is freed, so that no other can take
    its identity unseen), and it reads the tensors from their places on each forward. A
    layer whose _STATE attribute is a property (a parametrization) is read anew on every
    forward. A tensor's storage swapped under the same Parameter
    (``param.data = ...``) is not a new object; its address is new, which the kernel's
    table of addresses follows. The layers' other attributes (their mode, a hook) are
    read when the reading is taken: they change with the layers' tensors (accelerate's
    offload replaces them), or not at all."""

    def __init__(self, mod):
        firsts, downs = mod._modules[mod._first], mod._modules["down_proj"]
        self.family, self.why = family(mod)
        self.volatile = False
        places = [(mod._modules, mod._first, firsts), (mod._modules, "down_proj", downs)]
        # Per projection, where each layer keeps each _STATE attribute.
        wheres: List[List[Tuple[dict, ...]]] = []
        for group in (firsts, downs):
            where = []
            for key, lay in group._modules.items():
                places.append((group._modules, key, lay))
                names = getattr(lay, "_STATE", ())
                held = [lay.__dict__ if w == "" else lay.__dict__.get(w)
                        for w in map(lay._holder, names)] if names else []
                if any(d is None for d in held):
                    self.volatile = True  # (a property: nothing to hold)
                places += [(d, n, d[n]) for d, n in zip(held, names) if d is not None]
                where.append(tuple(held))
            wheres.append(where)
        self._dicts, self._keys, objs = (tuple(v) for v in zip(*places))
        self._ids = tuple(map(id, objs))
        # A freed object sets the flag (its identity may then be another's); what cannot be
        # weakly referenced (None, a bool) is kept: nothing there to free.
        dead = self._dead = [False]

        def freed(_ref, dead=dead):  # (no reference to self: no cycle)
            dead[0] = True

        weak = (Tensor, torch.nn.Module)
        self._refs = [weakref.ref(v, freed) for v in objs if isinstance(v, weak)]
        self._kept = [v for v in objs if not isinstance(v, weak)]
        self._family = self._state_names = self._columns = None
        if self.family is not None and not self.volatile:
            first = firsts[0]
            self._family = (first._family, downs[0]._family)
            # ("weight", "weight_scale", "bias" lead every _STATE: where each layer keeps
            # them, by column, and where the first layer keeps each of its _STATE)
            self._state_names = (first._STATE, downs[0]._STATE)
            self._columns = tuple((*(tuple(w[c] for w in where) for c in range(3)), where[0])
                                  for where in wheres)

    def holds(self) -> bool:
        # (map and a tuple comparison: the reads and comparisons in C, a few microseconds
        # for 16 experts)
        return not self.volatile and not self._dead[0] and \
            tuple(map(id, map(dict.get, self._dicts, self._keys))) == self._ids

    def projections(self) -> Tuple[Projection, Projection]:
        """Each projection's tensors, read from their places now (not volatile)."""
        out = []
        for (w, s, b, first), fam, names in zip(self._columns, self._family,
                                                 self._state_names):
            state = tuple(map(dict.get, first, names))
            biases = None if state[2] is None else list(map(dict.get, b, itertools.repeat(
                names[2], len(b))))
            out.append(Projection(list(map(dict.get, w, itertools.repeat(names[0], len(w)))),
                                  list(map(dict.get, s, itertools.repeat(names[1], len(s)))),
                                  biases, fam, state))
        return out[0], out[1]


def _quantize(x2: Tensor, proj: Projection) -> Tuple[Tensor, Tensor]:
    """x2 quantized per token as the projection's experts quantize their input: their
    family's quantizer op and arguments (lowbit/_linear.py)."""
    fam = proj.family
    q_op = (ops.OPS if torch.compiler.is_compiling() else ops.EAGER)[fam.quantize]
    qs = q_op(*fam.quant_args(x2, *proj.state), "default")
    return qs[0], qs[1]


def _gemm_eager(a, a_scale, top_k_index, a_by_token: bool, weights, scales, biases,
                out_dtype: torch.dtype, route_weights: Optional[Tensor] = None) -> Tensor:
    from ..triton_kernels import experts_gemm

    with _device.OnDevice(a.device):  # (Triton launches on the current device's stream)
        return experts_gemm.experts_w8a8(a, a_scale, top_k_index, a_by_token, weights,
                                         scales, biases, out_dtype,
                                         route_weights=route_weights)


def _gemm_fake(a, a_scale, top_k_index, a_by_token: bool, weights, scales, biases,
               out_dtype: torch.dtype, route_weights: Optional[Tensor] = None) -> Tensor:
    dtype = out_dtype if route_weights is None else torch.float32
    return a.new_empty((top_k_index.numel(), weights[0].shape[0]), dtype=dtype)


ops._LIB.define("experts_w8a8(Tensor a, Tensor a_scale, Tensor top_k_index, bool a_by_token, "
                "Tensor[] weights, Tensor[] scales, Tensor[]? biases, ScalarType out_dtype, "
                "Tensor? route_weights=None) -> Tensor")
ops._LIB.impl("experts_w8a8", _gemm_eager, "CompositeExplicitAutograd")
ops._LIB.impl("experts_w8a8", torch.library.fallthrough_kernel, "Autograd")
torch.library.register_fake("lowbit::experts_w8a8", _gemm_fake, lib=ops._LIB)


def _gemm(proj: Projection, a, a_scale, top_k_index, a_by_token: bool,
          out_dtype: torch.dtype, route_weights: Optional[Tensor] = None) -> Tensor:
    weights, scales, biases = proj.weights, proj.scales, proj.biases
    if torch.compiler.is_compiling():
        return torch.ops.lowbit.experts_w8a8(a, a_scale, top_k_index, a_by_token, weights,
                                             scales, biases, out_dtype,
                                             route_weights=route_weights)
    return _gemm_eager(a, a_scale, top_k_index, a_by_token, weights, scales, biases,
                       out_dtype, route_weights)


# Routing weights the down projection's epilogue takes (what the sum's fp32 cast is exact for)
_ROUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def forward(mod, x: Tensor, top_k_index: Tensor, top_k_weights: Tensor,
            prepared: Optional[Prepared] = None) -> Tensor:
    """The experts' output [T, H] for x [T, H] (see the module docstring). ``prepared``:
    the module's reading (eager); None under tracing, which reads the layers itself, as a
    volatile reading does."""
    t, k = top_k_index.shape
    if prepared is None or prepared.volatile:
        first, down = _projection(getattr(mod, mod._first)), _projection(mod.down_proj)
    else:
        first, down = prepared.projections()
    qx, sx = _quantize(x, first)
    # (a layer's output dtype is its input's)
    y = _gemm(first, qx, sx, top_k_index, True, x.dtype)
    y = mod._source_cls._apply_gate(mod, y) if mod.has_gate else mod.act_fn(y)
    qh, sh = _quantize(y.contiguous(), down)
    post_norm = getattr(mod, "has_post_expert_norm", False)
    # (a router being trained needs the multiply in torch: the kernel has no backward)
    if not post_norm and top_k_weights.dtype in _ROUTE_DTYPES and not (
            top_k_weights.requires_grad and torch.is_grad_enabled()):
        # Each pair's output rounded to x's dtype and weighted in fp32 by the kernel's
        # epilogue, as below, without the ops that would do it after the launch.
        contrib = _gemm(down, qh, sh, top_k_index, False, x.dtype, top_k_weights)
        return contrib.view(k, t, contrib.shape[-1]).sum(0).to(x.dtype)
    z = _gemm(down, qh, sh, top_k_index, False, x.dtype)
    if post_norm:
        z = mod.post_expert_norm(z)
    acc = torch.promote_types(z.dtype, torch.float32)
    ids = top_k_index.t().reshape(-1, 1)
    routed = (ids >= 0) & (ids < mod.num_experts)
    w = top_k_weights.t().reshape(-1, 1).to(acc)
    contrib = torch.where(routed, z.to(acc) * w, 0.0)
    return contrib.view(k, t, contrib.shape[-1]).sum(0).to(x.dtype)


def _backend_named() -> bool:
    """Whether a ``use_backend`` block is open. Dynamo cannot read its ContextVar, so
    ``mark_for_tracing`` lets a compiled graph take this as a constant of its trace (a block
    opened later does not change that graph)."""
    return _backend._context.get() is not None


_MARKED = False


def mark_for_tracing() -> None:
    """Marks ``_backend_named`` and ``_kernel_reason`` for Dynamo (``assume_constant_result``);
    called when a QuantizedExperts is built, which comes before any compile of it. Not at
    import: marking imports torch._dynamo, over a second that ``import lowbit`` need not pay."""
    global _MARKED, _backend_named, _kernel_reason
    if not _MARKED:
        _backend_named = torch.compiler.assume_constant_result(_backend_named)
        _kernel_reason = torch.compiler.assume_constant_result(_kernel_reason)
        _MARKED = True


def path_reason(mod, x: Tensor, pairs: int, fam: Optional[str], why: str) -> Optional[str]:
    """None when a forward of ``pairs`` routed pairs on ``x`` takes the grouped path, else
    why it runs the loop."""
    if fam is None:
        return why
    if pairs > MAX_PAIRS:
        return f"{pairs} routed pairs (the grouped kernel serves up to {MAX_PAIRS})"
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"x of dtype {_dtype_name(x.dtype)}"
    if _backend_named():
        # (lowbit.use_backend: the layers' ops take the named backend)
        return "a backend is named (lowbit.use_backend)"
    return _kernel_reason(x.device, fam, getattr(mod, mod._first)[0].weight.device)
