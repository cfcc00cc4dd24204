"""`lowbit analyze` on a CPU: the digits case end to end on a small training budget, the
sentence-embedding pipeline on a tiny random BERT (``--model DIR``), the command line's
argument errors, and that ``import lowbit`` stays free of the ``analyze`` extra.

Without the extra, the digits tests skip (no scikit-learn) and the BERT tests skip (no
transformers); the argument and import tests run everywhere."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

from lowbit.analyze import core, data, report, run, variants

COLUMNS = ("precision", "Linear MiB", "vs fp32", "model MiB", "accuracy %", "drop (points)",
           "speed-up", "max drop", "verdict")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("LOWBIT_CACHE", str(d))
    return d


def _table_header(text: str, unit: str) -> str:
    return next(ln for ln in text.splitlines() if ln.startswith("precision") and unit in ln)


def _check_rows(rows, precisions):
    assert [r["variant"] for r in rows] == [v.name for v in variants.select(precisions)]
    fp32 = rows[0]
    assert fp32["verdict"] == "reference" and fp32["drop"] == 0.0 and fp32["speedup"] == 1.0
    for r in rows[1:]:
        assert r["drop"] == pytest.approx(fp32["accuracy"] - r["accuracy"])
        assert r["linear_bytes"] < fp32["linear_bytes"]
        assert r["verdict"] == ("PASS" if r["drop"] <= r["max_drop"] else "FAIL")
        assert r["per_s"] > 0 and len(r["per_s_passes"]) >= 1


# ----------------------------------------------------------------------------- digits
def test_digits_end_to_end(cache, tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from lowbit.analyze import digits

    monkeypatch.setattr(digits, "EPOCHS", 3)
    out = tmp_path / "out"
    assert run.main(["--case", "digits", "--out", str(out)]) == 0
    doc = json.loads((out / "analyze.json").read_text())
    (case,) = doc["cases"]
    assert case["case"] == "digits" and case["info"]["epochs"] == 3
    rows = case["rows"]
    _check_rows(rows, variants.PRECISIONS)
    assert 50.0 < rows[0]["accuracy"] <= 100.0  # 3 epochs already learn the digits
    # A quantized row's bytes: int4 < int8 = fp8 < bf16 (the MLP's Linear layers).
    b = {r["variant"]: r["linear_bytes"] for r in rows}
    assert b["int4"] < b["int8"] == b["fp8"] < b["bf16"] < b["fp32"]
    assert b["int8 + SmoothQuant"] == b["int8"] and b["int4 + AWQ"] == b["int4"]
    # On its calibration data AWQ and SmoothQuant are never worse; here, on the test split,
    # both stay within their thresholds like their plain rows.
    v = {r["variant"]: r for r in rows}
    assert v["int8 + SmoothQuant"]["verdict"] == "PASS" and v["int4 + AWQ"]["verdict"] == "PASS"
    md = (out / "analyze.md").read_text()
    header = _table_header(md.replace("| ", "").replace(" |", ""), "images/s")
    assert all(c in header for c in COLUMNS)
    if importlib.util.find_spec("matplotlib"):
        assert (out / "analyze.png").stat().st_size > 0
    # The weights were cached, and a second training with the same seed is the same model.
    (path,) = cache.glob("digits-mlp-*-e3-s0.safetensors")
    again = digits.train(*digits.split()[:2], epochs=3)
    cached = digits.trained(epochs=3, cache=cache)
    for (k, v), (k2, v2) in zip(again.state_dict().items(), cached.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_digits_table_printed(cache, capsys):
    pytest.importorskip("sklearn")
    from lowbit.analyze import digits

    case = digits.case(epochs=1, cache=cache)
    result = run.analyze(case, variants.select(["int8"]))
    text, md = report.render(report.environment("cpu"), [result], ["--case", "digits"], 1.0)
    header = _table_header(text, "images/s")
    assert all(c in header for c in COLUMNS)
    assert [ln.split()[0] for ln in text.splitlines()
            if ln.startswith(("fp32 ", "int8 "))] == ["fp32", "int8", "int8"]  # + SmoothQuant
    assert "lowbit analyze: CPU" in text and "torch " + torch.__version__ in text
    assert "not representative" in text
    assert "| precision |" in md
    with pytest.MonkeyPatch.context() as m:
        m.setitem(sys.modules, "matplotlib", None)  # as if not installed
        assert "matplotlib is not installed" in report.plot([result], "unused.png", "")


# ------------------------------------------------------------- sentence embeddings
@pytest.fixture
def tiny_bert(tmp_path):
    """A random 2-layer BERT (hidden 64, FFN 128) and a word-level vocabulary of the first
    40 sentences, saved as a Hugging Face directory."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path / "tiny-bert"
    d.mkdir()
    words = sorted({w for s in data.sentences(40) for w in re.findall(r"[a-z]+", s.lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizer(str(d / "vocab.txt")).save_pretrained(str(d))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=128,
                                  max_position_embeddings=128)
    transformers.BertModel(cfg).save_pretrained(str(d))
    return d


def test_sentence_pipeline_on_tiny_bert(tiny_bert):
    from lowbit.analyze import minilm

    case = minilm.case(str(tiny_bert), n_sentences=40, max_length=32, group_size=128)
    assert case.n == 40 and case.info["model"] == "tiny-bert"
    # Every sentence is in exactly one pass, and the passes hold similar numbers of them.
    seen = torch.cat([i for p in case.passes for i, _ in p])
    assert sorted(seen.tolist()) == list(range(40))
    sizes = [sum(len(i) for i, _ in p) for p in case.passes]
    assert max(sizes) - min(sizes) <= 1
    emb, _ = core.run_passes(case, case.model, torch.float32)
    assert torch.allclose(emb.norm(dim=1), torch.ones(40), atol=1e-5)
    result = run.analyze(case, variants.select(variants.PRECISIONS))
    rows = result["rows"]
    _check_rows(rows, variants.PRECISIONS)
    assert rows[0]["accuracy"] == 100.0 and rows[0]["cosine"] == pytest.approx(1.0)
    assert rows[1]["cosine"] > 0.999  # bf16
    # int4 at group 128 keeps the layers whose K (64) it does not divide, and says so.
    linears = {n: m for n, m in case.model.named_modules() if isinstance(m, nn.Linear)}
    int4 = next(r for r in rows if r["variant"] == "int4")
    kept = {k["layer"] for k in int4["kept"]}
    assert kept == {n for n, m in linears.items() if m.in_features % 128}
    assert kept and len(kept) < len(linears)
    assert all("group_size" in k["why"] for k in int4["kept"])
    assert "kept in bf16" in report.columns("sentences")[-1][1](int4)


def test_cli_model_dir(tiny_bert, cache, tmp_path, capsys):
    from lowbit import cli

    out = tmp_path / "out"
    rc = cli.main(["analyze", "--model", str(tiny_bert), "--case", "minilm", "--sentences",
                   "40", "--precisions", "int8", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "tiny-bert: sentence embeddings" in text and "sentences/s" in text
    doc = json.loads((out / "analyze.json").read_text())
    assert [r["variant"] for r in doc["cases"][0]["rows"]] == ["fp32", "int8",
                                                               "int8 + SmoothQuant"]
    assert doc["argv"][0] == "--model" and doc["meta"]["device"] == "cpu"


# ------------------------------------------------------------------------ arguments
@pytest.mark.parametrize("argv, message", [
    (["--precisions", "fp32,fp16"], "--precisions: unknown 'fp16'"),
    (["--precisions", ","], "--precisions: give at least one"),
    (["--sentences", "1"], "--sentences must be at least 2"),
    (["--sentences", "many"], "--sentences must be an integer"),
    (["--max-length", "0"], "--max-length must be at least 2"),
    (["--case", "mnist"], "invalid choice: 'mnist'"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--model", "/nonexistent/dir"], "not a Hugging Face model directory"),
    (["--model", ".", "--case", "digits"], "does not apply to --case digits"),
])
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        run.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_device_cuda_without_gpu(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--device", "cuda"])
    assert "torch sees no CUDA device" in capsys.readouterr().err


def test_defaults_and_cli_wiring(capsys):
    args = run.parse_args([])
    assert args.cases == ["minilm", "digits"] and args.sentences == 1000
    assert args.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert [v.name for v in args.variants] == [v.name for v in variants.VARIANTS]
    assert [v.name for v in run.parse_args(["--precisions", "int4"]).variants] == [
        "fp32", "int4", "int4 + AWQ"]
    from lowbit import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["analyze", "--help"])
    assert e.value.code == 0 and "--precisions" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["analyze", "--precisions", "int3"])
    assert e.value.code == 2


def test_missing_extra_is_named(cache, monkeypatch, tmp_path, capsys):
    with pytest.raises(ImportError, match=r"lowbit\[analyze\]"):
        core.need("lowbit_no_such_module", "a test")
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # as if not installed
    assert run.main(["--case", "digits", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'lowbit[analyze]'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "all_minilm_l6_v2", None)
    assert run.main(["--case", "minilm", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'lowbit[analyze]'" in err and "lowbit analyze: lowbit analyze" not in err


def test_cases_finished_before_a_missing_extra_are_written(monkeypatch, tmp_path, capsys):
    # The first case runs; the second needs a package that is missing: the first is still
    # written, and the run says what is missing and exits 2.
    first, second = run.CASES[:2]

    def build(name, args):
        if name == second:
            raise ImportError(f"lowbit analyze: the {second} case needs 'x', which is not "
                              "installed")
        return types.SimpleNamespace(name=name, passes=())

    written = []
    monkeypatch.setattr(run, "build_case", build)
    monkeypatch.setattr(run, "analyze", lambda case, variants, bar: {"case": case.name})
    monkeypatch.setattr("lowbit.analyze.report.write",
                        lambda out, env, done, *a: written.append(done) or "report")
    monkeypatch.setattr(run, "run_timing", lambda *a: pytest.fail("no timing after a failure"))
    assert run.main(["--case", "all", "--out", str(tmp_path / "out")]) == 2
    assert written == [[{"case": first}]]
    err = capsys.readouterr().err
    assert f"the {second} case needs 'x'" in err and "lowbit analyze: lowbit analyze" not in err


def test_import_lowbit_needs_no_extra():
    code = ("import sys, lowbit, lowbit.analyze, lowbit.analyze.run, lowbit.cli; "
            "heavy = [m for m in ('transformers', 'sklearn', 'matplotlib', 'all_minilm_l6_v2') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_lowbit_with_no_command_is_analyze(monkeypatch):
    import lowbit.analyze
    from lowbit import cli

    seen = []
    monkeypatch.setattr(lowbit.analyze, "main", lambda argv: seen.append(list(argv)) or 0)
    assert cli.main([]) == 0 and cli.main(["--case", "digits"]) == 0
    assert cli.main(["analyze", "--sentences", "5"]) == 0
    assert seen == [[], ["--case", "digits"], ["--sentences", "5"]]
