"""AWQ (activation-aware weight quantization) for W4A16 INT4.

Weight channels that meet large activations matter most to a layer's output. AWQ scales
them up before int4 rounding, ``W' = W * s`` with ``s_j = mean|x_j| ** alpha`` (normalized
so that ``max(s) * min(s) = 1``), and folds ``1 / s`` into the op that produced the
activations (``lowbit.fold``), so the full-precision function is unchanged. For each Linear
group (the layers that read one tensor) ``alpha`` is searched over a grid on [0, 1] for the
smallest output error of the int4 layers (``lowbit.int4_quantize`` and
``lowbit.w4a16_gemm``, the numbers ``Int4Linear`` computes) against full precision on the
calibration inputs. ``alpha = 0`` (``s = 1``) is round-to-nearest int4, and it is in the
grid: on its calibration data AWQ is never worse than plain int4. A group with no foldable
producer is wrapped in ``lowbit.nn.PreScale`` (its input multiplied by ``1 / s`` in the
layer, as AWQ's scaled activations do) unless ``prescale=False``; a group whose K the group
size does not divide is left as it is (the report says why).

Run it on the full-precision model, then ``lowbit.quantize_(model, "int4")`` with the same
``group_size`` and ``symmetric``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ._scaling import ScaledGroup, ScaleReport, best_factors, scale_groups
from .scale_layout import check_group_size

AwqReport = ScaleReport  # what awq returns


def int4_error(x: torch.Tensor, weights: Sequence[torch.Tensor], s: Optional[torch.Tensor],
               group_size: int, symmetric: bool) -> float:
    """Relative error, over the group's layers, of int4 weights (``W * s`` quantized group-
    wise, inputs ``x / s``) against full precision on rows ``x``."""
    from . import api
    from .nn.int4_linear import int4_quantize_backend

    x64 = x.double()
    xs = (x64 if s is None else x64 / s).float()
    num = den = 0.0
    for w in weights:
        ref = x64 @ w.double().T
        ws = (w.double() if s is None else w.double() * s).float()
        q = api.int4_quantize(ws, group_size=group_size, symmetric=symmetric,
                              backend=int4_quantize_backend(ws.device))
        # The reference w4a16_gemm's product (fp64 sums of the dequantized weight, rounded to
        # x's fp32), written with tensor ops so that it runs on the weight's device too.
        y = (xs.double() @ q.dequantize(torch.float64).T).float().double()
        num += (y - ref).pow(2).sum().item()
        den += ref.pow(2).sum().item()
    return (num / den) ** 0.5 if den > 0 else 0.0


def awq_factors(act_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|x| ** alpha over the channels that saw activity, normalized to
    max(s) * min(s) = 1 among them; 1 for all-zero channels."""
    a = act_mean.double()
    live = a > 0
    if not bool(live.any()):
        return torch.ones_like(a)
    s = a.clamp_min(1e-30).pow(alpha)
    s = s / (s[live].max() * s[live].min()).sqrt()
    return torch.where(live, s, torch.ones_like(s))


def awq(model: nn.Module, batches, *, group_size: int = 128, symmetric: bool = True,
        grid: int = 20, forward: Optional[Callable[[nn.Module, Any], Any]] = None,
        prescale: bool = True) -> ScaleReport:
    """Fold AWQ scales into ``model`` (in place) from its activations over ``batches`` (as
    ``calibrate`` takes them); ``grid``: alpha in {0, 1/grid, ..., 1}. See the module
    docstring."""
    check_group_size("awq", group_size)
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"awq: grid must be a positive int; got {grid!r}")

    def search(g, st, weights):
        k = st.absmean.numel()
        if k % group_size:
            why = f"K = {k} is not a multiple of group_size = {group_size}"
            return ScaledGroup(g.linears, g.producer, None, why=why), None
        return best_factors(
            g, ((i / grid, awq_factors(st.absmean, i / grid)) for i in range(1, grid + 1)),
            lambda s: int4_error(st.rows, weights, s, group_size, symmetric),
            "no alpha lowered the int4 error on the calibration rows (round-to-nearest kept)")

    report = ScaleReport("lowbit.awq", "int4 error", "not scaled", ".2f")
    return scale_groups(model, batches, report, "awq", search, forward, prescale)
