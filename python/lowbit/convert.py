"""``lowbit.quantize_``: swap a model's ``nn.Linear`` layers for quantized modules, in place.

Schemes (``SCHEMES``):

- ``"fp8"``: W8A8 FP8 (``Fp8Linear``, e4m3fn weights per output channel, activations per
  token at run time, or per tensor with a calibrated static scale);
- ``"fp8-fnuz"``: as ``"fp8"`` in AMD MI300's e4m3fnuz (``Fp8Linear(fmt="e4m3fnuz")``, static
  scales from ``calibration.scale(name, "e4m3fnuz")``);
- ``"fp8-w8a16"``: FP8 weights only (``Fp8Linear(mode="w8a16")``);
- ``"int8"``: W8A8 INT8 (``Int8Linear``), activations as for ``"fp8"``;
- ``"w8a16"``: INT8 weights only (``Int8Linear(mode="w8a16")``);
- ``"int4"``: W4A16 group-wise (``Int4Linear``, ``group_size``, ``symmetric``).

Every ``nn.Linear`` the scheme supports is swapped unless ``filter`` excludes it or the model
keeps it in full precision (a Hugging Face model's ``_keep_in_fp32_modules``, as T5's ``wo``,
which its code reads the weight of; transformers' quantizers skip them too). A layer the
scheme cannot take is skipped with the reason (K not a multiple of the int4 group), and so is
one that no kernel of the model's device runs: each swapped layer runs one forward on a
one-row zero input on its device, and a ``NotImplementedError`` there (no GPU kernel for the
scheme's ops yet) keeps the layer in full precision, saying why. The returned
``QuantizeSummary`` lists every layer, swapped or skipped and why, and the bytes of the
layers' parameters and buffers before and after, and names the weights left outside the
swapped layers (``outside``).

A transformers mixture-of-experts layer keeps its experts as 3-D tensors in one module
(Mixtral's ``experts.gate_up_proj`` [E, 2I, H] and ``experts.down_proj``), marked with their
layout by transformers' ``use_experts_implementation``; quantize_ swaps such a module for a
``lowbit.nn.QuantizedExperts``, each expert's two projections quantized by the scheme as a
Linear of that shape would be (the W8A8 schemes' activations per token: calibration covers
nn.Linear layers). ``filter`` and the model's keep list apply to its name; an experts module
without those flags, or holding other tensors, stays as it is and is named in ``outside``.

``calibration`` (``lowbit.calibrate``'s result) gives the W8A8 schemes static per-tensor
activation scales: ``calibration.scale(name, fmt)`` for each swapped layer, ``fmt`` the
scheme's ("fp8", "e4m3fnuz" or "int8").

``keep_slower=M`` also keeps the layers that would run slower quantized than in bf16 at M
tokens per forward on their device, by measured data, not a guess: the layer speed-ups of
``heuristics.LAYER_SPEEDUP`` (lowbit bench's layer rows), read at the nearest measured
weight size and M. A device or scheme with no measured rows swaps the layer and says so.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

# scheme -> (module class name in lowbit.nn, from_linear keyword arguments, calibration format)
SCHEMES: Dict[str, Tuple[str, dict, Optional[str]]] = {
    "fp8": ("Fp8Linear", {"mode": "w8a8"}, "fp8"),
    "fp8-fnuz": ("Fp8Linear", {"mode": "w8a8", "fmt": "e4m3fnuz"}, "e4m3fnuz"),
    "fp8-w8a16": ("Fp8Linear", {"mode": "w8a16"}, None),
    "int8": ("Int8Linear", {"mode": "w8a8"}, "int8"),
    "w8a16": ("Int8Linear", {"mode": "w8a16"}, None),
    "int4": ("Int4Linear", {}, None),
}

Filter = Union[None, str, type, Tuple[type, ...], List[Union[str, type]], Callable]


@dataclass
class LayerReport:
    name: str
    swapped: bool
    reason: str  # what it became, or why it was kept
    bytes_before: int
    bytes_after: int
    experts: bool = False  # a MoE layer's experts module (QuantizedExperts), not a Linear


@dataclass
class QuantizeSummary:
    scheme: str
    layers: List[LayerReport] = field(default_factory=list)
    # Weight tensors held outside any nn.Linear, by qualified name: bytes (``_outside``)
    outside: Dict[str, int] = field(default_factory=dict)

    @property
    def swapped(self) -> List[str]:
        return [r.name for r in self.layers if r.swapped]

    @property
    def skipped(self) -> Dict[str, str]:
        return {r.name: r.reason for r in self.layers if not r.swapped}

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.layers)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.layers)

    def __str__(self) -> str:
        counts = []
        for kind, rows in (("Linear layers", [r for r in self.layers if not r.experts]),
                           ("experts modules", [r for r in self.layers if r.experts])):
            if rows or not counts:
                counts.append(f"{sum(r.swapped for r in rows)} of {len(rows)} {kind}")
        before, after = self.bytes_before, self.bytes_after
        ratio = f" ({before / after:.2f}x smaller)" if after else ""
        lines = [f"lowbit.quantize_({self.scheme!r}): {' and '.join(counts)} swapped; "
                 f"their bytes {_mib(before)} -> {_mib(after)}{ratio}"]
        skipped = self.skipped
        if skipped:
            lines.append("kept in full precision:")
            lines += [f"  {name}: {why}" for name, why in skipped.items()]
        out = sum(self.outside.values())
        if out >= 0.05 * before:  # (a position table or a class token is not worth a line)
            big = sorted(self.outside, key=self.outside.get, reverse=True)
            lines.append(f"weights outside nn.Linear layers, left as they are: {len(big)} "
                         f"tensors, {_mib(out)} (largest: {', '.join(big[:3])})")
        return "\n".join(lines)


# Modules whose weights quantize_ swaps (nn.Linear) or are not a Linear's by design: tables,
# convolutions, norms.
_NOT_OUTSIDE = (nn.Linear, nn.Embedding, nn.EmbeddingBag, nn.modules.conv._ConvNd, nn.LayerNorm,
                nn.GroupNorm, nn.modules.batchnorm._NormBase)


def _outside(model: nn.Module) -> Dict[str, int]:
    """Bytes of the weight tensors (2-D and more) that no nn.Linear holds and that are not an
    embedding's, a convolution's or a norm's, by name: what quantize_ did not reach, as the
    3-D weights of an experts module without transformers' layout flags."""
    mods = list(model.named_modules())
    # (a tensor tied to one of those modules', as a tied LM head's, is theirs)
    seen = {id(p) for _, mod in mods if isinstance(mod, _NOT_OUTSIDE)
            for p in mod.parameters(recurse=False)}
    out = {}
    for prefix, mod in mods:
        if isinstance(mod, _NOT_OUTSIDE):
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if p.dim() >= 2 and id(p) not in seen:
                seen.add(id(p))  # (a tied tensor counted once)
                out[f"{prefix}.{pname}" if prefix else pname] = p.numel() * p.element_size()
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def module_bytes(m: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (its own and its children's)."""
    return sum(t.numel() * t.element_size()
               for t in list(m.parameters()) + [b for b in m.buffers() if b is not None])


def _excluder(filter: Filter, model: nn.Module) -> Callable[[str, nn.Module], bool]:
    """filter -> excluded(name, module), module a Linear or an experts module. Names: a
    qualified name (the layer or a module above it) or an fnmatch pattern; types: the
    layer's type, or a module type above the layer; a callable(name, module) -> True to
    exclude."""
    if filter is None:
        return lambda name, m: False
    if callable(filter) and not isinstance(filter, type):
        return lambda name, m: bool(filter(name, m))
    if isinstance(filter, (str, type)):
        items = [filter]
    elif isinstance(filter, (list, tuple, set, frozenset)):
        items = list(filter)
    else:
        raise TypeError(f"quantize_: filter must be a name, a module type, a list of them or a "
                        f"callable(name, module); got {type(filter).__name__}")
    for it in items:
        if not isinstance(it, (str, type)):
            raise TypeError(f"quantize_: filter items must be names (str) or module types; got "
                            f"{type(it).__name__}")
    names = [it for it in items if isinstance(it, str)]
    types = tuple(it for it in items if isinstance(it, type))
    inside = set()
    if types:
        for prefix, mod in model.named_modules():
            if isinstance(mod, types):
                inside.add(prefix)

    def excluded(name: str, m: nn.Module) -> bool:
        parts = name.split(".")
        above = [".".join(parts[:i]) for i in range(len(parts) + 1)]
        if types and (isinstance(m, types) or any(p in inside for p in above)):
            return True
        return any(pat in above[1:] or fnmatch.fnmatchcase(name, pat) for pat in names)

    return excluded


def _kept_by_model(model: nn.Module) -> Callable[[str], Optional[str]]:
    """name -> why the model itself keeps that Linear in full precision, or None.

    A Hugging Face model lists in ``_keep_in_fp32_modules`` the modules its code keeps in
    fp32, and may read their weights: T5's gated FFN casts its activations to
    ``wo.weight.dtype`` before calling ``wo`` (fp8 codes for an Fp8Linear; an Int4Linear has
    no ``weight``). transformers' own quantizers leave those modules alone; so does
    quantize_. A listed name matches whole components of a layer's name below the model
    that lists it (``wo`` matches ``...DenseReluDense.wo``, ``qformer`` everything in it)."""
    lists = []
    for prefix, mod in model.named_modules():
        keep = getattr(mod, "_keep_in_fp32_modules", None)
        if isinstance(keep, (list, tuple, set, frozenset)) and keep:
            keys = sorted(k for k in keep if isinstance(k, str) and k)
            if keys:
                lists.append((f"{prefix}." if prefix else "", keys, type(mod).__name__))

    def why(name: str) -> Optional[str]:
        for prefix, keys, owner in lists:
            if name.startswith(prefix):
                path = f".{name[len(prefix):]}."
                hit = next((k for k in keys if f".{k}." in path), None)
                if hit is not None:
                    return (f"kept in full precision by the model ({owner}."
                            f"_keep_in_fp32_modules lists {hit!r})")
        return None

    return why


def quantize_(model: nn.Module, scheme: str, *, filter: Filter = None, calibration=None,
              group_size: int = 128, symmetric: bool = True,
              check_device: bool = True, keep_slower: Optional[int] = None) -> QuantizeSummary:
    """Swap every ``nn.Linear`` of ``model`` that ``scheme`` supports (and ``filter`` does not
    exclude) for its quantized module, in place; see the module docstring. ``group_size`` and
    ``symmetric``: the ``"int4"`` scheme's. ``check_device``: run one forward per swapped
    layer on a zero row of its device, keeping layers no kernel there runs. ``keep_slower``:
    the tokens per forward the model will run at (M); a layer whose measured speed-up on its
    device at that M is below 1 (``heuristics.LAYER_SPEEDUP``, the nearest measured shape) is
    kept in full precision, and the summary gives the measured point; where nothing was
    measured for the scheme on that device the layer is swapped and the summary says so.
    Returns the summary (print it)."""
    from . import nn as lnn
    from .nn.experts import experts_layout

    if scheme not in SCHEMES:
        raise ValueError(f"quantize_: scheme must be one of {tuple(SCHEMES)}; got {scheme!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_: model must be a torch.nn.Module; got {type(model).__name__}")
    cls_name, kwargs, cal_fmt = SCHEMES[scheme]
    cls = getattr(lnn, cls_name)
    if scheme == "int4":
        if group_size != -1:  # -1: per channel, checked per layer by Int4Linear
            from .scale_layout import check_group_size
            check_group_size("quantize_", group_size)
        kwargs = dict(group_size=group_size, symmetric=symmetric)
    if calibration is not None and cal_fmt is None:
        raise ValueError(f"quantize_: scheme {scheme!r} quantizes weights only; it takes no "
                         "calibration")
    if keep_slower is not None and (isinstance(keep_slower, bool) or
                                    not isinstance(keep_slower, int) or keep_slower < 1):
        raise ValueError(f"quantize_: keep_slower must be the tokens per forward, an int >= 1; "
                         f"got {keep_slower!r}")
    exclude, kept = _excluder(filter, model), _kept_by_model(model)
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    experts = [(name, m) for name, m in model.named_modules() if experts_layout(m) is not None]
    if not linears and not experts:
        raise ValueError("quantize_: the model has no nn.Linear layer or experts module to "
                         "quantize")
    # The filter asked about every layer before any is swapped: a filter that raises (one
    # written for Linears, reading out_features of an experts module) leaves the model as it
    # was, not half quantized.
    excluded_names = {name for name, m in linears + experts if exclude(name, m)}
    excluded = lambda name, m: name in excluded_names  # noqa: E731
    if calibration is not None:
        missing = [name for name, m in linears if type(m) is nn.Linear and not excluded(name, m)
                   and kept(name) is None and name not in calibration.clips]
        if missing:
            raise ValueError(f"quantize_: calibration has no activation statistics for "
                             f"{len(missing)} layer(s): {', '.join(missing[:8])}"
                             f"{' ...' if len(missing) > 8 else ''} (calibrate this model)")
    summary = QuantizeSummary(scheme)
    for name, lin in linears:
        before = module_bytes(lin)
        why, note = None, ""
        if type(lin) is not nn.Linear:
            # Its owner may read its weight without calling it (nn.MultiheadAttention's
            # out_proj), or its forward may not be nn.Linear's.
            why = (f"a subclass of nn.Linear ({type(lin).__name__}): only nn.Linear itself is "
                   "swapped")
        elif excluded(name, lin):
            why = "excluded by filter"
        elif (held := kept(name)) is not None:
            why = held
        elif scheme == "int4" and (misfit := _int4_misfit(lin.in_features, group_size)):
            why = misfit
        elif keep_slower is not None:
            why, note = _slower(scheme, lin, keep_slower)
        new = None
        if why is None:
            extra = {}
            if calibration is not None:
                extra["act_scale"] = calibration.scale(name, cal_fmt)
            new = cls.from_linear(lin, **kwargs, **extra)
            if check_device:
                why = _runs(new, lin)
        if why is not None:
            summary.layers.append(LayerReport(name, False, why, before, before))
            continue
        model.set_submodule(name, new)
        summary.layers.append(LayerReport(name, True, repr_short(new) + note, before,
                                          module_bytes(new)))
    for name, src in experts:
        summary.layers.append(_quantize_experts(model, name, src, scheme, cls, kwargs,
                                                excluded, kept, group_size, check_device,
                                                keep_slower, calibration))
    summary.outside = _outside(model)
    no_fused_layers(model)
    return summary


def _int4_misfit(k: int, group_size: int) -> Optional[str]:
    """Why an int4 layer of in_features k cannot take group_size (-1: per channel), or None."""
    if k % (32 if group_size == -1 else group_size) == 0:
        return None
    need = "32 (int4 per channel)" if group_size == -1 else f"group_size = {group_size}"
    return f"in_features = {k} is not a multiple of {need}"


def _quantize_experts(model, name, src, scheme, cls, kwargs, excluded, kept, group_size,
                      check_device, keep_slower, calibration) -> LayerReport:
    """Swap one transformers experts module for a QuantizedExperts (each expert's two
    projections as ``cls`` layers), or say why not."""
    from .nn.experts import QuantizedExperts, experts_layout

    before = module_bytes(src)
    _, _, _, e, h, i = experts_layout(src)
    why, note = None, ""
    if excluded(name, src):
        why = "excluded by filter"
    elif (held := kept(name)) is not None:
        why = held
    elif scheme == "int4" and (misfit := _int4_misfit(h, group_size) or
                               _int4_misfit(i, group_size)):
        why = "experts: " + misfit
    if why is None:
        try:
            new = QuantizedExperts.from_experts(src, lambda lin: cls.from_linear(lin, **kwargs))
        except ValueError as err:  # (tensors besides the experts' weights)
            why = str(err).splitlines()[0]
    if why is None and check_device:
        why = _experts_run(new, src)
    if why is not None:
        return LayerReport(name, False, why, before, before, experts=True)
    model.set_submodule(name, new)
    if calibration is not None and SCHEMES[scheme][2] is not None:
        note += "; activations per token (calibration covers nn.Linear layers)"
    if keep_slower is not None:
        note += f"; speed at M = {keep_slower} not judged for experts"
    return LayerReport(name, True, repr_short(new) + note, before, module_bytes(new),
                       experts=True)


def _experts_run(new: nn.Module, src: nn.Module) -> Optional[str]:
    """None when ``new`` runs a one-token forward through expert 0 on its device."""
    w = getattr(src, new._first)
    x = torch.zeros(1, new.hidden_size, dtype=w.dtype, device=w.device)
    index = torch.zeros(1, 1, dtype=torch.int64, device=w.device)
    try:
        with torch.no_grad():
            new(x, index, torch.ones(1, 1, dtype=w.dtype, device=w.device))
    except (NotImplementedError, ValueError) as e:
        return f"does not run on {w.device} ({w.dtype}): {str(e).splitlines()[0]}"
    return None


def no_fused_layers(model: nn.Module) -> None:
    """Keep ``nn.TransformerEncoderLayer``'s fused inference path
    (``torch._transformer_encoder_layer_fwd``) off in a layer whose ``linear1`` or ``linear2``
    is no longer an ``nn.Linear``: that path reads their ``weight`` tensors instead of calling
    them (an int8 weight into a float GEMM, or a module with no ``weight``). The layer then
    runs its Python forward, which calls them, with the same activation: the flag cleared
    here only chooses the path (torch takes that path when it is 1 or 2, ReLU or GELU)."""
    for mod in model.modules():
        if isinstance(mod, nn.TransformerEncoderLayer) and (
                type(mod.linear1) is not nn.Linear or type(mod.linear2) is not nn.Linear):
            mod.activation_relu_or_gelu = 0


def _slower(scheme: str, lin: nn.Linear, m: int):
    """(why the layer stays in full precision, or None; a note for a swapped layer)."""
    from .heuristics import device_capability, layer_speedup

    dev = lin.weight.device
    found = layer_speedup(scheme, dev, lin.out_features, lin.in_features, m)
    if found is None:
        return None, f"; speed at M = {m} not measured for {scheme} on {_device_name(dev)}"
    ratio, (mm, n, k) = found
    # The table's capability, not this card's name: its rows were measured on one card of
    # that capability (an H200 or an H100 for sm_90), which may not be the card at hand.
    cap = device_capability(dev)
    point = f"measured {ratio:.2f}x bf16 at {mm}x{n}x{k} on sm_{cap[0]}{cap[1]}"
    if ratio < 1.0:
        return f"slower quantized: {point}", ""
    return None, f"; {point}"


def _device_name(dev) -> str:
    if dev.type != "cuda":
        return dev.type
    return f"{torch.cuda.get_device_name(dev)} (sm_{''.join(map(str, torch.cuda.get_device_capability(dev)))})"


def repr_short(m: nn.Module) -> str:
    return f"{type(m).__name__}({m.extra_repr()})"


def _runs(new: nn.Module, lin: nn.Linear) -> Optional[str]:
    """None when ``new`` runs a one-row forward on its device, else why not."""
    w = lin.weight
    x = torch.zeros(1, lin.in_features, dtype=w.dtype, device=w.device)
    try:
        with torch.no_grad():
            new(x)
    except (NotImplementedError, ValueError) as e:  # no kernel there; a dtype it cannot take
        return f"does not run on {w.device} ({w.dtype}): {str(e).splitlines()[0]}"
    return None
