"""How the model-level tools (calibrate, validate, fold, smooth_quant, awq, mixed_precision)
feed a batch to a model: ``forward(model, batch)`` when given; else ``model(*batch)`` for a
tuple or list, ``model(**batch)`` for a mapping (a tokenizer's output), ``model(batch)``
otherwise."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

from torch import nn


def run_batch(model: nn.Module, batch: Any, forward: Optional[Callable] = None) -> Any:
    if forward is not None:
        return forward(model, batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(batch)
