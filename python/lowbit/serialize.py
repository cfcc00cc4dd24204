"""Saving and loading quantized models: ``save_quantized(model, directory)`` writes the
model's state (``model.safetensors``, through ``safetensors.torch.save_model``, which keeps
tied weights once) and ``lowbit.json``: the format version and, for every lowbit module in
the model, its class and constructor configuration. ``load_quantized(model, directory)``
takes the same architecture in full precision (freshly built or loaded from its original
checkpoint), swaps in empty modules of the recorded classes and loads the state into them:
no re-quantization, so the outputs are the saved model's, bit for bit.
"""
from __future__ import annotations

import json
import os
from typing import Dict

import torch
from torch import nn

CONFIG_FILE = "lowbit.json"
STATE_FILE = "model.safetensors"
FORMAT = "lowbit-quantized"
VERSION = 1


def _lowbit_modules(model: nn.Module) -> Dict[str, nn.Module]:
    from . import nn as lnn

    classes = tuple(getattr(lnn, name) for name in lnn.__all__)
    return {name: m for name, m in model.named_modules() if isinstance(m, classes)}


def save_quantized(model: nn.Module, directory: str) -> None:
    """Write ``model`` (with lowbit modules in it, e.g. after ``lowbit.quantize_``) to
    ``directory`` (created if needed)."""
    from safetensors.torch import save_model

    if not isinstance(model, nn.Module):
        raise TypeError(f"save_quantized: model must be a torch.nn.Module; got "
                        f"{type(model).__name__}")
    layers = _lowbit_modules(model)
    if not layers:
        raise ValueError("save_quantized: the model holds no lowbit module (quantize it first "
                         "with lowbit.quantize_)")
    os.makedirs(directory, exist_ok=True)
    config = {"format": FORMAT, "version": VERSION,
              "layers": {name: {"class": type(m).__name__, "config": m.config()}
                         for name, m in layers.items()}}
    save_model(model, os.path.join(directory, STATE_FILE))
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=1)


def load_quantized(model: nn.Module, directory: str) -> nn.Module:
    """Turn ``model``, the full-precision architecture of a model saved by
    ``save_quantized``, into the saved quantized model, in place; returns it."""
    from safetensors.torch import load_model

    from . import nn as lnn
    from .nn.siblings import link as link_siblings

    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_quantized: {path} not found (not a directory written by "
                                "lowbit.save_quantized)")
    with open(path) as f:
        config = json.load(f)
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise ValueError(f"load_quantized: {path} is not a {FORMAT} file of version {VERSION}; "
                         f"got format={config.get('format')!r} version={config.get('version')!r}")
    devices = {}  # name -> device of each fused sibling layer's original Linear
    expert_devices = {}  # name -> device of each experts module's original weights
    for name, entry in config["layers"].items():  # parents before children (named_modules)
        parent_name, _, leaf = name.rpartition(".")
        old = _submodule(model, name)
        holder = None  # the fused sibling layer that owns this module (a group's weights)
        if old is None and leaf == "fused":
            holder = _submodule(model, parent_name)
            old = holder if isinstance(holder, lnn.SiblingLinear) else None
        if old is None:
            raise ValueError(f"load_quantized: the model has no module {name!r}, which the "
                             "saved model quantized (another architecture?)")
        cls = getattr(lnn, entry["class"], None)
        if cls is None:
            raise ValueError(f"load_quantized: unknown module class {entry['class']!r} for "
                             f"{name!r}")
        cfg = dict(entry["config"])
        shape = (cfg.get("in_features"), _out_features(cfg, cls is lnn.SiblingLinear))
        if isinstance(old, nn.Linear) and shape != (old.in_features, old.out_features):
            raise ValueError(f"load_quantized: {name!r} was saved as a {shape[0]} -> {shape[1]} "
                             f"layer; the model's is {old.in_features} -> "
                             f"{old.out_features} (another architecture?)")
        device = devices.get(parent_name) if holder is not None else \
            next((t.device for t in old.parameters()), None) or \
            _saved_above(expert_devices, name) or torch.device("cpu")
        if cls is lnn.QuantizedExperts:
            # Its experts' layers are placeholders until their own entries, which follow.
            expert_devices[name] = device
            model.set_submodule(name, cls.like(old, **cfg))
            continue
        if cls is lnn.SiblingLinear:
            devices[name] = device
            model.set_submodule(name, cls(**cfg))
            continue
        cfg["dtype"] = getattr(torch, cfg["dtype"])
        new = cls(**cfg, device=device)
        if holder is not None:
            holder.fused = new
        else:
            model.set_submodule(name, new)
    for name in devices:  # every group's members, linked to its owner
        link_siblings(_submodule(model, name.rpartition(".")[0]))
    _take_saved_dtypes(model, os.path.join(directory, STATE_FILE))
    missing, unexpected = load_model(model, os.path.join(directory, STATE_FILE), strict=False,
                                     device=str(next((t.device for t in model.parameters()),
                                                     torch.device("cpu"))))
    bad = [k for k in list(missing) + list(unexpected)]
    if bad:
        raise ValueError(f"load_quantized: the saved state and the model disagree on "
                         f"{len(bad)} tensor(s): {', '.join(bad[:8])}")
    return model


_FLOAT_CODES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16,
                "F16": torch.float16}


def _submodule(model: nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _saved_above(devices: dict, name: str):
    """The device recorded for the nearest module above ``name`` (an experts module: its
    experts' layers are placeholders that hold no tensor), or None."""
    while "." in name:
        name = name.rpartition(".")[0]
        if name in devices:
            return devices[name]
    return None


def _out_features(cfg: dict, sibling: bool):
    """A saved layer's out_features (a fused sibling's: its size in the group)."""
    if not sibling:
        return cfg.get("out_features")
    sizes, index = cfg.get("sizes") or [], cfg.get("index")
    return sizes[index] if isinstance(index, int) and 0 <= index < len(sizes) else None


def _take_saved_dtypes(model: nn.Module, path: str) -> None:
    """Give every floating-point parameter and buffer of ``model`` the float dtype its saved
    tensor has: loading copies into the model's tensors, so a bf16 model loaded into its
    freshly built fp32 architecture would otherwise come back in fp32 (its LayerNorms and
    embeddings beside the quantized modules' bf16), with other outputs or none."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        saved = {k: _FLOAT_CODES.get(f.get_slice(k).get_dtype()) for k in f.keys()}
    for prefix, mod in model.named_modules():
        for table in (mod._parameters, mod._buffers):
            for name, t in table.items():
                want = saved.get(f"{prefix}.{name}" if prefix else name)
                if t is not None and want is not None and t.is_floating_point() \
                        and t.dtype != want:
                    t.data = t.data.to(want)
