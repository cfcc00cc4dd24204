"""The buffers through which a kernel sums its split of K in one launch (the weight-only
GEMMs' decode kernels of both backends): counters, which the last of a tile's programs to
arrive takes and leaves zero again, and a workspace for the partial sums. They are kept per
device and stream, so a decode call makes no allocation and no memset of its own. This
module imports no triton: lowbit's CUDA backend keeps its buffers here too."""
from __future__ import annotations

from typing import Dict, Hashable, List, Optional, Tuple

import torch

# (device, stream, dtypes) -> [counters, workspace], reused by the split launches on that
# stream outside graph captures: launches on one stream run in order, and each leaves its
# counters zero. A launch being captured gets a pair of its own instead (its counters zeroed
# by a memset node the graph owns), so no graph shares counters with eager launches or with
# another graph, and no kept buffer is ever made inside a capture.
_KEPT: Dict[tuple, List[Optional[torch.Tensor]]] = {}

_MIN = 16  # elements: a stand-in's size, so a buffer is never empty


def split_scratch(device: torch.device, stream: Hashable, counters: int, workspace: int,
                  capturing: bool, dtypes: Tuple[torch.dtype, torch.dtype] = (torch.uint8,
                                                                              torch.uint8)):
    """(counters, workspace): tensors of ``dtypes`` of at least ``counters`` and
    ``workspace`` elements for a launch on ``stream`` of ``device`` (the stream's handle;
    None where tensors live on the host, as the interpreter's), the counters zero. A launch
    being ``captured`` gets a fresh pair. The caller holds them until the launch is
    enqueued; the launch must leave the counters zero."""
    c_dtype, w_dtype = dtypes
    counters, workspace = max(counters, _MIN), max(workspace, _MIN)
    if capturing:
        return (torch.zeros(counters, dtype=c_dtype, device=device),
                torch.empty(workspace, dtype=w_dtype, device=device))
    have = _KEPT.setdefault((device, stream, dtypes), [None, None])
    if have[0] is None or have[0].numel() < counters:
        have[0] = torch.zeros(counters, dtype=c_dtype, device=device)
    if have[1] is None or have[1].numel() < workspace:
        have[1] = torch.empty(workspace, dtype=w_dtype, device=device)
    return have[0], have[1]


def kept() -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The kept (counters, workspace) pairs (tests check that every launch left its
    counters zero)."""
    return [tuple(pair) for pair in _KEPT.values() if pair[0] is not None]
