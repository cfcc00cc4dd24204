"""The rows of ``lowbit analyze``'s table: how each precision's model is built from the fp32
reference, and how its memory is counted.

Every row starts from a deep copy of the fp32 reference. ``bf16`` casts it with
``.to(torch.bfloat16)``; the quantized rows cast it to bf16 the same way and then swap its
``nn.Linear`` layers with ``lowbit.quantize_``, so their compute dtype is bf16 (activations,
bias and output of every layer; what stays in full precision runs in bf16 too). A layer the
scheme cannot take (int4: K not a multiple of the group size) or that no kernel of the
device runs is kept in bf16, and the row's note says which.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch
from torch import nn

from ..convert import module_bytes

PRECISIONS = ("fp32", "bf16", "fp8", "int8", "int4")

# What each row computes in, for the table's "compute" column and the JSON.
SCHEME_TEXT = {
    "fp32": "fp32",
    "bf16": "bf16",
    "fp8": "bf16, Linear W8A8 fp8 e4m3 (weight per channel, act. per token)",
    "int8": "bf16, Linear W8A8 int8 (weight per channel, act. per token)",
    "int4": "bf16, Linear W4A16 int4 (group {g}, symmetric)",
    "int8+sq": "bf16, SmoothQuant (alpha searched per group), then Linear W8A8 int8",
    "int4+awq": "bf16, AWQ (alpha searched per group), then Linear W4A16 int4 (group {g})",
}
SQ_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass
class Built:
    model: nn.Module
    dtype: torch.dtype  # the compute dtype: inputs that are floats are cast to it
    kept: List[Tuple[str, str]]  # (layer, why) of the Linear layers left unquantized
    scheme: str  # what it computes in, for the table


@dataclass(frozen=True)
class Variant:
    """One row: ``name`` in the table, ``precision`` for --precisions and the accuracy
    threshold (``lowbit.validate.MAX_ACCURACY_DROP``), ``build(reference, group_size,
    calibration)`` (calibration: (batches, forward(model, batch)), for the rows that use
    data)."""

    name: str
    precision: str
    build: Callable[[nn.Module, int, list], Built]


def _fp32(ref: nn.Module, group_size: int, calibration) -> Built:
    return Built(ref, torch.float32, [], SCHEME_TEXT["fp32"])


def _bf16(ref: nn.Module, group_size: int, calibration) -> Built:
    return Built(copy.deepcopy(ref).to(torch.bfloat16), torch.bfloat16, [], SCHEME_TEXT["bf16"])


def _quantized(scheme: str, prepare: str = "") -> Callable[[nn.Module, int, list], Built]:
    """A quantized row; ``prepare``: "sq" runs SmoothQuant, "awq" AWQ on the bf16 model over
    the calibration batches before ``quantize_``."""

    def build(ref: nn.Module, group_size: int, calibration) -> Built:
        from ..awq import awq
        from ..convert import quantize_
        from ..smoothquant import smooth_quant

        model = copy.deepcopy(ref).to(torch.bfloat16)
        batches, forward = calibration
        if prepare == "sq":
            smooth_quant(model, batches, alpha=SQ_ALPHAS, forward=forward)
        elif prepare == "awq":
            awq(model, batches, group_size=group_size, forward=forward)
        extra = {"group_size": group_size} if scheme == "int4" else {}
        summary = quantize_(model, scheme, **extra)
        text = SCHEME_TEXT[f"{scheme}+{prepare}" if prepare else scheme]
        return Built(model, torch.bfloat16, list(summary.skipped.items()),
                     text.format(g=group_size))

    return build


# The table's rows, in order; SmoothQuant and AWQ rows are scored against the thresholds of
# their precision.
VARIANTS: List[Variant] = [
    Variant("fp32", "fp32", _fp32),
    Variant("bf16", "bf16", _bf16),
    Variant("fp8", "fp8", _quantized("fp8")),
    Variant("int8", "int8", _quantized("int8")),
    Variant("int8 + SmoothQuant", "int8", _quantized("int8", "sq")),
    Variant("int4", "int4", _quantized("int4")),
    Variant("int4 + AWQ", "int4", _quantized("int4", "awq")),
]


def select(precisions) -> List[Variant]:
    """The rows of the given precisions, in table order; fp32 always (the reference)."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"--precisions: unknown {', '.join(map(repr, unknown))}; choose from "
                         f"{','.join(PRECISIONS)}")
    return [v for v in VARIANTS if v.precision == "fp32" or v.precision in precisions]


def linear_bytes(model: nn.Module) -> int:
    """Bytes of the Linear layers: nn.Linear and lowbit's quantized modules (weights, scales,
    bias)."""
    from ..nn import Fp8Linear, Int4Linear, Int8Linear

    kinds = (nn.Linear, Fp8Linear, Int8Linear, Int4Linear)
    return sum(module_bytes(m) for m in model.modules() if isinstance(m, kinds))
