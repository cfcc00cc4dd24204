"""The board's average power during a timed run, as the article's table reports it.

Read through NVML (the module ``pynvml``, which the PyPI package ``nvidia-ml-py`` installs):

- the board's energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ since the driver
  loaded; Volta and later): joules spent over the span / its seconds is the exact average;
- else samples of ``nvmlDeviceGetPowerUsage`` (mW) taken every ``SAMPLE_S`` by a thread while
  the span runs. On A100/H100/H200 that reading is itself a 1 s moving average, so a sampled
  average lags the span: the source text says which of the two a number comes from;
- without ``pynvml``, samples of ``torch.cuda.power_draw`` where torch has it and it works
  (it wraps the same NVML call; on ROCm, amdsmi);
- else no power: the meter's ``why`` says what was missing, and the table prints "n/a".

Nothing here imports pynvml or touches the GPU until ``open_meter`` is called. The NVML
module and ``power_draw`` can be passed in, so the fallbacks are tested without a GPU.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

SAMPLE_S = 0.01  # the sampling thread's period
_DEFAULT = object()


@dataclass
class Reading:
    """Energy and duration of one span, or of several added up (``+``)."""

    joules: float = 0.0
    seconds: float = 0.0

    def __add__(self, other: "Reading") -> "Reading":
        return Reading(self.joules + other.joules, self.seconds + other.seconds)

    @property
    def watts(self) -> Optional[float]:
        # No energy over a span: the counter did not step in it (too short), not a board
        # drawing nothing; unknown rather than 0 W.
        return self.joules / self.seconds if self.seconds > 0 and self.joules > 0 else None


class PowerMeter:
    """``span()``: a context manager whose Reading is filled in when the span ends.

    ``source``: how power is read (None: it is not, and ``why`` says why); ``card``: the
    board's name as NVML gives it (else None); ``limit_w``: its enforced power limit."""

    def __init__(self, source: Optional[str] = None, why: Optional[str] = None,
                 energy_mj: Optional[Callable[[], float]] = None,
                 watts_now: Optional[Callable[[], float]] = None, card: Optional[str] = None,
                 limit_w: Optional[float] = None, clock: Callable[[], float] = time.perf_counter,
                 sample_s: float = SAMPLE_S):
        self.source, self.why, self.card, self.limit_w = source, why, card, limit_w
        self._energy_mj, self._watts_now = energy_mj, watts_now
        self._clock, self._sample_s = clock, sample_s

    @property
    def available(self) -> bool:
        return self.source is not None

    @contextlib.contextmanager
    def span(self) -> Iterator[Reading]:
        r = Reading()
        if self._energy_mj is not None:
            e0, t0 = self._energy_mj(), self._clock()
            yield r
            e1, t1 = self._energy_mj(), self._clock()
            r.joules, r.seconds = (e1 - e0) / 1e3, t1 - t0
        elif self._watts_now is not None:
            samples, stop = [], threading.Event()

            def sample():
                while True:
                    try:
                        samples.append(self._watts_now())
                    except Exception:  # noqa: BLE001 - a failed read: no power for the span
                        samples.clear()
                        return
                    if stop.wait(self._sample_s):
                        return

            t0 = self._clock()
            thread = threading.Thread(target=sample, daemon=True)
            thread.start()
            try:
                yield r
            finally:
                stop.set()
                thread.join()
            if samples:
                r.seconds = self._clock() - t0
                r.joules = sum(samples) / len(samples) * r.seconds
        else:
            yield r

    def idle_watts(self, seconds: float = 0.5) -> Optional[float]:
        """The average power over ``seconds`` of sleep (the board's draw with nothing run)."""
        if not self.available:
            return None
        with self.span() as r:
            time.sleep(seconds)
        return r.watts


def _import_nvml():
    import pynvml

    return pynvml


def _text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip() or 'no message'}".splitlines()[0][:160]


def _nvml_handle(nvml, device: int):
    """The NVML handle of torch's CUDA device ``device``: by UUID (right under
    CUDA_VISIBLE_DEVICES, where the indices differ), else by index."""
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(device).uuid)
        return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:  # noqa: BLE001 - an older torch or driver: the index below
        return nvml.nvmlDeviceGetHandleByIndex(device)


def _from_nvml(nvml, device: int, clock) -> PowerMeter:
    nvml.nvmlInit()
    handle = _nvml_handle(nvml, device)
    card = nvml.nvmlDeviceGetName(handle)
    card = card.decode() if isinstance(card, bytes) else str(card)
    try:
        limit_w = nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3
    except Exception:  # noqa: BLE001 - not every board reports it
        limit_w = None
    try:
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        energy = lambda: float(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))  # noqa: E731
        return PowerMeter("NVML energy counter (nvmlDeviceGetTotalEnergyConsumption)",
                          energy_mj=energy, card=card, limit_w=limit_w, clock=clock)
    except Exception as e:  # noqa: BLE001 - pre-Volta boards have no energy counter
        why = _text(e)
    nvml.nvmlDeviceGetPowerUsage(handle)  # raises where the board reports no power at all
    return PowerMeter(f"NVML power samples every {SAMPLE_S * 1e3:.0f} ms (nvmlDeviceGetPowerUsage, "
                      f"a moving average on recent boards; no energy counter: {why})",
                      watts_now=lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1e3, card=card,
                      limit_w=limit_w, clock=clock)


def open_meter(device: int = 0, nvml=_DEFAULT, power_draw=_DEFAULT,
               clock: Callable[[], float] = time.perf_counter) -> PowerMeter:
    """A PowerMeter for CUDA device ``device``, from the first source that works (module
    docstring); ``nvml``: the pynvml module (default: imported here; None: as if absent),
    ``power_draw``: ``torch.cuda.power_draw`` (default; None: as if torch had none);
    ``clock``: seconds, for the spans."""
    whys = []
    if nvml is _DEFAULT:
        try:
            nvml = _import_nvml()
        except ImportError as e:
            nvml = None
            whys.append(f"pynvml is not importable ({_text(e)}; pip install nvidia-ml-py)")
    elif nvml is None:
        whys.append("pynvml is not importable (pip install nvidia-ml-py)")
    if nvml is not None:
        try:
            return _from_nvml(nvml, device, clock)
        except Exception as e:  # noqa: BLE001 - no driver, no permission, no power sensor
            whys.append(f"NVML failed: {_text(e)}")
    if power_draw is _DEFAULT:
        import torch

        power_draw = getattr(torch.cuda, "power_draw", None)
    if power_draw is None:
        whys.append("this torch has no torch.cuda.power_draw")
    else:
        try:
            power_draw(device)
            return PowerMeter(f"torch.cuda.power_draw samples every {SAMPLE_S * 1e3:.0f} ms "
                              "(a moving average on recent boards)",
                              watts_now=lambda: power_draw(device) / 1e3, clock=clock)
        except Exception as e:  # noqa: BLE001 - it needs pynvml (or amdsmi) itself
            whys.append(f"torch.cuda.power_draw failed: {_text(e)}")
    return PowerMeter(why="; ".join(whys))
