"""`lowbit analyze`'s GPU timing section: on the CPU, its rows, table and JSON are built from
tiny models with the timer and the board replaced by fakes (the numbers are fake, the
bookkeeping real), and the power reader's fallbacks are driven by fake NVML modules; on a
GPU (marked ``gpu``), the section runs at a tiny size and its rows are checked field by field
(no speed is asserted)."""
from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch
from torch import nn

from lowbit.analyze import core, gpu, power, report, run
from lowbit.bench import models, timing
from lowbit.nn import Fp8Linear, Int4Linear, Int8Linear

ALL = ["bf16", *gpu.PRECISIONS]


# ------------------------------------------------------------------------ fakes
class Board:
    """A fake GPU board: a clock and an energy counter that the fake timer advances."""

    def __init__(self):
        self.t, self.mj = 0.0, 0.0

    def run(self, seconds: float, watts: float):
        self.t += seconds
        self.mj += watts * seconds * 1e3

    def meter(self) -> power.PowerMeter:
        return power.PowerMeter("fake energy counter", energy_mj=lambda: self.mj,
                                clock=lambda: self.t, card="Fake H200", limit_w=700.0)


# A model's fake time per call (ms) and power (W), from the layers it holds.
FAKE = {"bf16": (2.0, 400.0), "fp8": (1.0, 300.0), "int8": (0.8, 250.0), "int4": (0.5, 200.0),
        "w8a16": (1.6, 350.0)}


def kind(model: nn.Module) -> str:
    for m in model.modules():
        if isinstance(m, Int4Linear):
            return "int4"
        if isinstance(m, Int8Linear):
            return "w8a16" if m.mode == "w8a16" else "int8"
        if isinstance(m, Fp8Linear):
            return "fp8"
    return "bf16"


@pytest.fixture
def board(monkeypatch):
    b = Board()
    b.calls = 0
    modes = []

    def prepare_call(model, inputs, mode):
        modes.append(mode)
        call = lambda: model(*inputs)  # noqa: E731
        call.kind = kind(model)
        return call

    def wall_us(fn, n):
        b.calls += 1
        fn()
        ms, watts = FAKE[fn.kind]
        b.run(ms * 1e-3 * n, watts)
        return ms * 1e3

    monkeypatch.setattr(models, "prepare_call", prepare_call)
    monkeypatch.setattr(timing, "wall_us", wall_us)
    monkeypatch.setattr(gpu, "IDLE_S", 0.0)
    b.modes = modes
    return b


def tiny_workloads(device="cpu", hidden=128):
    def llama():
        torch.manual_seed(0)
        return models.LlamaMLP(hidden, 2 * hidden).to(device, torch.bfloat16).eval(), "tiny mlp"

    def bert():
        torch.manual_seed(0)
        enc = models.BertEncoder(hidden=hidden, layers=1, heads=2, ffn=2 * hidden, vocab=100,
                                 positions=16)
        return enc.to(device, torch.bfloat16).eval(), "tiny encoder"

    ids = lambda: (torch.randint(0, 100, (2, 8), device=device),)  # noqa: E731
    return [gpu.Workload("llama-mlp", "tokens", ("graph",), llama,
                         [gpu.llama_shape(1, hidden, device), gpu.llama_shape(96, hidden, device)]),
            gpu.Workload("bert-large", "sequences", ("eager", "compile"), bert,
                         [gpu.Shape("2x8", 2, ids)], article=True)]


# The output cosine with bf16 each precision's error allows on random weights (int4: about
# 1/15 of a group's absmax per weight; fp8 e4m3: 3 mantissa bits; int8: 1/255).
MIN_COSINE = {"fp8": 0.995, "int8": 0.999, "w8a16": 0.999, "int4": 0.98}


def check_rows(rows, precisions=ALL):
    """What every timed row holds, whatever the machine."""
    groups = {}
    for r in rows:
        groups.setdefault((r["workload"], r["shape"], r["mode"]), []).append(r)
    for key, group in groups.items():
        assert [r["precision"] for r in group] == precisions, key
        bf16 = group[0]
        assert bf16["speedup"] == 1.0 and "cosine" not in bf16
        for r in group:
            assert r.get("error") is None, r
            assert r["ms"] > 0 and r["per_s"] == pytest.approx(r["samples"] / r["ms"] * 1e3)
            assert r["speedup"] == pytest.approx(bf16["ms"] / r["ms"])
            assert 0 < r["speedup_min"] <= r["speedup_max"] and r["rounds"] >= 1
            assert r["layers"] == ("nn.Linear bf16" if r["precision"] == "bf16"
                                   else models.LAYERS[r["precision"]])
            assert r["model_bytes"] >= r["linear_bytes"] > 0
            if r["precision"] != "bf16":
                assert r["cosine"] > MIN_COSINE[r["precision"]] and r["quantize_s"] >= 0
            assert ("article_per_s" in r) == (r["workload"] == "bert-large"
                                              and r["precision"] != "w8a16")
        b = {r["precision"]: r["linear_bytes"] for r in group}
        eight = [b[p] for p in ("fp8", "int8", "w8a16")]
        assert b["int4"] < min(eight) and max(eight) < b["bf16"]
    return groups


# ------------------------------------------------------------------- rows on the CPU
def test_rows_from_fake_timer_and_board(board):
    result = gpu.run(tiny_workloads(), rounds=3, measure_s=0.01, meter=board.meter(),
                     card="Fake H200 (141 GiB)")
    groups = check_rows(result["rows"])
    assert set(groups) == {("llama-mlp", "M=1 (decode)", "graph"),
                           ("llama-mlp", "M=96 (prefill)", "graph"),
                           ("bert-large", "2x8", "eager"), ("bert-large", "2x8", "compile")}
    assert set(board.modes) == {"graph", "eager", "compile"}
    # per shape and mode: a first call and a probe per precision, then a run-in before each
    # measurement
    assert board.calls == 4 * (2 * 5 + 3 * 5 * 2)
    for r in result["rows"]:
        ms, watts = FAKE[r["precision"]]
        assert r["ms"] == pytest.approx(ms) and r["speedup"] == pytest.approx(2.0 / ms)
        # joules / seconds of this precision's own runs, not its neighbours'
        assert r["watts"] == pytest.approx(watts)
        assert r["mj_per_sample"] == pytest.approx(watts * ms / r["samples"])
        if "article_per_s" in r:
            row = gpu.ARTICLE_ROW[r["precision"]]
            assert r["article_per_s"] == gpu.ARTICLE[row][0]
            assert r["article_speedup"] == pytest.approx(gpu.ARTICLE[row][0] / 2100)
    assert result["card"] == "Fake H200 (141 GiB)" and result["power_card"] == "Fake H200"
    assert result["precisions"] == ALL and result["rounds"] == 3
    assert result["power_source"] == "fake energy counter" and result["power_why"] is None


def test_a_precision_that_fails_is_a_row(board, monkeypatch):
    # int4 cannot take K = 64 at group 128: its rows say why, the others are timed
    result = gpu.run(tiny_workloads(hidden=64)[:1], rounds=2, measure_s=0.01,
                     meter=board.meter(), card="x")
    int4 = [r for r in result["rows"] if r["precision"] == "int4"]
    assert len(int4) == 2 and all("group_size" in r["error"] and "ms" not in r for r in int4)
    others = [r for r in result["rows"] if r["precision"] != "int4"]
    assert others and all(r.get("error") is None and r["ms"] > 0 for r in others)
    # a mode whose set-up fails for one precision: that row errs, the rest are timed
    real = models.prepare_call

    def fail_fp8(model, inputs, mode):
        if kind(model) == "fp8":
            raise RuntimeError("capture failed")
        return real(model, inputs, mode)

    monkeypatch.setattr(models, "prepare_call", fail_fp8)
    rows = gpu.run(tiny_workloads()[:1], precisions=["fp8", "int8"], rounds=2,
                   measure_s=0.01, meter=board.meter(), card="x")["rows"]
    assert [r["precision"] for r in rows[:3]] == ["bf16", "fp8", "int8"]
    assert rows[1]["error"] == "RuntimeError: capture failed" and "ms" not in rows[1]
    assert rows[2]["speedup"] == pytest.approx(2.0 / 0.8)


def test_bad_arguments(board):
    with pytest.raises(ValueError, match="precisions: unknown 'int3'"):
        gpu.run([], precisions=["int3"], meter=board.meter(), card="x")
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        gpu.run([], rounds=0, meter=board.meter(), card="x")


def test_table_and_json(board, tmp_path):
    result = gpu.run(tiny_workloads(), precisions=["int4", "w8a16"], rounds=2,
                     measure_s=0.01, meter=board.meter(), card="Fake H200 (141 GiB)")
    env = report.environment("cpu")
    text, md = report.render(env, [], ["--case", "digits"], 1.0, result)
    assert "## GPU timing on Fake H200 (141 GiB)" in text and "### llama-mlp: tiny mlp" in text
    bert_table = text.split("### bert-large")[1]
    llama_table = text.split("### llama-mlp")[1].split("### bert-large")[0]
    for col in ("ms", "tokens/s", "vs bf16", "Linear MiB", "avg W", "mJ/sample", "cosine"):
        assert col in llama_table
    assert "A100 /s" in bert_table and "A100" not in llama_table.split("\n", 2)[2]
    assert "2,100" in bert_table and "6,200" in bert_table and "2.95x" in bert_table
    assert "fake energy counter" in text and "FP32 row (1,200/s" in text
    assert f"int4: {models.LAYERS['int4']}" in text and "bf16: nn.Linear bf16" in text
    assert "| shape | mode | precision |" in md and "- avg W:" in md
    out = tmp_path / "out"
    report.write(str(out), env, [], ["--case", "digits"], 1.0, result)
    doc = json.loads((out / "analyze.json").read_text())
    assert doc["timing"]["rows"] == json.loads(json.dumps(result["rows"]))
    if importlib.util.find_spec("matplotlib"):  # the timing row alone makes a figure
        assert (out / "analyze.png").stat().st_size > 0
    assert doc["timing"]["article"]["card"] == "NVIDIA A100"


def test_power_not_available_prints_na(board, tmp_path):
    result = gpu.run(tiny_workloads()[:1], precisions=["int8"], rounds=1, measure_s=0.01,
                     meter=power.PowerMeter(why="pynvml is not importable"), card="x")
    assert all(r["watts"] is None and "mj_per_sample" not in r for r in result["rows"])
    # no power, no run-in: per shape, a first call and one probe per precision, and one
    # measurement per round and precision
    assert board.calls == 2 * (2 * 2 + 1 * 2)
    text, _ = report.render(report.environment("cpu"), [], [], 1.0, result)
    assert "avg W: n/a: pynvml is not importable" in text
    row = next(ln.split() for ln in text.splitlines() if ln.startswith("M=1 (decode)")
               and " int8 " in ln)
    assert row[row.index("0.10") + 2] == "n/a"  # Linear MiB, model MiB, avg W
    if importlib.util.find_spec("matplotlib"):
        path = tmp_path / "t.png"
        assert report.plot([], str(path), "t", result) == f"plot: {path}"
        assert path.stat().st_size > 0


# ------------------------------------------------------------------ the power reader
class FakeNVML:
    def __init__(self, energy=True, usage_mw=350_000, fail_init=False, step_mj=1500.0):
        self.energy, self.usage_mw, self.fail_init = energy, usage_mw, fail_init
        self.step_mj = step_mj
        self.counter = 0.0
        self.inits = 0

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")
        self.inits += 1

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise RuntimeError("not found")

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetName(self, h):
        return b"Fake H200"

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700_000

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy:
            raise RuntimeError("Not Supported")
        self.counter += self.step_mj  # mJ between two reads
        return self.counter

    def nvmlDeviceGetPowerUsage(self, h):
        if self.usage_mw is None:
            raise RuntimeError("Not Supported")
        return self.usage_mw


def test_energy_counter_first():
    ticks = iter([10.0, 13.0])
    m = power.open_meter(0, nvml=FakeNVML(), power_draw=None, clock=lambda: next(ticks))
    assert m.available and "energy counter" in m.source
    assert m.card == "Fake H200" and m.limit_w == 700.0
    with m.span() as r:
        pass
    assert r.joules == pytest.approx(1.5) and r.seconds == pytest.approx(3.0)
    assert r.watts == pytest.approx(0.5)


def test_a_counter_that_did_not_step_is_no_reading():
    # The counter advances in steps: a span inside one step reads 0 J, which is not 0 W.
    ticks = iter([10.0, 10.001])
    m = power.open_meter(0, nvml=FakeNVML(step_mj=0), power_draw=None, clock=lambda: next(ticks))
    with m.span() as r:
        pass
    assert r.joules == 0 and r.watts is None


def test_power_samples_without_energy_counter():
    m = power.open_meter(0, nvml=FakeNVML(energy=False), power_draw=None)
    assert m.available and "power samples" in m.source and "Not Supported" in m.source
    with m.span() as r:
        time.sleep(0.05)
    assert r.watts == pytest.approx(350.0) and r.seconds > 0


def test_torch_power_draw_without_nvml():
    m = power.open_meter(0, nvml=None, power_draw=lambda device: 250_000)
    assert m.available and m.source.startswith("torch.cuda.power_draw")
    assert m.idle_watts(0.02) == pytest.approx(250.0)


def test_na_with_every_reason():
    def broken(device):
        raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed")

    m = power.open_meter(0, nvml=FakeNVML(fail_init=True), power_draw=broken)
    assert not m.available and m.source is None and m.idle_watts(0.01) is None
    assert "NVML failed: RuntimeError: NVML Shared Library Not Found" in m.why
    assert "torch.cuda.power_draw failed: ModuleNotFoundError" in m.why
    with m.span() as r:
        pass
    assert r.watts is None
    m = power.open_meter(0, nvml=None, power_draw=None)
    assert "pip install nvidia-ml-py" in m.why and "no torch.cuda.power_draw" in m.why
    # a board with no power sensor at all
    m = power.open_meter(0, nvml=FakeNVML(energy=False, usage_mw=None), power_draw=None)
    assert not m.available and "NVML failed" in m.why


def test_a_failing_sample_gives_no_reading():
    def read():
        raise RuntimeError("GPU is lost")

    m = power.PowerMeter("samples", watts_now=read)
    with m.span() as r:
        time.sleep(0.02)
    assert r.watts is None


def test_readings_add_up():
    total = power.Reading(3.0, 1.0) + power.Reading(1.0, 1.0)
    assert total.watts == pytest.approx(2.0) and power.Reading().watts is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the default reader without a GPU")
def test_default_reader_without_gpu_says_why():
    try:
        import pynvml  # noqa: F401
    except ImportError:
        m = power.open_meter()
        assert not m.available and "nvidia-ml-py" in m.why
    else:
        pytest.skip("pynvml is installed here")


# ----------------------------------------------------------------- the command line
def test_timing_arguments(capsys):
    args = run.parse_args([])
    assert args.timing and args.timing_precisions == list(gpu.PRECISIONS)
    assert args.timing_rounds == gpu.ROUNDS
    assert (args.timing_skipped is None) == torch.cuda.is_available()
    args = run.parse_args(["--no-timing", "--timing-precisions", "w8a16, int4"])
    assert args.timing_skipped.startswith("--no-timing")
    assert args.timing_precisions == ["int4", "w8a16"]  # table order
    assert "--device cpu" in run.parse_args(["--device", "cpu"]).timing_skipped or \
        not torch.cuda.is_available()
    for argv, message in ((["--timing-precisions", "int3"], "unknown 'int3'"),
                          (["--timing-precisions", ","], "give at least one"),
                          (["--timing-rounds", "0"], "--timing-rounds must be at least 1")):
        with pytest.raises(SystemExit) as e:
            run.parse_args(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def _tiny_case():
    torch.manual_seed(0)
    x = torch.randn(8, 128)
    idx = torch.arange(8)
    score = lambda ref, out: {  # noqa: E731
        "accuracy": 100.0 * (out.argmax(1) == ref.argmax(1)).double().mean().item(),
        "cosine": None}
    return core.Case(name="digits", title="tiny", model=nn.Sequential(nn.Linear(128, 16)),
                     passes=[[(idx, x)], [(idx, x)]], n=8, unit="images",
                     forward=lambda m, b, dt: m(b.to(dt)).float(), score=score,
                     accuracy="agreement", source="random", group_size=128)


def test_cpu_run_skips_the_timing_and_says_why(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(run, "build_case", lambda name, args: _tiny_case())
    out = tmp_path / "out"
    assert run.main(["--case", "digits", "--device", "cpu", "--precisions", "bf16", "--out",
                     str(out)]) == 0
    text = capsys.readouterr().out
    assert "## GPU timing: skipped" in text
    doc = json.loads((out / "analyze.json").read_text())
    assert doc["timing"] == {"skipped": run.parse_args(["--device", "cpu"]).timing_skipped}
    if not torch.cuda.is_available():
        assert "no GPU:" in text and "not representative" in doc["timing"]["skipped"]


# ------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
def test_timing_section_on_cuda():
    workloads = tiny_workloads("cuda", hidden=256)
    workloads[1].modes = ("eager", "graph")
    result = gpu.run(workloads, rounds=2, measure_s=0.2)  # spans the counter's steps
    check_rows(result["rows"])
    assert torch.cuda.get_device_name() in result["card"]
    watts = [r["watts"] for r in result["rows"]]
    if result["power_source"]:
        bad = [(r["shape"], r["mode"], r["precision"], r["watts"], r.get("ms"))
               for r in result["rows"] if r["watts"] is None or not 0 < r["watts"] < 2000]
        assert not bad, bad
        assert result["idle_w"] is not None and result["idle_w"] > 0
    else:
        assert all(w is None for w in watts) and result["power_why"]
    text, _ = report.render(report.environment("cuda"), [], [], 1.0, result)
    assert "## GPU timing on" in text and "### bert-large" in text


@pytest.mark.gpu
def test_power_meter_on_cuda():
    m = power.open_meter(torch.cuda.current_device())
    if not m.available:
        assert m.why
        return
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    with m.span() as r:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            x @ x
        torch.cuda.synchronize()
    assert r.seconds > 0.25 and 0 < r.watts < 2000
