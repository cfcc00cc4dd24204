"""The classification case: scikit-learn's digits (1,797 8x8 handwritten digits that ship in
the package) and a small MLP, 64-256-256-10 with ReLU, trained at first use and cached.

Reproducible: a fixed stratified split (``train_test_split(test_size=0.25, random_state=0)``:
1,347 training and 450 test images), pixels scaled to [0, 1], and training under a fixed
torch seed (Adam, lr 1e-3, batches of 32, ``epochs`` epochs) in a forked RNG, so the caller's
random state is untouched. The weights are cached as safetensors in the cache directory under
a name that holds every setting that changes them; a later run loads them. Accuracy is the
classification accuracy on the test split, in percent.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from .core import Case, cache_dir, need

HIDDEN = (256, 256)
EPOCHS = 30
SEED = 0
PASSES = 15  # a pass is one forward of ~1 ms in fp32: more of them steady the median
GROUP_SIZE = 64  # int4: divides K = 64 (the pixels) and 256


def split():
    """(x_train, y_train, x_test, y_test): float32 pixels in [0, 1] and int64 labels."""
    datasets = need("sklearn.datasets", "the digits case")
    selection = need("sklearn.model_selection", "the digits case")
    d = datasets.load_digits()
    xtr, xte, ytr, yte = selection.train_test_split(
        d.data / 16.0, d.target, test_size=0.25, random_state=0, stratify=d.target)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    i = lambda a: torch.tensor(a, dtype=torch.int64)  # noqa: E731
    return f(xtr), i(ytr), f(xte), i(yte)


def mlp(hidden: Sequence[int] = HIDDEN) -> nn.Sequential:
    sizes = [64, *hidden]
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], 10))


def train(x: torch.Tensor, y: torch.Tensor, hidden: Sequence[int] = HIDDEN,
          epochs: int = EPOCHS, seed: int = SEED) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = mlp(hidden)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(epochs):
            for idx in torch.randperm(len(x)).split(32):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
    return model.eval()


def trained(hidden: Sequence[int] = HIDDEN, epochs: int = EPOCHS, seed: int = SEED,
            cache: Optional[Path] = None) -> nn.Sequential:
    """The trained MLP, from the cache, else trained now and cached."""
    from safetensors.torch import load_file, save_file

    path = Path(cache or cache_dir()) / (
        f"digits-mlp-{'-'.join(map(str, hidden))}-e{epochs}-s{seed}.safetensors")
    model = mlp(hidden)
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    xtr, ytr, _, _ = split()
    model = train(xtr, ytr, hidden, epochs, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"settings": json.dumps(dict(hidden=list(hidden), epochs=epochs,
                                                    seed=seed))})
    tmp.replace(path)
    return model


def logits(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return model(x.to(dtype)).float()


def case(device="cpu", epochs: Optional[int] = None, seed: int = SEED,
         hidden: Sequence[int] = HIDDEN, group_size: int = GROUP_SIZE,
         cache: Optional[Path] = None) -> Case:
    """The digits case; ``epochs`` None: ``EPOCHS``."""
    device = torch.device(device)
    epochs = EPOCHS if epochs is None else epochs
    model = trained(hidden, epochs, seed, cache).to(device)
    xtr, _, xte, yte = split()
    idx = torch.arange(len(xte))
    passes = [[(idx, xte.to(device))] for _ in range(PASSES)]

    def score(ref: torch.Tensor, out: torch.Tensor) -> dict:
        return {"accuracy": 100.0 * (out.argmax(1) == yte).double().mean().item(),
                "cosine": None}

    arch = "-".join(map(str, (64, *hidden, 10)))
    return Case(
        name="digits", title=f"digits MLP {arch}: classification", model=model.eval(),
        passes=passes, n=len(xte), unit="images", forward=logits, score=score,
        accuracy="classification accuracy on the test split (%)",
        source=f"scikit-learn load_digits: {len(xtr)} training / {len(xte)} test images "
               f"(stratified split, random_state=0); MLP {arch} trained {epochs} epochs, seed "
               f"{seed}",
        group_size=group_size, calibration=[xtr[:256].to(device)],
        info=dict(model=f"mlp {arch}", epochs=epochs, seed=seed, train=len(xtr),
                  test=len(xte), passes=PASSES, batch=len(xte)))
