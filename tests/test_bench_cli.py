"""`lowbit bench` without a GPU: the clear refusal, the argument parsing, the table printer,
the JSON writer, the plot, and the bookkeeping of the op matrix and the model rows run on
CPU tensors with the GPU timers replaced (the numbers are fake; the plumbing is real)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from lowbit.bench import cases, matrix, models, plot, run, table, timing

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")


@no_gpu
def test_bench_without_gpu_exits_2_with_a_reason(capsys):
    assert run.main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert "lowbit bench: nothing measured" in err and "Traceback" not in err
    assert "CUDA" in err


@no_gpu
def test_cli_bench_subprocess_without_gpu(tmp_path):
    exe = shutil.which("lowbit")
    cmd = [exe, "bench"] if exe else [sys.executable, "-m", "lowbit", "bench"]
    r = subprocess.run(cmd + ["--out", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert "nothing measured" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_cli_bench_help():
    r = subprocess.run([sys.executable, "-m", "lowbit", "bench", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--shapes" in r.stdout and "fp8_scaled_mm" in r.stdout


def test_parse_shapes():
    assert matrix.parse_shapes("1x4096x4096, 16384X8192") == [(1, 4096, 4096), (16384, 8192)]
    for bad in ("", "1x2x3x4", "0x4096x4096", "ax4096", "4096"):
        with pytest.raises(ValueError):
            matrix.parse_shapes(bad)


def test_bad_arguments_are_usage_errors(capsys):
    for argv in (["--op", "nope"], ["--op", "fp8_scaled_mm:nope"], ["--shapes", "1x2x3x4"],
                 ["--model", "gpt"]):
        with pytest.raises(SystemExit) as e:
            run.parse_args(argv)
        assert e.value.code == 2
    assert "unknown model 'gpt'" in capsys.readouterr().err


def test_op_selection():
    assert run.select_ops(None, False) == [(o.op, v) for o in cases.OPS.values() for v in o.default]
    assert run.select_ops(None, True) == []
    assert run.select_ops("fp8_scaled_mm:block,quantize_fp8,fp8_scaled_mm:block", False) == [
        ("fp8_scaled_mm", "block"), ("quantize_fp8", "token"), ("quantize_fp8", "tensor")]
    assert run.parse_args(["--model", "all"]).models == list(models.MODELS)
    # --op given twice adds up (the last one does not win).
    assert run.parse_args(["--op", "fp8_scaled_mm:block", "--op", "quantize_fp8"]).jobs == [
        ("fp8_scaled_mm", "block"), ("quantize_fp8", "token"), ("quantize_fp8", "tensor")]


def test_matrix_shapes():
    args = run.parse_args([])
    gemm = run.shapes_for("gemm", args)
    assert len(gemm) == len(matrix.NK) * len(matrix.MS) + 1 and gemm[-1] == matrix.CUBE
    casts = run.shapes_for("cast", args)
    assert (1, 4096) in casts and (16384, 16384) in casts and len(set(casts)) == len(casts)
    args = run.parse_args(["--shapes", "16x4096x14336,8x256"])
    assert run.shapes_for("gemm", args) == [(16, 4096, 14336)]
    assert run.shapes_for("cast", args) == [(16, 14336), (8, 256)]
    assert run.shapes_for("gemm", run.parse_args(["--quick"])) == matrix.gemm_shapes(quick=True)


def _rows():
    base = dict(op="fp8_scaled_mm", variant="row", role="lowbit", impl="lowbit (cuda/k)")
    return [dict(base, shape=f"{m}x4096x4096", m=m, line="4096x4096", median_us=10.0 + m,
                 tflops=1.5, frac=0.5, bound="mem", vs_anchor=1.0 + m / 100, vs_bf16=0.9,
                 err=1e-3) for m in (16, 1)] + [
        dict(base, op="quantize_fp8", variant="token", shape="1x4096", m=1, line="4096",
             median_us=3.0, tbps=0.01, vs_anchor=1.2, error="RuntimeError: x | y")]


def test_table_text_and_markdown():
    rows = _rows()
    text = table.format_table(rows, table.OP_COLUMNS)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["op", "shape", "impl"]
    assert "vs bf16" in lines[0] and "weight TB/s" not in lines[0]  # empty column left out
    assert "1.5 TFLOP/s" in text and "0.01 TB/s" in text and "1.16x" in text
    assert "err 1.0e-03" in text and "50% mem" in text
    md = table.format_table(rows, table.OP_COLUMNS, markdown=True)
    assert md.splitlines()[1].startswith("|---") and "x / y" in md  # '|' escaped in cells
    assert all(ln.count("|") == md.splitlines()[0].count("|") for ln in md.splitlines())


def test_table_units():
    assert table.us(None) == "" and table.us(3.14159) == "3.14" and table.us(123.45) == "123.5"
    assert table.us(12345.6) == "12346" and table.ratio(0.05) == "0.05x"


def test_json_writer(tmp_path):
    p = tmp_path / "b.json"
    table.write_json(str(p), dict(rows=_rows(), nan=float("nan"), inf=float("inf"), t=(1, 2)))
    data = json.loads(p.read_text())
    assert data["nan"] is None and data["inf"] is None and data["t"] == [1, 2]
    assert data["rows"][0]["vs_anchor"] == pytest.approx(1.16)


def test_plot(tmp_path):
    assert plot.series(_rows())[("fp8_scaled_mm", "row")]["4096x4096"][0][0] == 1  # sorted by M
    path = str(tmp_path / "p.png")
    msg = plot.plot_speedup(_rows(), path, "title")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert msg == "no plot: matplotlib not installed"
        return
    assert msg == f"plot: {path}" and os.path.getsize(path) > 1000
    assert plot.plot_speedup([], path).startswith("no plot:")


def test_plot_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    assert plot.plot_speedup(_rows(), str(tmp_path / "p.png")) == "no plot: matplotlib not installed"


# ------------------------------------------------- the GPU paths' bookkeeping, on the CPU
@pytest.fixture
def cpu_timers(monkeypatch):
    """Cases on the CPU; each timer returns a fake time (GPU-free), compile runs eager."""
    monkeypatch.setattr(cases, "DEVICE", "cpu")
    monkeypatch.setattr(cases, "compiled", lambda f: f)
    monkeypatch.setattr(timing, "synchronize", lambda: None)
    stats = dict(median_us=10.0, p20_us=9.0, p80_us=11.0, n=5)
    monkeypatch.setattr(timing, "bench", lambda fn, **kw: (fn(), dict(stats))[1])
    monkeypatch.setattr(timing, "eager_host_us", lambda fn, **kw: (fn(), 8.0)[1])
    monkeypatch.setattr(timing, "wall_us", lambda fn, n: (fn(), 1000.0)[1])
    monkeypatch.setattr(timing, "require_cuda", lambda: None)
    monkeypatch.setattr(timing, "capture_graph", lambda fn, **kw: fn)
    monkeypatch.setattr(cases, "gpu_kernels", lambda op: [])
    monkeypatch.setattr(matrix, "HOST_GEMM", (1, 256, 256))


def test_host_ratio_is_the_median_of_interleaved_rounds(monkeypatch):
    # Each round times the reference, then the call; one slow round moves neither median.
    monkeypatch.setattr(timing, "require_cuda", lambda: None)
    calls = []
    times = {"ref": iter([10.0, 20.0, 10.0, 10.0, 12.0]), "fn": iter([15.0, 30.0, 15.0, 100.0, 18.0])}
    monkeypatch.setattr(timing, "wall_us", lambda f, n: (calls.append(f.__name__),
                                                        next(times[f.__name__]))[1])

    def ref():
        pass

    def fn():
        pass

    f_us, r_us, ratio = timing.paired_host_us(fn, ref, rounds=5, warmup=0)
    assert calls == ["ref", "fn"] * 5
    assert (f_us, r_us, ratio) == (18.0, 10.0, 1.5)


def test_op_rows_and_outputs_on_cpu(cpu_timers, tmp_path, capsys):
    args = run.parse_args(["--op", "all", "--shapes", "2x256x256", "--out", str(tmp_path)])
    bench = run.Bench(args, dict(copy_gbps=1000.0, bf16_tflops=100.0, bf16_shape="8192^3",
                                 peak_tflops={"bf16": 100.0, "fp8": 200.0}))
    bench.run_ops(run._NoBar())
    ops = {(r["op"], r["variant"]) for r in bench.rows}
    assert ops == {(o.op, v) for o in cases.OPS.values() for v in o.default}
    lowbit_rows = [r for r in bench.rows if r["role"] == "lowbit"]
    assert len(lowbit_rows) == sum(len(o.default) for o in cases.OPS.values())
    assert all("reference/numpy_reference" in r["impl"] for r in lowbit_rows)
    # The bf16 anchor is timed once per GEMM op and shape, whatever the variants.
    assert sum(r["impl"] == "F.linear bf16" for r in bench.rows) == sum(
        o.kind == "gemm" for o in cases.OPS.values())
    for r in lowbit_rows:
        assert r.get("error") is None, r
        if r["op"] == "w4a16_gemm":  # tinygemm quantizes its own way: timed, not compared
            assert r["err"] is None and r["vs_bf16"] == pytest.approx(1.0), r
            continue
        assert r["vs_anchor"] == pytest.approx(1.0)
        assert r["err"] is not None and r["err"] < 0.1, r
    gemm = next(r for r in lowbit_rows if r["op"] == "fp8_scaled_mm")
    assert gemm["tflops"] == pytest.approx(2 * 2 * 256 * 256 / 1e-5 / 1e12)
    assert gemm["vs_bf16"] == pytest.approx(1.0) and gemm["line"] == "N x K 256x256"
    assert gemm["weight_tbps"] == pytest.approx(256 * 256 / 1e-5 / 1e12)
    lin = next(r for r in bench.rows if r["impl"] == "F.linear bf16")  # its own bytes, peak
    assert lin["weight_tbps"] == pytest.approx(2 * gemm["weight_tbps"]) and lin["ceiling"] == "bf16"
    bench.run_host(["fp8_scaled_mm", "quantize_fp8", "int8_linear", "w4a16_gemm"], run._NoBar())
    impls = [r["impl"] for r in bench.host]
    # The registered ops' rows name the implementation that serves them.
    from lowbit import _native
    served = " [C++]" if _native.loaded() else ""
    assert impls[0] == "torch.add_" and f"torch.ops.lowbit.fp8_scaled_mm{served}" in impls
    assert f"torch.ops.lowbit.int8_linear{served}" in impls
    # Each quantized module whose op ran, beside nn.Linear, eager and compiled.
    layers = ["nn.Linear bf16", "lowbit.nn.Fp8Linear", "lowbit.nn.Int8Linear",
              "lowbit.nn.Int4Linear"]
    assert impls[-8:] == [f for name in layers for f in (name, f"torch.compile({name})")]
    assert all(r.get("vs_add") == pytest.approx(1.0) for r in bench.host if not r.get("error"))
    env = dict(card="CPU", capability="0.0", sms=0, l2_mb=0, memory_gib=0, torch=torch.__version__,
               cuda=None, triton=None, python="3", lowbit="0", date="today", lowbit_build={},
               native_ops="off (LOWBIT_NATIVE_OPS=0)")
    text = run.write_outputs(str(tmp_path), bench, env, ["--quick"], 1.0, True)
    assert "## Ops" in text and "## Host time" in text and "torch.add_" in text
    assert "registered ops in C++ (lowbit._torch_ops): off (LOWBIT_NATIVE_OPS=0)" in text
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["complete"] and len(data["ops"]) == len(bench.rows) and data["host"]
    assert "| op |" in (tmp_path / "bench.md").read_text()


def test_model_rows_on_cpu(cpu_timers, monkeypatch):
    monkeypatch.setattr(models, "MODES", ("eager", "graph"))

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = models.LlamaMLP(hidden=128, ffn=256).to(torch.bfloat16)

        def forward(self, x):
            return self.mlp(x)

    x = torch.randn(4, 128, dtype=torch.bfloat16)
    for precision in models.PRECISIONS:
        rows = models.compare("tiny", "M=4", Tiny(), (x,), 4, rounds=3, source="test",
                              precision=precision)
        assert [r["mode"] for r in rows] == ["eager", "graph"]
        for r in rows:
            assert r.get("error") is None and r["speedup"] == pytest.approx(1.0)
            assert r["cosine"] > 0.99 and "2 Linears swapped" in r["note"]
            assert r["bf16_per_s"] == pytest.approx(4 / 1.0 * 1e3)
            assert r["precision"] == precision and r["q_ms"] == pytest.approx(1.0)
        text = table.format_table(rows, table.MODEL_COLUMNS)
        assert "1.00x (1.00-1.00)" in text and f" {precision} " in text
    # the swap puts the precision's layer in every Linear's place
    m = Tiny()
    assert models.to_quantized(m, "int8") == 2
    assert all(type(c).__name__ == "Int8Linear" for c in m.mlp.children())
    with pytest.raises(ValueError, match="--precision: unknown precision 'nf4'"):
        run.parse_args(["--model", "all", "--precision", "fp8,nf4"])
    assert run.parse_args(["--model", "all", "--precision", "fp8,int4,w8a16"]).precisions == (
        "fp8", "int4", "w8a16")


def test_bert_shaped_encoder_without_transformers():
    enc = models.BertEncoder(hidden=64, layers=2, heads=4, ffn=128, vocab=100, positions=16)
    assert sum(isinstance(m, nn.Linear) for m in enc.modules()) == 2 * 6 + 1
    out = models._hidden(enc(torch.randint(0, 100, (2, 8))))
    assert out.shape == (2, 8, 64)


# ------------------------------------------------------------------------------ lowbit info
def test_info_groups_kernels_by_status():
    import io

    import lowbit
    from lowbit._backend import kernels
    from lowbit.cli import info

    out = io.StringIO()
    assert info(out) == 0
    text = out.getvalue()
    for op in lowbit.ops.OPS:
        for k in kernels(op):
            assert f"{k.backend}/{k.name}" in text, (op, k.name)
    body = text.split("why unavailable:")
    reasons = [ln.split("] ", 1)[1] for ln in body[1].splitlines() if ln.strip().startswith("[")] \
        if len(body) > 1 else []
    assert len(reasons) == len(set(reasons))
    for why in reasons:  # each reason written once, the op table points to it by number
        assert text.count(why) == 1
    if not torch.cuda.is_available():
        assert "torch sees no CUDA device" not in body[0]


@pytest.fixture
def fake_gpu(monkeypatch):
    """main() sees a GPU machine: its facts (card, ceilings) faked, no kernel rows."""
    env = dict(card="FakeGPU", capability="9.0", sms=1, l2_mb=1, memory_gib=1, torch="t",
               cuda="c", triton=None, python="3", lowbit="0", date="today", lowbit_build={})
    monkeypatch.setattr(timing, "no_gpu_reason", lambda: None)
    monkeypatch.setattr(run, "environment", lambda: env)
    monkeypatch.setattr(run, "measure_ceilings", lambda: dict(
        copy_gbps=1000.0, bf16_tflops=100.0, bf16_shape="8192^3",
        peak_tflops={"bf16": 100.0, "fp8": 200.0}))
    monkeypatch.setattr(cases, "runnable_kernels", lambda *a, **k: iter(()))


def test_main_end_to_end_on_cpu(cpu_timers, fake_gpu, monkeypatch, tmp_path, capsys):
    """main() as on a GPU machine, with the GPU facts faked: ceilings, ops, host, a model."""
    monkeypatch.setattr(cases, "gpu_kernels", lambda op: [] if op == "dequantize_fp8" else ["k"])

    def tiny_model(rounds, progress, precisions):
        progress("tiny")
        return [dict(model="tiny", shape="M=1", precision=p, mode="eager", bf16_ms=1.0, q_ms=0.5,
                     speedup=2.0) for p in precisions]

    monkeypatch.setitem(models.MODELS, "tiny", (tiny_model, 1))
    out = tmp_path / "o"
    rc = run.main(["--op", "all", "--shapes", "2x256x256", "--model", "tiny", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "## Ops" in text and "## Host time" in text and "## Models" in text and "2.00x" in text
    assert "dequantize_fp8: skipped, no GPU kernel" in text
    data = json.loads((out / "bench.json").read_text())
    assert data["complete"] and data["models"][0]["model"] == "tiny"
    assert {r["op"] for r in data["ops"]} == set(cases.OPS) - {"dequantize_fp8"}
    assert (out / "bench.md").exists()


def test_flush_mode_reaches_the_timer_and_the_report(cpu_timers, fake_gpu, monkeypatch, tmp_path,
                                                     capsys):
    """--flush picks the L2 flush every timed rep uses (timing.FLUSH_MODE) and is written
    into the report's method line and the JSON's meta; anything but write / read is a usage
    error."""
    assert run.parse_args([]).flush == "write"
    with pytest.raises(SystemExit) as e:
        run.parse_args(["--flush", "none"])
    assert e.value.code == 2
    monkeypatch.setattr(timing, "FLUSH_MODE", timing.FLUSH_MODE)  # restored after the test
    monkeypatch.setattr(cases, "gpu_kernels", lambda op: ["k"])
    seen = []
    monkeypatch.setattr(timing, "bench", lambda fn, **kw: (
        fn(), seen.append(timing.FLUSH_MODE), dict(median_us=10.0, p20_us=9.0, p80_us=11.0, n=5))[2])
    out = tmp_path / "o"
    assert run.main(["--op", "fp8_scaled_mm", "--shapes", "2x256x256", "--no-host",
                     "--flush", "read", "--out", str(out)]) == 0
    assert seen and set(seen) == {"read"}
    assert "L2 flushed between reps (a 256 MB read)" in capsys.readouterr().out
    assert json.loads((out / "bench.json").read_text())["meta"]["l2_flush"] == "read"
    assert "(a 256 MB read)" in (out / "bench.md").read_text()


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_int4_torch_anchor_is_the_same_function(symmetric):
    """The int4_quantize row's torch anchor computes lowbit's codes and scales (on ordinary
    weights: it leaves NaN and Inf to the SPEC's kernels), so its error column means something."""
    import lowbit

    w = (torch.randn(24, 512, generator=torch.Generator().manual_seed(3)) * 0.02).bfloat16()
    q, s = cases.int4_quant_torch(w, 128, symmetric)
    want = lowbit.int4_quantize(w, group_size=128, symmetric=symmetric, backend="reference")
    assert torch.equal(q, want.qweight) and torch.equal(s, want.scales)


def test_weight_shapes():
    assert matrix.weight_shapes([(1, 4096, 4096), (16, 4096, 4096), (2, 14336, 4096),
                                 (512, 256)]) == [(4096, 4096), (14336, 4096), (512, 256)]


def test_fused_layer_rows_time_three_ways(monkeypatch):
    """--kernels on a layer op whose forward the fused kernel would run: one row with it
    (LOWBIT_FUSED_QUANT=1), one with the two kernels (=0) and one with the two kernels and
    the GEMM's early weight loads (LOWBIT_EARLY_WEIGHTS=1), each under its own switches, the
    environment restored after."""
    import os

    from lowbit.backends.cuda.linear import FUSED_ENV, WEIGHT_EARLY_ENV, fused_enabled
    from lowbit.bench import run

    monkeypatch.delenv(FUSED_ENV, raising=False)

    class Case:
        def __init__(self, op):
            self.op = op

        def chosen(self):
            return "cuda/sm90_fp8_linear_swapab" if fused_enabled() else "cuda/x"

    rows = run._fused_layer_rows(Case("fp8_linear"))
    assert [env for _, env in rows] == [{FUSED_ENV: "1"},
                                        {FUSED_ENV: "0", WEIGHT_EARLY_ENV: "0"},
                                        {FUSED_ENV: "0", WEIGHT_EARLY_ENV: "1"}]
    assert "sm90_fp8_linear_swapab" in rows[0][0] and FUSED_ENV not in os.environ
    assert run._fused_layer_rows(Case("fp8_scaled_mm")) == []
    with run._environment({FUSED_ENV: "0"}):
        assert run._fused_layer_rows(Case("fp8_linear")) != []  # asks with the switch on
        assert os.environ[FUSED_ENV] == "0"
    assert FUSED_ENV not in os.environ


def test_kernel_rows_time_the_prepared_function():
    """--kernels times each kernel as an op call that chose it runs it: its signature
    prepared once (a Triton launcher bound once), then only the prepared function; a kernel
    without ``prepare`` runs its ``fn``."""
    from lowbit._backend import Kernel

    log = []

    def prepare(*args):
        log.append(("prepare", args))
        return lambda *a: log.append(("run", a)) or "out"

    prepared = Kernel("w8a16_gemm", "triton", "k", lambda *a: log.append(("fn", a)),
                      prepare=prepare)
    call = cases.prepared_call(prepared, (1, 2))
    assert log == []  # nothing runs before the first call (the timing's warm-up)
    assert [call(), call(), call()] == ["out"] * 3
    assert log == [("prepare", (1, 2))] + [("run", (1, 2))] * 3
    log.clear()
    plain = cases.prepared_call(Kernel("w8a16_gemm", "cuda", "k", lambda *a: log.append(a)),
                                (3,))
    call(), plain(), plain()
    assert log == [("run", (1, 2)), (3,), (3,)]
