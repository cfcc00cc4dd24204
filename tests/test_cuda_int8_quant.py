"""The CUDA int8 quantize / dequantize kernels (csrc/int8 on the shared skeleton of
csrc/common/quant_kernels.cuh, lowbit/backends/cuda/int8_quantize.py), bit-exact against the
NumPy reference: what is theirs alone (vector and scalar load paths, team sizes from short
to long rows, every granularity x symmetric / asymmetric x static / dynamic x dtype, empty
inputs, prepared launchers, the launch bindings). The cases every quantize_int8 /
dequantize_int8 kernel must pass are in test_int8_kernels.py.

Every kernel result is compared with ``backend="reference"`` on the same input copied to the
host: codes and zero points exactly, scales and dequantized values bit for bit (NaN matches
NaN whatever its payload). GPU tests are marked ``gpu``; the tests at the end run without one.
"""
from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit_testing import (GRAN_IDS, GRANS, LAYOUTS, assert_bits_equal, special_data,
                            special_scales, with_layout)

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SYMS = pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
DTYPE_PARAMS = pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16", "fp32"])
GRAN_PARAMS = pytest.mark.parametrize("granularity,group_size,block", GRANS, ids=GRAN_IDS)
gpu = pytest.mark.gpu
# static_args's scales and zero points include values the ops refuse where they read values:
# its reference runs on the CPU (unchecked_values).
pytestmark = pytest.mark.usefixtures("unchecked_values")

QUANT_KERNELS = {"cuda_int8_quant_static", "cuda_int8_quant_per_tensor",
                 "cuda_int8_quant_per_token", "cuda_int8_quant_per_group",
                 "cuda_int8_quant_per_block128"}


# ----------------------------------------------------------------------------- helpers
def _kw(granularity, group_size, block, symmetric):
    return dict(granularity=granularity, group_size=group_size, block=tuple(block),
                symmetric=symmetric)


def _cpu(t):
    return None if t is None else t.cpu()


def check_quant(x, scale=None, zero=None, what="", **kw):
    """The CUDA kernel's (q, scale, zero) against the reference's, bit for bit."""
    q, s, z = lowbit.quantize_int8(x, scale, zero=zero, backend="cuda", **kw)
    qr, sr, zr = lowbit.quantize_int8(x.cpu(), _cpu(scale), zero=_cpu(zero),
                                      backend="reference", **kw)
    assert q.device == x.device and s.device == x.device
    assert_bits_equal(q, qr, f"{what} codes")
    assert_bits_equal(s, sr, f"{what} scale")
    if kw.get("symmetric", True):
        assert z is None and zr is None
    else:
        assert z.device == x.device
        assert_bits_equal(z, zr, f"{what} zero")
    return q, s, z


def static_args(x, granularity, group_size, block, symmetric, seed):
    """A static scale (with 0, a negative and subnormal entries) and, when asymmetric, zero
    points over the whole int32 range, in the granularity's layout."""
    _, s, _ = lowbit.quantize_int8(x.cpu(), granularity=granularity, group_size=group_size,
                                   block=block, backend="reference")
    scale = special_scales(tuple(s.shape), seed)
    if symmetric:
        return scale.to(x.device), None
    g = torch.Generator().manual_seed(seed)
    zero = torch.randint(-160, 160, tuple(s.shape), generator=g, dtype=torch.int32)
    flat = zero.view(-1)
    for j, v in enumerate([2**31 - 1, -2**31, 16777217, -100000001][: flat.numel() // 3]):
        flat[(j * 31) % flat.numel()] = v
    return scale.to(x.device), zero.to(x.device)


# --------------------------------- every granularity x mode x dtype x static / dynamic
@gpu
@GRAN_PARAMS
@SYMS
@DTYPE_PARAMS
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_granularities(granularity, group_size, block, symmetric, dtype, static):
    x = special_data((260, 384), dtype, seed=1, device="cuda")
    scale = zero = None
    if static:
        scale, zero = static_args(x, granularity, group_size, block, symmetric, seed=3)
    check_quant(x, scale, zero, what=f"{'static' if static else 'dynamic'} {granularity} {dtype}",
                **_kw(granularity, group_size, block, symmetric))


# ------------------------------------------------- vector / scalar paths, team sizes
@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", [1, 15, 16, 17, 4096, 20000])
@pytest.mark.parametrize("granularity", ["tensor", "token"])
@SYMS
def test_layouts_and_row_lengths(layout, k, granularity, symmetric):
    """Aligned contiguous rows take 16-byte loads; offset, strided and misaligned rows (and
    ragged tails) the element path; K from one chunk to rows longer than a 256-thread team
    keeps in registers."""
    m = 3 if k >= 4096 else 37
    for dtype in (torch.bfloat16, torch.float32):
        x = with_layout(special_data((m, k), dtype, seed=k, device="cuda"), layout)
        check_quant(x, what=f"{layout} K={k} {dtype}", granularity=granularity,
                    symmetric=symmetric)
        scale, zero = static_args(x, granularity, 128, (128, 128), symmetric, seed=k)
        check_quant(x, scale, zero, what=f"static {layout} K={k} {dtype}",
                    granularity=granularity, symmetric=symmetric)


@gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@GRAN_PARAMS
@SYMS
def test_layouts_every_granularity(layout, granularity, group_size, block, symmetric):
    x = with_layout(special_data((200, 640), torch.float16, seed=5, device="cuda"), layout)
    check_quant(x, what=f"{layout} {granularity}", **_kw(granularity, group_size, block, symmetric))


@gpu
@pytest.mark.parametrize("granularity", ["tensor", "token", "group"])
@SYMS
def test_leading_dimensions(granularity, symmetric):
    x = special_data((6, 256), torch.bfloat16, seed=11, device="cuda").reshape(2, 3, 256)
    check_quant(x, what="3-D", granularity=granularity, symmetric=symmetric)
    y = special_data((12, 256), torch.bfloat16, seed=12, device="cuda")
    y = y.reshape(3, 4, 256).permute(1, 0, 2)  # no single stride: copied by the backend
    check_quant(y, what="3-D permuted", granularity=granularity, symmetric=symmetric)


# ----------------------------------------------------------------- extreme and special
@gpu
@SYMS
@pytest.mark.parametrize("granularity", ["tensor", "token", "group", "block"])
def test_extreme_rows(symmetric, granularity):
    """Rows near +-3e38 (max - min overflows to Inf: scale Inf, codes the zero point), a row
    of +Inf only, of -Inf only, all NaN, all zero, all -0, one tiny value, constants."""
    k = 256
    rows = [torch.full((k,), v) for v in (3e38, -3e38, float("inf"), -float("inf"),
                                          float("nan"), 0.0, -0.0, 1e-45, 7.0, -7.0)]
    mixed = torch.linspace(-3e38, 3e38, k)
    rows += [mixed, torch.where(torch.arange(k) % 2 == 0, 3.4e38, -3.4e38)]
    x = torch.stack(rows).to("cuda")
    check_quant(x, what="extreme", granularity=granularity, symmetric=symmetric)


# ---------------------------------------------------------------------------- M = 0
@gpu
@GRAN_PARAMS
@SYMS
def test_empty_inputs(granularity, group_size, block, symmetric):
    kw = _kw(granularity, group_size, block, symmetric)
    for shape in ((0, 256), (0,)) if granularity in ("tensor", "token") else ((0, 256),):
        x = torch.empty(shape, dtype=torch.bfloat16, device="cuda")
        check_quant(x, what=f"empty {shape}", **kw)
        if x.dim() == 2:
            scale, zero = static_args(x, granularity, group_size, block, symmetric, seed=0)
            check_quant(x, scale, zero, what=f"empty static {shape}", **kw)
    if granularity == "tensor":  # the static scale and zero of an empty input come back
        x = torch.empty(0, 64, dtype=torch.float32, device="cuda")
        s = torch.tensor(0.25, device="cuda")
        z = None if symmetric else torch.tensor(-3, dtype=torch.int32, device="cuda")
        check_quant(x, s, z, what="empty static tensor", **kw)


# ------------------------------------------------------------------------ dequantize
@gpu
@pytest.mark.parametrize("kind", ["tensor", "row", "group32", "group128", "block1x128",
                                  "block128"])
@pytest.mark.parametrize("with_zero", [False, True], ids=["nozero", "zero"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "offset", "row_strided"])
def test_dequantize(kind, with_zero, layout):
    m, k = 131, 384
    g = torch.Generator().manual_seed(7)
    q = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    q[0, :256] = torch.arange(-128, 128, dtype=torch.int8)
    size = {"tensor": (), "row": (m, 1), "group32": (m, k // 32), "group128": (m, k // 128),
            "block1x128": (m, -(-k // 128)), "block128": (-(-m // 128), -(-k // 128))}[kind]
    scale = torch.rand(size, generator=g) * 3 + 0.01
    zero = torch.randint(-128, 128, size, generator=g, dtype=torch.int32) if with_zero else None
    if with_zero and zero.numel() > 2:
        zero.view(-1)[:2] = torch.tensor([2**31 - 1, 16777217], dtype=torch.int32)
    qd = with_layout(q.cuda(), layout)
    for dtype in DTYPES:
        out = lowbit.dequantize_int8(qd, scale.cuda(), None if zero is None else zero.cuda(),
                                     out_dtype=dtype, backend="cuda")
        want = lowbit.dequantize_int8(q, scale, zero, out_dtype=dtype, backend="reference")
        assert_bits_equal(out, want, f"dequantize {kind} {layout} {dtype}")


@gpu
@SYMS
def test_round_trip_and_empty_dequantize(symmetric):
    x = special_data((24, 512), torch.bfloat16, seed=4, device="cuda").reshape(2, 12, 512)
    for granularity in ("tensor", "token", "group"):
        q, s, z = lowbit.quantize_int8(x, granularity=granularity, symmetric=symmetric,
                                       backend="cuda")
        for dtype in DTYPES:
            out = lowbit.dequantize_int8(q, s, z, out_dtype=dtype, backend="cuda")
            want = lowbit.dequantize_int8(q.cpu(), s.cpu(), _cpu(z), out_dtype=dtype,
                                          backend="reference")
            assert_bits_equal(out, want, f"round trip {granularity} {dtype}")
    empty = torch.empty(0, 128, dtype=torch.int8, device="cuda")
    out = lowbit.dequantize_int8(empty, torch.tensor(1.0, device="cuda"), backend="cuda")
    assert out.shape == (0, 128) and out.dtype == torch.bfloat16


# ---------------------------------------------------------- prepared launchers, streams
@gpu
@SYMS
@pytest.mark.parametrize("granularity,block,static", [
    ("tensor", (128, 128), False), ("token", (128, 128), False), ("group", (128, 128), False),
    ("block", (128, 128), False), ("block", (1, 128), False), ("tensor", (128, 128), True),
    ("group", (128, 128), True)])
def test_prepared_and_general_launchers_agree(symmetric, granularity, block, static):
    from lowbit import _backend
    x = special_data((40, 384), torch.bfloat16, seed=21, device="cuda")
    if granularity != "block":
        x = x.reshape(4, 10, 384)  # leading dimensions merged by a view
    scale = zero = None
    if static:
        scale, zero = static_args(x, granularity, 128, block, symmetric, seed=22)
    args = (x, scale, zero, granularity, 128, list(block), symmetric)
    name = lowbit.explain(lowbit.quantize_int8, x, scale, zero=zero, granularity=granularity,
                          block=block, symmetric=symmetric, backend="cuda").kernel
    assert name in QUANT_KERNELS
    (kern,) = [k for k in _backend.kernels("quantize_int8") if k.name == name]
    prepared = kern.prepare(*args)
    assert prepared is not kern.fn
    for _ in range(2):
        got, want = prepared(*args), kern.fn(*args)
        for g, w, what in zip(got, want, ("codes", "scale", "zero")):
            assert_bits_equal(g, w, f"{granularity} prepared {what}")


@gpu
@SYMS
@pytest.mark.parametrize("granularity", ["tensor", "token", "group"])
def test_prepared_and_general_dequantizers_agree(symmetric, granularity):
    """A remembered dequantize signature runs the launch its kernel prepared: the general
    path's bits (zero points included), also on another call's tensors."""
    from lowbit import _backend
    x = special_data((40, 384), torch.bfloat16, seed=24, device="cuda").reshape(4, 10, 384)
    q, s, z = lowbit.quantize_int8(x, granularity=granularity, symmetric=symmetric,
                                   backend="cuda")
    q2, s2, z2 = lowbit.quantize_int8(x * 3, granularity=granularity, symmetric=symmetric,
                                      backend="cuda")
    (kern,) = [k for k in _backend.kernels("dequantize_int8") if k.backend == "cuda"]
    for dtype in DTYPES:
        prepared = kern.prepare(q, s, z, dtype)
        assert prepared is not kern.fn
        for args in ((q, s, z, dtype), (q2, s2, z2, dtype)):
            assert_bits_equal(prepared(*args), kern.fn(*args),
                              f"{granularity} sym={symmetric} {dtype} prepared")


@gpu
def test_side_stream_and_cuda_graph():
    x = special_data((64, 1024), torch.bfloat16, seed=9, device="cuda")
    lowbit.quantize_int8(x, granularity="tensor", symmetric=False, backend="cuda")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    static_x = x.clone()
    with torch.cuda.graph(graph):
        outs = [lowbit.quantize_int8(static_x, granularity=g, symmetric=sym, backend="cuda")
                for g, sym in (("tensor", False), ("token", True))]
    y = special_data((64, 1024), torch.bfloat16, seed=10, device="cuda")
    static_x.copy_(y)
    graph.replay()
    torch.cuda.synchronize()
    for (q, s, z), (g, sym) in zip(outs, (("tensor", False), ("token", True))):
        qr, sr, zr = lowbit.quantize_int8(y.cpu(), granularity=g, symmetric=sym,
                                          backend="reference")
        assert_bits_equal(q, qr, f"graph {g}")
        assert_bits_equal(s, sr, f"graph {g} scale")
        if not sym:
            assert_bits_equal(z, zr, f"graph {g} zero")


@gpu
def test_auto_picks_the_cuda_kernels():
    x = torch.randn(8, 256, device="cuda", dtype=torch.bfloat16)
    for kw, name in ((dict(granularity="token"), "cuda_int8_quant_per_token"),
                     (dict(granularity="tensor", symmetric=False), "cuda_int8_quant_per_tensor"),
                     (dict(granularity="group"), "cuda_int8_quant_per_group"),
                     (dict(granularity="block", block=(1, 128)), "cuda_int8_quant_per_group"),
                     (dict(granularity="block"), "cuda_int8_quant_per_block128")):
        assert lowbit.explain(lowbit.quantize_int8, x, backend="cuda", **kw).kernel == name
    one = torch.tensor(1.0, device="cuda")
    assert lowbit.explain(lowbit.quantize_int8, x, one, granularity="tensor",
                          backend="cuda").kernel == "cuda_int8_quant_static"


# ------------------------------------------------------------------------- CPU tests
def test_kernels_registered():
    from lowbit._backend import kernels
    names = {k.name for k in kernels("quantize_int8") if k.backend == "cuda"}
    assert names == QUANT_KERNELS
    assert {k.name for k in kernels("dequantize_int8") if k.backend == "cuda"} == \
        {"cuda_int8_dequant"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_without_gpu_reference_is_chosen():
    from lowbit.backends.cuda import available
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    assert lowbit.explain(lowbit.quantize_int8, x).backend == "reference"
    from lowbit._backend import kernels
    for k in kernels("quantize_int8") + kernels("dequantize_int8"):
        if k.backend == "cuda":
            assert k.available() == available()


def test_cuda_backend_on_cpu_tensors_is_value_error():
    x = torch.randn(4, 256)
    with pytest.raises(ValueError, match="backend='cuda'"):
        lowbit.quantize_int8(x, backend="cuda")
    with pytest.raises(ValueError, match="backend='cuda'"):
        lowbit.dequantize_int8(x.to(torch.int8), torch.tensor(1.0), backend="cuda")


def _built_int8():
    from lowbit.backends.cuda import has_cuda_kernels, kernel_id
    return has_cuda_kernels() and kernel_id("cuda_int8_dequant") is not None


@pytest.mark.skipif(not _built_int8(), reason="lowbit._C built without the CUDA int8 kernels")
def test_bindings_validate_without_touching_the_gpu():
    """The launch bindings and launchers reject bad arguments before any CUDA call, and take
    empty inputs with null pointers, so this runs on a machine without a GPU."""
    from lowbit import _C
    from lowbit.backends.cuda import kernel_id
    kinds = {name: kind for name, kind, _, _ in _C.kernels()}
    assert {n for n, k in kinds.items() if k == "int8_quantize"} == QUANT_KERNELS
    assert kinds["cuda_int8_dequant"] == "int8_dequantize"
    static, token = kernel_id("cuda_int8_quant_static"), kernel_id("cuda_int8_quant_per_token")
    group, block = kernel_id("cuda_int8_quant_per_group"), kernel_id("cuda_int8_quant_per_block128")
    dequant, fp8_static = kernel_id("cuda_int8_dequant"), kernel_id("cuda_fp8_quant_static")
    with pytest.raises(ValueError, match="no int8_quantize kernel"):
        _C.Int8QuantizeLaunch(dequant, 0, 4, 16, 16, 1, True, 0, 0)
    with pytest.raises(ValueError, match="no int8_quantize kernel"):
        _C.Int8QuantizeLaunch(fp8_static, 0, 4, 16, 16, 1, True, 0, 0)
    with pytest.raises(ValueError, match="no int8_dequantize kernel"):
        _C.Int8DequantizeLaunch(static, 4, 16, 16, 1, 0, 0, 0, 1)
    with pytest.raises(ValueError, match="x dtype"):
        _C.Int8QuantizeLaunch(static, 9, 4, 16, 16, 1, True, 0, 0)
    with pytest.raises(ValueError, match="scale tile"):
        _C.Int8QuantizeLaunch(static, 0, 4, 16, 16, 1, True, 1, 16)
    with pytest.raises(ValueError, match="out dtype"):
        _C.Int8DequantizeLaunch(dequant, 4, 16, 16, 1, 0, 0, 0, 5)
    # launch(x, q, scale_in, zero_in, scale_out, zero_out, workspace, stream)
    ok = (16, 16, 16, 16, 16, 16, 0, 0)
    for bad, why in (((0,) + ok[1:], "no input"),
                     (ok[:2] + (0,) + ok[3:], "static kernel, no scale"),
                     (ok[:3] + (0,) + ok[4:], "asymmetric static, no zero")):
        with pytest.raises(RuntimeError, match="cuda_int8_quant_static: .*invalid argument"):
            _C.Int8QuantizeLaunch(static, 0, 4, 16, 16, 1, False, 0, 0).launch(*bad)
    with pytest.raises(RuntimeError, match="cuda_int8_quant_static: .*invalid argument"):
        _C.Int8QuantizeLaunch(static, 0, 4, 16, 16, 1, True, 0, 0).launch(*ok)  # sym + zero
    with pytest.raises(RuntimeError, match="cuda_int8_quant_per_token: .*invalid argument"):
        _C.Int8QuantizeLaunch(token, 0, 4, 16, 16, 1, True, 1, 0).launch(16, 16, 16, 0, 16, 0,
                                                                         0, 0)  # given scale
    with pytest.raises(RuntimeError, match="cuda_int8_quant_per_token: .*invalid argument"):
        _C.Int8QuantizeLaunch(token, 0, 4, 16, 16, 1, False, 1, 0).launch(16, 16, 0, 0, 16, 0,
                                                                          0, 0)  # no zero out
    with pytest.raises(RuntimeError, match="cuda_int8_quant_per_group: .*invalid argument"):
        _C.Int8QuantizeLaunch(group, 0, 4, 16, 16, 1, True, 0, 0).launch(16, 16, 0, 0, 16, 0,
                                                                         0, 0)  # per tensor
    with pytest.raises(RuntimeError, match="cuda_int8_dequant: .*invalid argument"):
        _C.Int8DequantizeLaunch(dequant, 4, 16, 16, 1, 0, 16, 3, 1).launch(16, 16, 0, 16, 0)
    # M = 0 with null pointers: nothing to touch, nothing launched.
    for kid, sym, tile in ((static, True, (1, 0)), (static, False, (1, 0)),
                           (token, True, (1, 0)), (token, False, (1, 0)),
                           (group, False, (1, 32)), (block, True, (128, 128))):
        _C.Int8QuantizeLaunch(kid, 1, 0, 256, 256, 1, sym, *tile).launch(0, 0, 0, 0, 0, 0, 0, 0)
    _C.Int8DequantizeLaunch(dequant, 0, 256, 256, 1, 1, 0, 1, 1).launch(0, 0, 0, 0, 0)


@gpu
def test_per_tensor_workspace_outlives_the_launch():
    """The per-tensor quantizers' amax workspace must stay allocated until the kernels ran:
    without the caching allocator a freed temporary goes back to the driver at once, and the
    launch failed with "invalid argument" (found by compute-sanitizer, bench/sanitize.sh)."""
    import os
    import subprocess
    import sys

    code = """if True:
        import torch, lowbit
        x = torch.randn(5, 136, device="cuda", dtype=torch.bfloat16)
        for fn, kw in ((lowbit.quantize_fp8, {}), (lowbit.quantize_int8, {"symmetric": True}),
                       (lowbit.quantize_int8, {"symmetric": False})):
            got = fn(x, granularity="tensor", backend="cuda", **kw)
            ref = fn(x.cpu(), granularity="tensor", backend="reference", **kw)
            for g, r in zip(got, ref):
                if r is not None:
                    assert torch.equal(g.cpu().view(torch.uint8) if g.dtype.itemsize == 1 else
                                       g.cpu(), r.view(torch.uint8) if r.dtype.itemsize == 1
                                       else r), (fn.__name__, kw)
        print("ok")
    """
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
