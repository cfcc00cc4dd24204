"""bench/pick_triton_table.py: the Triton INT8 GEMM's table rows picked from a tile sweep's
markdown, and written into heuristics.py so that the table serves them."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


pick_table = _load("pick_triton_table", ROOT / "bench" / "pick_triton_table.py")

HEAD = ("| M x N x K | kernel | us | TFLOP/s | vs anchor | err | note |\n"
        "|---|---|---|---|---|---|---|\n")
TABLE_128 = "triton 128x128x128 g8 w8 s3 u1 (96 KB)"
TABLE_512 = "triton 128x256x128 g8 w8 s3 u1 (144 KB)"
HALF = "triton 64x128x128 g8 w4 s4 u1 (96 KB)"
DEEP = "triton 128x128x128 g4 w8 s5 u1 (160 KB)"


def _row(shape, kernel, us, err="0.0e+00", note=""):
    return f"| {shape} | {kernel} | {us} | 1 | 1.00x | {err} | {note} |\n"


def _sweep():
    rows = [
        # M = 128: the half-height tiles win on both shapes by far.
        _row("128x4096x4096", "torch._int_mm + epilogue", 30.0),
        _row("128x4096x4096", "sm90_int8_gemm_wgmma", 18.0),
        _row("128x4096x4096", TABLE_128, 27.0, note="table; 96 regs"),
        _row("128x4096x4096", HALF, 21.0),
        _row("128x4096x4096", DEEP, 26.0),
        _row("128x4096x14336", "sm90_int8_gemm_wgmma", 40.0),
        _row("128x4096x14336", TABLE_128, 70.0, note="table"),
        _row("128x4096x14336", HALF, 52.0),
        _row("128x4096x14336", DEEP, 30.0, err="4.1e-01 WRONG"),  # fastest, but wrong
        # M = 512: the table's config is within 2% of the fastest: it stays.
        _row("512x4096x4096", TABLE_512, 40.0, note="table"),
        _row("512x4096x4096", DEEP, 39.5),
        _row("512x4096x4096", HALF, "-", note="error: out of resources"),
    ]
    return HEAD + "".join(rows)


def _outside_table(text):
    start = text.index("INT8_GEMM_TABLE: List[tuple] = [")
    return text[:start], text[text.index("]\n", start):]


def test_the_pick_is_the_least_mean_and_skips_wrong_and_failed_configs():
    picks, report = pick_table.pick(pick_table.read_sweep(_sweep()))
    assert picks[128].startswith("triton 64x128x128 g8 w4 s4")  # DEEP was WRONG at 4096x14336
    assert picks[512].startswith("triton 128x256x128 g8 w8 s3")  # the table's, within KEEP
    assert any("1.17x the CUDA kernel's" in line for line in report), report  # 21.0 / 18.0


def test_applied_rows_are_what_the_table_serves(tmp_path):
    source = (ROOT / "triton_kernels" / "heuristics.py").read_text()
    picks, _ = pick_table.pick(pick_table.read_sweep(_sweep()))
    new = pick_table.apply(source, picks)
    path = tmp_path / "heuristics.py"
    path.write_text(new)
    heur = _load("picked_heuristics", path)
    old = _load("table_heuristics", ROOT / "triton_kernels" / "heuristics.py")
    rows = dict((m, cfg) for m, cfg in heur.INT8_GEMM_TABLE)
    assert rows[128] == heur.GemmConfig(64, 128, 128, 8, 4, 4)
    assert rows[512] == heur.GemmConfig(128, 256, 128, 8, 8, 3)
    # The decode rows and the last row are kept; nothing else in the file changes.
    for m in (16, 64, 1 << 62):
        assert rows[m] == dict(old.INT8_GEMM_TABLE)[m]
    assert _outside_table(new) == _outside_table(source)
    # M = 65-128 get the picked tiles (shrunk to the problem as any row is), 129-512 the
    # 512 row's.
    assert heur.int8_gemm_config(128, 4096, 4096)[:2] == (64, 128)
    assert heur.int8_gemm_config(200, 4096, 4096)[:2] == (128, 256)


def test_the_same_sweep_gives_the_same_file():
    source = (ROOT / "triton_kernels" / "heuristics.py").read_text()
    picks, _ = pick_table.pick(pick_table.read_sweep(_sweep()))
    once = pick_table.apply(source, picks)
    assert pick_table.apply(once, picks) == once


@pytest.mark.parametrize("name,want", [
    ("triton 64x128x128 g8 w4 s4 u1 (96 KB)", "GemmConfig(64, 128, 128, 8, 4, 4)"),
    ("triton 128x128x128 g4 w8 s3 u2 (192 KB)", "GemmConfig(128, 128, 128, 4, 8, 3, k_unroll=2)"),
])
def test_config_names_read_back_as_source(name, want):
    assert pick_table.config_source(name) == want
