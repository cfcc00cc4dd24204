"""lowbit.analyze's building blocks: its sentences and its embedding metrics (CPU)."""
import pytest
import torch

from lowbit.analyze import data, metrics


def test_sentences_are_prose_and_distinct():
    s = data.sentences(1000)
    assert len(s) == 1000 and len(set(s)) == 1000
    assert all(40 <= len(x) <= 240 and x[0].isupper() and x[-1] in ".!?" for x in s)
    assert not any(">>>" in x or "=" in x for x in s)
    assert data.sentences(10) == s[:10]
    with pytest.raises(ValueError, match="prose sentences"):
        data.sentences(10**6)


def test_metrics_on_known_embeddings():
    torch.manual_seed(0)
    ref = torch.randn(50, 16)
    assert metrics.retrieval_agreement(ref, ref) == 100.0
    assert metrics.mean_cosine(ref, 3 * ref) == pytest.approx(1.0)
    assert metrics.mean_cosine(ref, -ref) == pytest.approx(-1.0)
    # Rows 0 and 1 are each other's neighbours; so are 2 and 3.
    e = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert metrics.nearest_neighbours(e).tolist() == [1, 0, 3, 2]
    moved = e.clone()
    moved[1] = torch.tensor([0.05, 1.0])  # row 1 now sits by 2 and 3
    agree = metrics.retrieval_agreement(e, moved)
    assert agree == pytest.approx(100.0 * sum(
        a == b for a, b in zip(metrics.nearest_neighbours(e).tolist(),
                               metrics.nearest_neighbours(moved).tolist())) / 4)
    assert agree < 100.0
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.mean_cosine(ref, ref[:3])
    with pytest.raises(ValueError, match="n >= 2"):
        metrics.nearest_neighbours(ref[:1])
