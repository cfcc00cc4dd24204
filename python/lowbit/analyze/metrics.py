"""How close a quantized embedding model stays to the full-precision one, on the same
sentences: the agreement of nearest-neighbour retrieval (for each sentence, is its nearest
other sentence under the quantized embeddings the one the reference embeddings find? in
percent) and the mean cosine similarity of each sentence's two embeddings."""
from __future__ import annotations

import torch


def _unit(e: torch.Tensor) -> torch.Tensor:
    e = e.double()
    return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def nearest_neighbours(emb: torch.Tensor) -> torch.Tensor:
    """Index of each row's most cosine-similar other row (ties: the lowest index)."""
    if emb.dim() != 2 or emb.shape[0] < 2:
        raise ValueError(f"nearest_neighbours: emb must be [n >= 2, d]; got {tuple(emb.shape)}")
    u = _unit(emb)
    sim = u @ u.T
    sim.fill_diagonal_(-float("inf"))
    return sim.argmax(dim=1)


def retrieval_agreement(ref: torch.Tensor, emb: torch.Tensor) -> float:
    """Percent of rows whose nearest neighbour under ``emb`` is the one under ``ref``."""
    if ref.shape != emb.shape:
        raise ValueError(f"retrieval_agreement: shapes differ: {tuple(ref.shape)} and "
                         f"{tuple(emb.shape)}")
    return 100.0 * (nearest_neighbours(ref) == nearest_neighbours(emb)).double().mean().item()


def mean_cosine(ref: torch.Tensor, emb: torch.Tensor) -> float:
    """Mean over rows of the cosine similarity of ``emb[i]`` with ``ref[i]``."""
    if ref.shape != emb.shape:
        raise ValueError(f"mean_cosine: shapes differ: {tuple(ref.shape)} and "
                         f"{tuple(emb.shape)}")
    return (_unit(ref) * _unit(emb)).sum(-1).mean().item()
