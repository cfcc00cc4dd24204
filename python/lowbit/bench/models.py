"""End-to-end rows of `lowbit bench --model` (and of `lowbit analyze`'s GPU timing): a bf16
model against the same model with every nn.Linear replaced by a quantized layer of each
precision asked for (``--precision``: "fp8", ``lowbit.nn.Fp8Linear.from_linear``, and "int8",
``lowbit.nn.Int8Linear.from_linear``, both W8A8 with per-token dynamic activations; "int4",
W4A16 ``Int4Linear``, and "w8a16", weight-only ``Int8Linear``), eager, under torch.compile
(both models compiled) and replayed as a CUDA graph.

Eager models are host-bound and their timings noisy, so the two models are timed in
interleaved rounds (bf16, fp8, bf16, fp8, ...: clock and host drift hit both alike) and
the medians reported, with the range of the per-round speed-ups. Random weights; the
cosine of the quantized model's output with the bf16 model's says the swap computes the same
thing.

- ``bert-large``: a BERT-large-shaped encoder (hidden 1024, 24 layers, 16 heads, FFN 4096),
  batch 32 x 128 tokens: transformers' ``BertModel`` when transformers is installed, else the
  same shapes built from torch.nn modules (the row says which).
- ``llama-mlp``: a Llama-3-8B MLP block, gate and up fused in one 4096 -> 28672 linear,
  SiLU(gate) * up, down 14336 -> 4096, at M = 1, 16 and 2048.
- ``mixtral-moe``: a Mixtral-8x7B MoE block (transformers' ``MixtralSparseMoeBlock``: router,
  8 experts of 4096 -> 2 x 14336 -> 4096, top-2) at M = 1, 16 and 2048 tokens; the bf16 block
  runs transformers' default experts implementation (``grouped_mm`` where torch has it), the
  quantized one ``lowbit.nn.QuantizedExperts`` (one GEMM per projection and expert hit).
  Needs transformers.
"""
from __future__ import annotations

import contextlib
import copy
import statistics
from typing import Callable, ContextManager, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import timing
from .cases import error_text, raise_recompile_limit, rel_err

MODES = ("eager", "compile", "graph")
MEASURE_S = 0.15  # wall time of one measurement of one model in one round


class BertLayer(nn.Module):
    """A BERT encoder layer (post-norm) with the same Linears as transformers' BertLayer."""

    def __init__(self, hidden: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attn_out, self.ln1 = nn.Linear(hidden, hidden), nn.LayerNorm(hidden)
        self.up, self.down, self.ln2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden), nn.LayerNorm(hidden)

    def forward(self, x):
        b, t, h = x.shape
        split = lambda y: y.view(b, t, self.heads, h // self.heads).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        x = self.ln1(x + self.attn_out(a.transpose(1, 2).reshape(b, t, h)))
        return self.ln2(x + self.down(F.gelu(self.up(x))))


class BertEncoder(nn.Module):
    """Embeddings, layers and pooler of BERT's shapes: (last hidden state, pooled)."""

    def __init__(self, hidden=1024, layers=24, heads=16, ffn=4096, vocab=30522, positions=512):
        super().__init__()
        self.words, self.positions = nn.Embedding(vocab, hidden), nn.Embedding(positions, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(BertLayer(hidden, heads, ffn) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)

    def forward(self, ids):
        x = self.ln(self.words(ids) + self.positions.weight[: ids.shape[1]])
        for layer in self.layers:
            x = layer(x)
        return x, torch.tanh(self.pooler(x[:, 0]))


def bert_large(batch: int = 32, seq: int = 128):
    """(model, input tuple, what was built) on the GPU in bf16, random weights."""
    model, source = bert_large_model()
    ids = torch.randint(0, 30522, (batch, seq), device="cuda")
    return model, (ids,), source


def bert_large_model():
    """(BERT-large-shaped encoder on the GPU in bf16 with random weights, what was built)."""
    try:
        from transformers import BertConfig, BertModel

        cfg = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                         intermediate_size=4096)
        model, source = BertModel(cfg), "transformers BertModel"
    except ImportError:
        model, source = BertEncoder(), "torch.nn encoder of BERT-large's shapes (no transformers)"
    except Exception as e:  # noqa: BLE001 - installed but unusable with this torch
        model = BertEncoder()
        source = f"torch.nn encoder of BERT-large's shapes (transformers failed: {error_text(e)})"
    return model.to("cuda", torch.bfloat16).eval(), source


class LlamaMLP(nn.Module):
    def __init__(self, hidden: int = 4096, ffn: int = 14336):
        super().__init__()
        self.gate_up = nn.Linear(hidden, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


FUSED = "+fused"  # a precision's suffix: its model with lowbit.fuse_siblings applied
# what `lowbit bench --precision` takes
_BASE = ("fp8", "int8", "int4", "w8a16")
PRECISIONS = (*_BASE, *(p + FUSED for p in _BASE))
INT4_GROUP = 128  # the group size of the int4 rows (divides every K of both models)

# precision -> what its layers compute (for a table); ``quantized_layer`` builds them.
LAYERS = {
    "fp8": "Fp8Linear W8A8 (the device's fp8 e4m3, weight per channel, act. per token)",
    "int8": "Int8Linear W8A8 (weight per channel, act. per token)",
    "int4": f"Int4Linear W4A16 (group {INT4_GROUP}, symmetric)",
    "w8a16": "Int8Linear W8A16 (weight-only int8, per channel)",
}


def _check_precision(precision: str) -> None:
    if precision not in LAYERS:
        raise ValueError(f"precision: unknown {precision!r}; choose from {', '.join(LAYERS)}")


def quantize_model(model: nn.Module, precision: str) -> str:
    """Swap ``model``'s Linears for ``precision``'s layers in place (``PRECISIONS``: a
    ``LAYERS`` key, or one with ``FUSED`` appended: then its sibling layers that read one
    input, BERT's query / key / value, are fused as ``lowbit.fuse_siblings`` does); returns
    what was done, for the row's note."""
    base = precision.removesuffix(FUSED)
    n = to_quantized(model, base)
    note = f"{n} Linears swapped"
    if base != precision:
        from lowbit import fuse_siblings

        groups = fuse_siblings(model)
        fused = sum(v == "fused" for v in groups.values())
        note += f", {fused} sibling groups fused"
        kept = sorted({v for v in groups.values() if v != "fused"})
        note += f" ({'; '.join(kept)})" if kept else ""
    return note


def quantized_layer(linear: nn.Linear, precision: str) -> nn.Module:
    """The lowbit layer of ``precision`` (a key of ``LAYERS``) built from ``linear``."""
    from lowbit import native_fp8_format
    from lowbit.nn import Fp8Linear, Int4Linear, Int8Linear

    _check_precision(precision)
    if precision == "fp8":
        # The device's own FP8: e4m3fnuz on MI300, whose matrix cores do not take e4m3fn.
        return Fp8Linear.from_linear(linear, fmt=native_fp8_format(linear.weight.device))
    if precision == "int4":
        return Int4Linear.from_linear(linear, group_size=INT4_GROUP)
    return Int8Linear.from_linear(linear, mode="w8a16" if precision == "w8a16" else "w8a8")


def to_quantized(model: nn.Module, precision: str = "fp8") -> int:
    """Replace every nn.Linear of `model` (in place) by the layer of `precision` (``LAYERS``:
    fp8, int8, int4, w8a16), and every transformers experts module by a
    ``QuantizedExperts`` of those layers; returns how many Linears (an expert's projection
    counts as one)."""
    from lowbit.nn.experts import QuantizedExperts, experts_layout

    _check_precision(precision)
    n = 0
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            setattr(model, name, quantized_layer(child, precision))
            n += 1
        elif experts_layout(child) is not None:
            setattr(model, name, QuantizedExperts.from_experts(
                child, lambda lin: quantized_layer(lin, precision)))
            n += 2 * child.num_experts
        else:
            n += to_quantized(child, precision)
    return n


def _hidden(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def prepare_call(model, inputs, mode) -> Callable[[], object]:
    """``model(*inputs)`` as a callable of ``mode`` (a key of ``MODES``): eager, compiled
    (compiled and run once here, outside any timing) or a captured CUDA graph."""
    if mode == "compile":
        raise_recompile_limit()
        model = torch.compile(model, dynamic=False)
    call = lambda: model(*inputs)  # noqa: E731
    if mode == "graph":
        return timing.capture_graph(call)
    call()  # compiles here, outside the timing
    return call


def agreement(ref_model: nn.Module, model: nn.Module, inputs: tuple) -> tuple:
    """(cosine, relative error) of ``model``'s output against ``ref_model``'s on ``inputs``:
    random weights, so this says the swap computes the same function."""
    with torch.no_grad():
        ref, out = _hidden(ref_model(*inputs)).float(), _hidden(model(*inputs)).float()
        return F.cosine_similarity(ref.flatten(), out.flatten(), dim=0).item(), rel_err(out, ref)


def time_interleaved(fns, rounds: int, measure_s: Optional[float] = None,
                     around: Optional[Callable[[int], ContextManager]] = None,
                     run_in_s: float = 0.0) -> list:
    """Wall time per call (ms) of each of ``fns``, one list per fn: ``rounds`` interleaved
    rounds (fns[0], fns[1], ..., fns[0], ...), each measurement about ``measure_s`` (default
    ``MEASURE_S``) of back-to-back calls. ``around(i)``: a context manager entered around each
    measurement of fns[i] (a power reading), outside the calls but inside nothing else.
    ``run_in_s``: before each measurement, about that long of untimed calls of the same fn
    (a sensor that lags then reads this fn's work, not the previous one's)."""
    measure_s = MEASURE_S if measure_s is None else measure_s
    # One untimed call first: a first call's one-time work (lazy initialization, a cache
    # filled) counted in the calibration made n so small that a measurement lasted a fraction
    # of measure_s, too short for the power counter to advance.
    for f in fns:
        timing.wall_us(f, 1)
    per_call_us = [timing.wall_us(f, 3) for f in fns]
    n = [max(3, int(measure_s * 1e6 / us)) for us in per_call_us]
    run_in = [int(run_in_s * 1e6 / us) for us in per_call_us]
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, f in enumerate(fns):
            if run_in[i]:
                timing.wall_us(f, run_in[i])
            with around(i) if around is not None else contextlib.nullcontext():
                times[i].append(timing.wall_us(f, n[i]) / 1e3)
    return times


def compare(model_name: str, shape: str, bf16_model: nn.Module, inputs: tuple, samples: int,
            rounds: int, source: str = "", progress: Callable[[str], None] = lambda s: None,
            precision: str = "fp8", note_of: Optional[Callable[[nn.Module], str]] = None
            ) -> list[dict]:
    """One row per mode: bf16 and quantized (``q_*``) time per forward (median over
    interleaved rounds), samples per second, the speed-up and the output cosine.
    ``note_of(quantized model)``: more for the row's note."""
    q_model = copy.deepcopy(bf16_model)
    swapped = quantize_model(q_model, precision)
    if note_of is not None:
        swapped += "; " + note_of(q_model)
    rows = []
    cosine, err = agreement(bf16_model, q_model, inputs)
    with torch.no_grad():
        for mode in MODES:
            progress(f"{model_name} {shape} {precision} {mode}")
            row = dict(model=model_name, shape=shape, precision=precision, mode=mode,
                       cosine=cosine, err=err,
                       note=f"{source}; {swapped}".lstrip("; "))
            try:
                fns = [prepare_call(m, inputs, mode) for m in (bf16_model, q_model)]
                times = time_interleaved(fns, rounds)
                per_round = [b / f for b, f in zip(*times)]
                bms, fms = statistics.median(times[0]), statistics.median(times[1])
                row.update(bf16_ms=bms, q_ms=fms, bf16_per_s=samples / bms * 1e3,
                           q_per_s=samples / fms * 1e3, speedup=bms / fms,
                           speedup_min=min(per_round), speedup_max=max(per_round), rounds=rounds)
            except Exception as e:  # noqa: BLE001 - a mode that fails is a row, not an abort
                row["error"] = error_text(e)
            rows.append(row)
            torch.cuda.empty_cache()
    del q_model
    return rows


def run_bert(rounds: int, progress=lambda s: None, precisions=("fp8",)) -> list[dict]:
    model, inputs, source = bert_large()
    return [r for p in precisions
            for r in compare("bert-large", "32x128", model, inputs, 32, rounds, source, progress,
                             p)]


def run_llama_mlp(rounds: int, progress=lambda s: None, precisions=("fp8",),
                  ms=(1, 16, 2048)) -> list[dict]:
    model = LlamaMLP().to("cuda", torch.bfloat16).eval()
    rows = []
    for m in ms:
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        for p in precisions:
            rows += compare("llama-mlp", f"M={m}", model, (x,), m, rounds,
                            "gate+up fused 4096->28672, down 14336->4096; /s = rows", progress, p)
    return rows


def mixtral_moe_block():
    """A Mixtral-8x7B MoE block on the GPU in bf16 with random weights (std 0.02, as the
    model's initializer), transformers' default experts implementation for it."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(hidden_size=4096, intermediate_size=14336, num_local_experts=8,
                        num_experts_per_tok=2)
    try:  # what from_pretrained picks for Mixtral where transformers has it
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

        impl = "grouped_mm" if "grouped_mm" in ALL_EXPERTS_FUNCTIONS else "eager"
    except ImportError:
        impl = "eager"
    cfg._experts_implementation = impl
    torch.manual_seed(0)
    block = MixtralSparseMoeBlock(cfg)
    for p in block.parameters():
        nn.init.normal_(p, std=0.02)
    return block.to("cuda", torch.bfloat16).eval(), impl


def _experts_path(tokens: int, top_k: int) -> Callable[[nn.Module], str]:
    """note_of for a MoE block: the path its quantized experts take (QuantizedExperts.path)."""
    def note(q_block: nn.Module) -> str:
        path = getattr(getattr(q_block, "experts", None), "path", None)
        return "quantized experts: " + (path(tokens, top_k) if path else "not swapped")
    return note


def run_mixtral_moe(rounds: int, progress=lambda s: None, precisions=("fp8",),
                    ms=(1, 16, 2048)) -> list[dict]:
    try:
        model, impl = mixtral_moe_block()
    except Exception as e:  # noqa: BLE001 - no transformers, or one without Mixtral's block
        return [dict(model="mixtral-moe", shape="-", precision=p, mode=mode,
                     error=f"needs transformers' MixtralSparseMoeBlock: {error_text(e)}")
                for p in precisions for mode in MODES]
    rows = []
    for m in ms:
        x = torch.randn(1, m, 4096, device="cuda", dtype=torch.bfloat16)
        for p in precisions:
            rows += compare("mixtral-moe", f"M={m}", model, (x,), m, rounds,
                            f"8 experts 4096->2x14336->4096, top-2; bf16 experts: {impl}; "
                            "/s = tokens", progress, p, note_of=_experts_path(m, 2))
    return rows


# runner, progress steps per precision. The MLP first: a model whose graph capture fails (a
# host sync in its forward) runs last, so that a capture left half-done cannot spoil the
# other rows: the quantized MoE block reads its tokens per expert to the host every forward.
MODELS = {"llama-mlp": (run_llama_mlp, 9), "bert-large": (run_bert, 3),
          "mixtral-moe": (run_mixtral_moe, 9)}
