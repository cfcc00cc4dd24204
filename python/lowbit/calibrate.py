"""Activation calibration: static per-tensor scales for the inputs of a model's ``nn.Linear``
layers, from a few batches of representative data.

``calibrate(model, batches, observer)`` hooks every Linear's input, runs the batches, and
returns a ``Calibration``: one clipping value ``c`` per layer, whose static scale is ``c / 448``
for FP8 e4m3fn ("fp8"), ``c / 240`` for AMD MI300's e4m3fnuz ("e4m3fnuz") and ``c / 127``
for INT8 (``Calibration.scale``). Observers reduce a layer's
inputs to ``c``:

- ``AbsMaxObserver``: the largest ``|x|`` seen (nothing is clipped).
- ``PercentileObserver``: a percentile of ``|x|`` (clips the rare outliers).
- ``MseObserver``: the ``c`` in ``(0, absmax]`` whose fake quantization of the observed values
  has the least mean squared error, for the format the scale is meant for.

Observers run on the inputs' device with torch ops only: a batch costs no host
synchronization; ``clip()`` reads the result back once at the end.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Optional

import torch
from torch import Tensor, nn

from ._batches import run_batch

__all__ = [
    "Observer", "AbsMaxObserver", "PercentileObserver", "MseObserver", "make_observer",
    "Calibration", "calibrate", "static_scale", "FORMATS",
]

# The formats a clip becomes a scale for: the largest magnitude of each (the SPEC's qmax).
# "e4m3fn" is "fp8" by its format's name, so that the name Fp8Linear's fmt and
# lowbit.native_fp8_format give serves here too.
FORMATS = {"fp8": 448.0, "e4m3fn": 448.0, "e4m3fnuz": 240.0, "int8": 127.0}
_FP8_OF = {"fp8": torch.float8_e4m3fn, "e4m3fn": torch.float8_e4m3fn,
           "e4m3fnuz": torch.float8_e4m3fnuz}
# The SPEC's floor on a scale (the smallest normal fp32): keeps 1 / scale finite.
_SCALE_FLOOR = 2.0 ** -126
_FP32_MAX = float(torch.finfo(torch.float32).max)


def _fmt(where: str, fmt) -> float:
    if fmt not in FORMATS:
        raise ValueError(f"{where}: fmt must be one of {sorted(FORMATS)} (fp8 means e4m3fn); "
                         f"got {fmt!r}")
    return FORMATS[fmt]


def static_scale(clip: float, fmt: str, device=None) -> Tensor:
    """The fp32 0-d static scale of a clipping value: ``fp32(clip) / qmax`` (one correctly
    rounded fp32 division; qmax is 448 for "fp8" e4m3fn, 240 for "e4m3fnuz", 127 for
    "int8"), floored at
    ``2**-126``; a clip of 0 (activations that were all zero) gives 1. This is the SPEC's
    dynamic per-tensor scale of a tensor whose absmax is ``clip``, so an absmax calibration
    on one batch reproduces the scale ``quantize_fp8``/``quantize_int8`` would compute."""
    qmax = _fmt("static_scale", fmt)
    c = torch.tensor(clip, dtype=torch.float32, device=device)
    if clip == 0:
        return torch.ones((), dtype=torch.float32, device=device)
    return torch.clamp_min(c / qmax, _SCALE_FLOOR)


def _fake_quant(values: Tensor, scale: Tensor, fmt: str) -> Tensor:
    """Quantize-dequantize fp32 ``values`` with a 0-d fp32 ``scale`` as the SPEC's
    ``quantize_*``/``dequantize_*`` (fp32 out) do, in plain torch: ``x * (1 / scale)`` (one
    fp32 multiply), then round to nearest even and saturate (to e4m3fn: clamping to +-448
    first is saturation, as every larger value rounds to 448 or beyond, and it leaves nothing
    to how the installed torch's cast treats overflow; e4m3fnuz likewise at +-240; to int8:
    [-127, 127]),
    then ``* scale``. tests/test_calibrate.py checks it bit for bit against the library's ops;
    it exists because the MSE search runs it ``grid`` times per layer, and the NumPy reference
    of the e4m3fn encoder is several times slower on a CPU."""
    y = values * (1.0 / scale)
    if fmt in _FP8_OF:
        qmax, dtype = FORMATS[fmt], _FP8_OF[fmt]
        q = y.clamp_(-qmax, qmax).to(dtype).to(torch.float32)
    else:
        # + 0 turns -0 into +0: an int8 code has no sign of zero.
        q = torch.round(y).clamp_(-127.0, 127.0).add_(0.0)
    return q.mul_(scale)


def _lerp(a: float, b: float, t: float) -> float:
    # numpy's linear interpolation, term for term, so exact percentiles match numpy's bits.
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


class Observer:
    """Base of the observers: ``observe(x)`` on each batch, then ``clip()``.

    Keeps the running ``|x|`` maximum and the number of values seen (``count``) on the device
    of the first batch (later batches on another device are moved there). Subclasses add
    ``_update(a, m)`` (``a``: the batch's ``|x|`` as flat fp32, ``m``: its max) and
    ``_clip(absmax)``.
    """

    wants_values = True  # whether _update needs the batch's |x| (AbsMax needs its max only)

    def __init__(self):
        self._amax: Optional[Tensor] = None
        self._device: Optional[torch.device] = None
        self.count = 0

    def observe(self, x: Tensor) -> None:
        """Accumulate one batch of activations (any shape; fp32, bf16 or fp16)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"{type(self).__name__}.observe: x must be a floating-point "
                            f"torch.Tensor; got {got}")
        if x.numel() == 0:
            return
        x = x.detach()
        if self._device is None:
            self._device = x.device
        elif x.device != self._device:
            x = x.to(self._device)
        lo, hi = torch.aminmax(x)
        m = torch.maximum(-lo, hi).to(torch.float32)
        self._amax = m if self._amax is None else torch.maximum(self._amax, m)
        self.count += x.numel()
        if self.wants_values:
            self._update(x.reshape(-1).to(torch.float32).abs(), m)

    def _update(self, a: Tensor, m: Tensor) -> None:
        pass

    def clip(self) -> float:
        """The clipping value c of everything observed (a host read)."""
        if self.count == 0:
            raise RuntimeError(f"{type(self).__name__}.clip: no activations observed yet; "
                               f"call observe(x) with a non-empty tensor first")
        amax = float(self._amax)
        if not math.isfinite(amax):
            raise ValueError(f"{type(self).__name__}.clip: the observed activations hold "
                             f"NaN or Inf (their absmax is {amax}); no finite scale fits them")
        return self._clip(amax)

    def _clip(self, amax: float) -> float:
        return amax

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AbsMaxObserver(Observer):
    """c = the running max of ``|x|`` over all batches: nothing is clipped."""

    wants_values = False


class PercentileObserver(Observer):
    """c = the ``percentile``-th percentile of ``|x|`` over all values seen (numpy's default
    "linear" method: interpolation between the two nearest order statistics).

    Exact while the values seen number at most ``max_exact`` (they are kept on the device and
    sorted at ``clip()``: the result equals ``numpy.percentile`` of them in float64). Past
    that, a histogram of ``bins`` equal bins over ``[0, R]`` counts them: ``R`` starts at the
    absmax of the values so far and doubles whenever the max outgrows it, merging pairs of
    bins, which is exact, so the counts always are those of all values on the current bins,
    and ``R < 2 * absmax``. Each order statistic is then estimated by the middle of its bin,
    so the percentile is within one bin width, ``error_bound = R / bins < 2 * absmax / bins``,
    of the exact one. ``percentile=100`` is the absmax, exactly.
    """

    def __init__(self, percentile: float = 99.99, *, bins: int = 8192, max_exact: int = 1 << 20):
        super().__init__()
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or \
                not 0 < percentile <= 100:
            raise ValueError(f"PercentileObserver: percentile must be a number in (0, 100]; "
                             f"got {percentile!r}")
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"PercentileObserver: bins must be an int >= 2; got {bins!r}")
        if isinstance(max_exact, bool) or not isinstance(max_exact, int) or max_exact < 0:
            raise ValueError(f"PercentileObserver: max_exact must be an int >= 0; "
                             f"got {max_exact!r}")
        self.percentile = float(percentile)
        self.bins, self.max_exact = bins, max_exact
        self._exact = []  # the |x| batches while they fit in max_exact
        self._counts: Optional[Tensor] = None  # int64 [bins], once past max_exact
        self._range: Optional[Tensor] = None  # float64 0-d: R

    def _update(self, a: Tensor, m: Tensor) -> None:
        if self._counts is None and self.count <= self.max_exact:
            self._exact.append(a)
            return
        if self._counts is None:  # the values outgrow max_exact: count them all from here on
            held, self._exact = self._exact, []
            self._counts = torch.zeros(self.bins, dtype=torch.int64, device=a.device)
            self._range = torch.zeros((), dtype=torch.float64, device=a.device)
            for h in held:
                self._histogram(h, h.max())
        self._histogram(a, m)

    def _histogram(self, a: Tensor, m: Tensor) -> None:
        # Device ops only (no .item(), no bincount, which reads its input's max back).
        m = m.to(torch.float64)
        r = self._range
        grown = r > 0
        # The least d >= 0 with r * 2**d >= m; log2 may round, so its ceiling is corrected
        # both ways with exact comparisons (scaling by a power of 2 is exact).
        d = torch.log2(m / torch.where(grown, r, 1.0)).ceil().nan_to_num(0, 2048, 0)
        d = d.clamp(0, 2048)
        d = d - ((d >= 1) & (r * torch.exp2(d - 1) >= m)).to(d.dtype)
        d = d + (r * torch.exp2(d) < m).to(d.dtype)
        d = torch.where(grown, d, 0)
        new_r = torch.where(grown, r * torch.exp2(d), m)
        # Zero-valued bins merge in pairs d times: old bin i lands in bin i >> d. While r was
        # 0 every value seen was 0, in bin 0 of any range.
        shift = d.clamp(max=62).to(torch.int64)
        idx = torch.arange(self.bins, device=a.device).bitwise_right_shift(shift)
        self._counts = torch.zeros_like(self._counts).index_add_(0, idx, self._counts)
        per = torch.where(new_r > 0, self.bins / new_r, 0.0)
        pos = (a.to(torch.float64) * per).floor_().nan_to_num_(0).clamp_(0, self.bins - 1)
        pos = pos.to(torch.int64)
        self._counts.index_add_(0, pos, torch.ones_like(pos))
        self._range = new_r

    @property
    def error_bound(self) -> float:
        """How far ``clip()`` may be from the exact percentile: 0 while exact, else the bin
        width."""
        if self._counts is None:
            return 0.0
        return float(self._range) / self.bins

    def _clip(self, amax: float) -> float:
        if self.percentile == 100:
            return amax
        n = self.count
        v = (n - 1) * (self.percentile / 100)
        k = math.floor(v)
        k1 = min(k + 1, n - 1)
        if self._counts is None:
            s = torch.cat(self._exact).sort().values
            a, b = float(s[k]), float(s[k1])
        else:
            cum = self._counts.cumsum(0)
            bins = torch.searchsorted(cum, torch.tensor([k, k1], device=cum.device), right=True)
            w = float(self._range) / self.bins
            a, b = ((int(i) + 0.5) * w for i in bins.tolist())
            a, b = min(a, amax), min(b, amax)
        return _lerp(a, b, v - k)

    def __repr__(self) -> str:
        return f"PercentileObserver(percentile={self.percentile:g})"


class MseObserver(Observer):
    """c = the clip in ``(0, absmax]`` that minimizes the mean squared error of fake-quantizing
    the observed values to ``fmt`` with the static scale ``static_scale(c, fmt)``: "int8"
    (symmetric, round to nearest even, [-127, 127]), "fp8" (e4m3fn, saturating) or
    "e4m3fnuz" (saturating at 240).

    Candidates: ``c_i = absmax * i / grid`` for i = 1..grid, each rounded to fp32 (the clip a
    ``Calibration`` keeps gives exactly the scale evaluated here); ties go to the smaller c.
    ``absmax`` is over every value seen; the error is measured on a uniform random sample of
    at most ``max_samples`` of them (bottom-k sampling: each value draws a uniform key from a
    generator seeded with ``seed``, and the ``max_samples`` smallest keys are kept), held on
    the device (4 bytes a value). Quantization is symmetric in both formats, so the sample
    keeps ``|x|``. All-zero activations give c = 0.
    """

    def __init__(self, fmt: str = "int8", grid: int = 100, max_samples: int = 1 << 20, *,
                 seed: int = 0):
        super().__init__()
        _fmt("MseObserver", fmt)
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ValueError(f"MseObserver: grid must be an int >= 1; got {grid!r}")
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"MseObserver: max_samples must be an int >= 1; got {max_samples!r}")
        self.fmt, self.grid, self.max_samples, self.seed = fmt, grid, max_samples, seed
        self._values: Optional[Tensor] = None
        self._keys: Optional[Tensor] = None
        self._gen: Optional[torch.Generator] = None

    @property
    def sample(self) -> Optional[Tensor]:
        """The ``|x|`` values the error is measured on (None before any observe)."""
        return self._values

    def _update(self, a: Tensor, m: Tensor) -> None:
        if self._gen is None:
            self._gen = torch.Generator(device=a.device).manual_seed(self.seed)
        keys = torch.rand(a.numel(), generator=self._gen, device=a.device)
        if self._values is not None:
            a, keys = torch.cat((self._values, a)), torch.cat((self._keys, keys))
        if a.numel() > self.max_samples:
            keep = torch.topk(keys, self.max_samples, largest=False, sorted=False).indices
            a, keys = a[keep], keys[keep]
        self._values, self._keys = a, keys

    def _clip(self, amax: float) -> float:
        if amax == 0:
            return 0.0
        x = self._values
        clips = [float(torch.tensor(amax * (i / self.grid), dtype=torch.float32))
                 for i in range(1, self.grid + 1)]
        errors = torch.stack([
            (_fake_quant(x, static_scale(c, self.fmt, x.device), self.fmt) - x)
            .square_().mean(dtype=torch.float64)
            for c in clips])
        return clips[int(torch.argmin(errors))]

    def __repr__(self) -> str:
        return f"MseObserver(fmt={self.fmt!r}, grid={self.grid})"


_NAMED = {
    "absmax": AbsMaxObserver,
    "percentile": PercentileObserver,  # 99.99
    "mse": MseObserver,  # int8
}


def make_observer(spec):
    """A fresh observer from ``spec``: "absmax", "percentile" (99.99), "mse" (int8), an
    observer class or a zero-argument callable returning an observer, or an observer instance
    (a prototype: each call returns a deep copy of it, so one spec serves every layer)."""
    if isinstance(spec, str):
        if spec not in _NAMED:
            raise ValueError(f"observer must be one of {sorted(_NAMED)}, an observer or a "
                             f"callable returning one; got {spec!r}")
        return _NAMED[spec]()
    if not isinstance(spec, type) and _is_observer(spec):
        return copy.deepcopy(spec)
    if callable(spec):
        obs = spec()
        if not _is_observer(obs):
            raise TypeError(f"observer: the callable returned {type(obs).__name__}, which has "
                            f"no observe(x) and clip() methods")
        return obs
    raise TypeError(f"observer must be a name ({sorted(_NAMED)}), an observer or a callable "
                    f"returning one; got {type(spec).__name__}")


def _is_observer(obj) -> bool:
    return callable(getattr(obj, "observe", None)) and callable(getattr(obj, "clip", None))


@dataclass
class Calibration:
    """Clipping values of ``nn.Linear`` inputs: ``clips`` maps a layer's qualified name (as
    ``model.named_modules()`` gives it) to its clip c; ``observer`` describes how they were
    found; ``batches`` is how many batches were run."""

    clips: Dict[str, float] = field(default_factory=dict)
    observer: str = ""
    batches: int = 0

    def __post_init__(self):
        if not isinstance(self.clips, Mapping):
            raise TypeError(f"Calibration: clips must be a dict of name -> float; "
                            f"got {type(self.clips).__name__}")
        clips = {}
        for name, c in self.clips.items():
            if not isinstance(name, str):
                raise TypeError(f"Calibration: clips keys must be layer names (str); got {name!r}")
            if isinstance(c, bool) or not isinstance(c, (int, float)) or \
                    not 0 <= c <= _FP32_MAX:
                raise ValueError(f"Calibration: clips[{name!r}] must be a finite float >= 0 "
                                 f"(at most fp32's max); got {c!r}")
            clips[name] = float(c)
        self.clips = clips
        if isinstance(self.batches, bool) or not isinstance(self.batches, int) or \
                self.batches < 0:
            raise ValueError(f"Calibration: batches must be an int >= 0; got {self.batches!r}")
        if not isinstance(self.observer, str):
            raise TypeError(f"Calibration: observer must be a str; "
                            f"got {type(self.observer).__name__}")

    def scale(self, name: str, fmt: str, device=None) -> Tensor:
        """The fp32 0-d static scale of layer ``name``'s input for ``fmt`` ("fp8": e4m3fn,
        c / 448; "e4m3fnuz": c / 240; "int8": c / 127), as ``static_scale``: floored at
        2**-126, and 1 for a clip of 0, the SPEC's dynamic scale of a tensor whose absmax is
        c."""
        if name not in self.clips:
            raise ValueError(f"Calibration.scale: name {name!r} is not a calibrated layer; "
                             f"calibrated: {sorted(self.clips)}")
        _fmt("Calibration.scale", fmt)
        return static_scale(self.clips[name], fmt, device)

    def to_dict(self) -> dict:
        """A JSON-serializable dict (floats round-trip exactly through ``json``)."""
        return {"clips": dict(self.clips), "observer": self.observer, "batches": self.batches}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Calibration":
        if not isinstance(d, Mapping):
            raise TypeError(f"Calibration.from_dict: d must be a dict; got {type(d).__name__}")
        missing = {"clips", "observer", "batches"} - set(d)
        if missing:
            raise ValueError(f"Calibration.from_dict: d lacks {sorted(missing)}; "
                             f"got keys {sorted(d)}")
        return cls(clips=dict(d["clips"]), observer=d["observer"], batches=d["batches"])


def _targets(model: nn.Module, layers) -> Dict[str, nn.Linear]:
    modules = dict(model.named_modules())
    if layers is None:
        # The layers quantize_ swaps: nn.Linear itself, not a subclass (whose owner may read its
        # weight without calling it, as nn.MultiheadAttention does its out_proj's).
        found = {n: m for n, m in modules.items() if type(m) is nn.Linear}
        if not found:
            raise ValueError(f"calibrate: model ({type(model).__name__}) has no nn.Linear "
                             f"layer to calibrate")
        return found
    if isinstance(layers, str):
        raise TypeError(f"layers must be a collection of layer names, not one str; "
                        f"got {layers!r} (use [{layers!r}])")
    names = list(layers)
    if not names:
        raise ValueError("calibrate: layers names no layer; give at least one nn.Linear's "
                         "qualified name, or layers=None for all of them")
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"calibrate: layers names modules the model does not have: {unknown}")
    other = [f"{n} ({type(modules[n]).__name__})" for n in names
             if not isinstance(modules[n], nn.Linear)]
    if other:
        raise ValueError(f"calibrate: layers must name nn.Linear modules; these are not: {other}")
    return {n: modules[n] for n in names}


def calibrate(model: nn.Module, batches: Iterable, observer="absmax", *,
              layers: Optional[Iterable[str]] = None, progress: bool = True,
              forward: Optional[Callable] = None) -> Calibration:
    """Run ``model`` over ``batches`` and observe the input of every ``nn.Linear`` (or of those
    named in ``layers``); returns their clipping values.

    ``batches``: an iterable of batches (a list, a DataLoader), each on the model's device:
    ``model(*batch)`` for a tuple or list, ``model(**batch)`` for a mapping (a tokenizer's
    output), else ``model(batch)``; ``forward(model, batch)`` replaces that call.
    ``observer``: as ``make_observer`` (one fresh observer per layer). Runs in eval mode under
    ``torch.no_grad()``, and restores every module's training flag and removes its hooks
    afterwards, also when a batch raises. A tqdm progress bar when ``progress`` and stderr is
    a terminal.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"calibrate: model must be a torch.nn.Module; got {type(model).__name__}")
    if forward is not None and not callable(forward):
        raise TypeError(f"calibrate: forward must be callable(model, batch); "
                        f"got {type(forward).__name__}")
    try:
        iter(batches)
    except TypeError:
        raise TypeError(f"calibrate: batches must be an iterable of batches; "
                        f"got {type(batches).__name__}") from None
    description = repr(make_observer(observer))
    targets = _targets(model, layers)
    observers = {name: make_observer(observer) for name in targets}
    seen = dict.fromkeys(targets, 0)

    def hook_for(name):
        obs = observers[name]

        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("input")
            obs.observe(x)
            seen[name] += x.numel()

        return hook

    flags = [(m, m.training) for m in model.modules()]
    handles = []
    bar = None
    n = 0
    try:
        for name, mod in targets.items():
            handles.append(mod.register_forward_pre_hook(hook_for(name), with_kwargs=True))
        it = batches
        if progress:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # the bar is cosmetic: calibrate without it
                pass
            else:
                it = bar = tqdm(batches, desc="calibrate", unit="batch", disable=None)
        model.eval()
        with torch.no_grad():
            for batch in it:
                run_batch(model, batch, forward)
                n += 1
    finally:
        for h in handles:
            h.remove()
        for m, training in flags:
            m.training = training
        if bar is not None:
            bar.close()
    if n == 0:
        raise ValueError("calibrate: batches is empty; give at least one batch of "
                         "representative inputs")
    unreached = [name for name, count in seen.items() if count == 0]
    if unreached:
        raise ValueError(f"calibrate: these nn.Linear layers saw no input in {n} batch(es) "
                         f"(not called by the model's forward, or only with empty inputs): "
                         f"{unreached}; leave them out with layers=")
    clips = {}
    for name, obs in observers.items():
        try:
            clips[name] = float(obs.clip())
        except ValueError as e:
            raise ValueError(f"calibrate: layer {name!r}: {e}") from None
    return Calibration(clips=clips, observer=description, batches=n)
