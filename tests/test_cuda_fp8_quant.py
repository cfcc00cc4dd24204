"""The CUDA fp8 quantize / dequantize kernels (csrc/fp8, lowbit/backends/cuda/quantize.py),
bit-exact against the NumPy reference: what is theirs alone (both encoders over every fp32
pattern, streams and graphs, prepared launchers, 64-bit indexing, the bindings). The cases
every quantize / dequantize kernel must pass (granularities, layouts, static scales, every
bf16 / fp16 pattern) are in test_fp8_kernels.py.

Every kernel result is compared with ``backend="reference"`` on the same input copied to the
host: codes as raw bytes (``q.view(torch.uint8)``), scales and dequantized values bit for
bit, where NaN compares equal to NaN (NaN payloads are not part of the contract; every other
bit is). The GPU tests are marked ``gpu``; the CPU tests at the end check the parts that run
without a GPU (availability, backend choice, argument errors, the torch transliteration of
the encoder that the exhaustive GPU test uses as its oracle).

``HW_CVT``: saturate=True e4m3fn / e5m2 can use the sm_89+ ``cvt.rn.satfinite`` instruction;
tests parametrized with ``hw`` run both encoders.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lowbit
from lowbit.backends.cuda import quantize as cuda_backend
from lowbit.reference import fp8_encode
from lowbit.reference.formats import fp8_format
from lowbit_testing import (GRAN_IDS, GRANS, assert_bits_equal, cuda_gemm_module,
                            cuda_quantize_module, special_data)

FORMATS = ("e4m3fn", "e5m2", "e4m3fnuz")
FP8 = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2,
       "e4m3fnuz": torch.float8_e4m3fnuz}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)

gpu = pytest.mark.gpu
fmts = pytest.mark.parametrize("fmt", FORMATS)
sats = pytest.mark.parametrize("saturate", [True, False], ids=["sat", "nosat"])
hws = pytest.mark.parametrize("hw", [False, True], ids=["intcvt", "hwcvt"])


@pytest.fixture
def hw_cvt(request):
    """Sets the CUDA quantizer's HW_CVT for one test (from the test's ``hw`` parameter), with
    no C++ plan kept from before (a plan keeps the encoder it was prepared with)."""
    from lowbit import _native
    mod = cuda_quantize_module()
    old = mod.HW_CVT
    mod.HW_CVT = bool(request.node.callspec.params.get("hw", False))
    _native.reset()
    yield mod.HW_CVT
    mod.HW_CVT = old
    _native.reset()


# ----------------------------------------------------------------------------- helpers
def reference(x, scale=None, **kw):
    return lowbit.quantize_fp8(x.cpu(), None if scale is None else scale.cpu(),
                               backend="reference", **kw)


def cuda_quant(x, scale=None, **kw):
    return lowbit.quantize_fp8(x, scale, backend="cuda", **kw)


def check_quant(x, scale=None, what="", **kw):
    q, s = cuda_quant(x, scale, **kw)
    q_ref, s_ref = reference(x, scale, **kw)
    assert q.device == x.device and s.device == x.device
    assert q.dtype == FP8[kw.get("fmt", "e4m3fn")]
    assert s.dtype == torch.float32 and s.shape == s_ref.shape, (s.shape, s_ref.shape)
    assert_bits_equal(s, s_ref, f"{what} scale")
    assert_bits_equal(q, q_ref, f"{what} codes")
    return q, s


def bits_to_f32(start, n, device):
    return torch.arange(start, start + n, dtype=torch.int64, device=device) \
        .to(torch.int32).view(torch.float32)


def torch_fp8_encode(x: torch.Tensor, fmt: str, saturate: bool) -> torch.Tensor:
    """A transliteration of lowbit.reference.fp8.fp8_encode into torch integer ops, so the
    reference algorithm runs on the GPU over all 2^32 fp32 patterns. Checked against the
    NumPy reference itself by test_torch_encoder_matches_reference."""
    f = fp8_format(fmt)
    bits = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    sign = (bits >> 31) & 1
    mag = bits & 0x7FFFFFFF
    is_nan = mag > 0x7F800000
    is_inf = mag == 0x7F800000
    exp_field = mag >> 23
    sig = torch.where(exp_field > 0, (mag & 0x7FFFFF) | 0x800000, mag & 0x7FFFFF)
    exp = torch.clamp(exp_field, min=1) - 127
    shift = (23 - f.mbits) + torch.clamp((1 - f.bias) - exp, min=0)
    shift = torch.clamp(shift, max=40)
    one = torch.ones_like(shift)
    kept = sig >> shift
    rem = sig & ((one << shift) - 1)
    half = one << (shift - 1)
    kept = kept + ((rem > half) | ((rem == half) & ((kept & 1) == 1))).to(torch.int64)
    biased = exp + f.bias
    code = torch.where(biased >= 1, ((biased - 1) << f.mbits) + kept, kept)
    overflow = is_inf | (~is_nan & (code > f.max_code))
    if saturate:
        code = torch.where(overflow, f.max_code, code)
        nan_out = is_nan
    elif f.inf_code is not None:
        code = torch.where(overflow, f.inf_code, code)
        nan_out = is_nan
    else:
        nan_out = is_nan | overflow
    if f.negative_zero:
        out = code | (sign << 7)
    else:
        out = torch.where(code == 0, 0, code | (sign << 7))
    out = torch.where(nan_out, f.nan_code, out)
    return out.to(torch.uint8)


# ------------------------------------------------- exhaustive encoding (static scale)
@gpu
@fmts
@sats
@hws
def test_every_fp32_pattern(fmt, saturate, hw, hw_cvt):
    """All 2^32 fp32 bit patterns through the kernel (scale 1, so q = encode(x)) against the
    reference algorithm run in torch on the GPU."""
    one = torch.tensor(1.0, device="cuda")
    n = 1 << 26
    for start in range(0, 1 << 32, n):
        x = bits_to_f32(start, n, "cuda")
        q, _ = cuda_quant(x, one, fmt=fmt, saturate=saturate)
        want = torch_fp8_encode(x, fmt, saturate)
        got = q.view(torch.uint8)
        if not torch.equal(got, want):
            i = int((got != want).nonzero()[0])
            raise AssertionError(f"{fmt} saturate={saturate}: fp32 0x{start + i:08x} -> "
                                 f"0x{int(got[i]):02x}, want 0x{int(want[i]):02x}")


@gpu
@pytest.mark.parametrize("granularity", ["tensor", "token", "group"])
def test_leading_dimensions(granularity):
    x = special_data((6, 256), torch.bfloat16, seed=11, device="cuda").reshape(2, 3, 256)
    check_quant(x, None, "3-D", granularity=granularity)
    # leading dimensions that no single stride describes (copied by the backend)
    y = special_data((12, 256), torch.bfloat16, seed=12, device="cuda")
    y = y.reshape(3, 4, 256).permute(1, 0, 2)
    assert not y.is_contiguous()
    check_quant(y, None, "3-D permuted", granularity=granularity)
    # 1-D and 0-D
    x1 = special_data((1, 384), torch.float32, seed=13, device="cuda").reshape(384)
    check_quant(x1, None, "1-D", granularity=granularity)
    if granularity == "tensor":
        check_quant(torch.tensor(3.5, device="cuda"), None, "0-D")


# ---------------------------------------------------------------- streams, graphs, size
# ------------------------------------------------ programmatic dependent launch (sm_90)
# On sm_90 every quantizer of both families launches programmatically (common/quant_launch.cu):
# it waits for the kernel before it (griddepcontrol.wait) before reading x, and lets the next
# kernel in at once. Here each quantizer reads the output that a GEMM wrote a moment earlier
# (the sm_90a GEMMs let their successor start once past their mainloop, before their epilogue
# stores), and a second GEMM reads the quantizer's codes and scales (per token and per
# tensor, the activation scales it takes), with new inputs every round and every pass (so
# memory that an earlier pass left holds other values). The calls queue up behind a
# sleeping kernel, so they run back to back: a quantizer that read before its wait would see
# whatever the GEMM's output memory held before. Per tensor is two kernels (amax, then
# encode), the second reading the first's words.
def _pdl_inputs(family, seed):
    """Device operands of one round, made before the calls queue up (a copy from the host
    would wait for the sleeping kernel)."""
    g = torch.Generator().manual_seed(seed)
    if family == "fp8":
        rand = lambda *shape: torch.randn(*shape, generator=g).to(torch.float8_e4m3fn).cuda()  # noqa: E731
        a1, b1, b2 = rand(96, 512), rand(640, 512), rand(256, 640)
        return a1, b1, b2, torch.ones(96, 1).cuda(), torch.full((640, 1), 1 / 64).cuda()
    rand = lambda *shape: torch.randint(-127, 128, shape, generator=g, dtype=torch.int8).cuda()  # noqa: E731
    a1, b1, b2 = rand(96, 512), rand(640, 512), rand(256, 640)
    return a1, b1, b2, torch.ones(96, 1).cuda(), torch.full((640, 1), 1e-3).cuda()


def _pdl_round(family, granularity, group_size, block, symmetric, ops):
    """GEMM -> quantize its output -> GEMM of the codes (where the GEMM takes those scales)."""
    a1, b1, b2, sa1, sb1 = ops
    sb2 = sb1[:256]
    kw = dict(granularity=granularity, group_size=group_size, block=block, backend="cuda")
    z = y2 = None
    if family == "fp8":
        y1 = lowbit.fp8_scaled_mm(a1, b1, sa1, sb1, out_dtype=torch.bfloat16, backend="cuda")
        q, s = lowbit.quantize_fp8(y1, **kw)
        if granularity in ("tensor", "token"):
            y2 = lowbit.fp8_scaled_mm(q, b2, s, sb2, out_dtype=torch.bfloat16, backend="cuda")
    else:
        y1 = lowbit.int8_gemm(a1, b1, sa1, sb1, out_dtype=torch.bfloat16, backend="cuda")
        q, s, z = lowbit.quantize_int8(y1, symmetric=symmetric, **kw)
        if granularity == "token":
            y2 = lowbit.int8_gemm(q, b2, s, sb2, out_dtype=torch.bfloat16, a_zero=z,
                                  backend="cuda")
    return [t for t in (y1, q, s, z, y2) if t is not None]


@gpu
@pytest.mark.parametrize("family", ["fp8", "int8"])
@pytest.mark.parametrize("granularity,group_size,block", GRANS, ids=GRAN_IDS)
def test_programmatic_quantizers_read_what_the_gemm_before_wrote(family, granularity,
                                                                  group_size, block):
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the programmatically launched GEMMs run on sm_90 only")
    gemm = cuda_gemm_module()
    was = gemm.programmatic_launch()
    passes = [[(seed % 2 == 0, _pdl_inputs(family, 6 * p + seed)) for seed in range(6)]
              for p in range(3)]
    run = lambda sym, ops: _pdl_round(family, granularity, group_size, block, sym, ops)  # noqa: E731
    try:
        gemm.set_programmatic_launch(False)
        want = []
        for rounds in passes:
            for sym, ops in rounds:
                want.append(run(sym, ops))
                torch.cuda.synchronize()
        gemm.set_programmatic_launch(True)
        for i, rounds in enumerate(passes):
            torch.cuda._sleep(50_000_000)  # tens of ms: the host queues every call meanwhile
            got = [run(sym, ops) for sym, ops in rounds]
            torch.cuda.synchronize()
            for w, o in zip(want[6 * i:], got):
                assert len(w) == len(o)
                for a, b in zip(w, o):
                    assert_bits_equal(b, a)
    finally:
        gemm.set_programmatic_launch(was)


@gpu
def test_side_stream_and_cuda_graph():
    """Launches on the current stream, with no host synchronization: capturable."""
    x = special_data((64, 1024), torch.bfloat16, seed=9, device="cuda")
    want = [reference(x, None, granularity=g) for g in ("tensor", "token")]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = [cuda_quant(x, None, granularity=g) for g in ("tensor", "token")]
    torch.cuda.current_stream().wait_stream(side)
    for (q, s), (qr, sr) in zip(got, want):
        assert_bits_equal(q, qr, "side stream")
        assert_bits_equal(s, sr, "side stream scale")

    lowbit.dequantize_fp8(got[1][0], got[1][1], backend="cuda")  # load the kernel before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    static_x = x.clone()
    with torch.cuda.graph(graph):
        outs = [cuda_quant(static_x, None, granularity=g) for g in ("tensor", "token")]
        deq = lowbit.dequantize_fp8(outs[1][0], outs[1][1], backend="cuda")
    y = special_data((64, 1024), torch.bfloat16, seed=10, device="cuda")
    static_x.copy_(y)
    graph.replay()
    torch.cuda.synchronize()
    for (q, s), g in zip(outs, ("tensor", "token")):
        qr, sr = reference(y, None, granularity=g)
        assert_bits_equal(q, qr, f"graph replay {g}")
        assert_bits_equal(s, sr, f"graph replay {g} scale")
    d_ref = lowbit.dequantize_fp8(outs[1][0].cpu(), outs[1][1].cpu(), backend="reference")
    assert_bits_equal(deq, d_ref, "graph replay dequant")


@gpu
@pytest.mark.parametrize("granularity,block,static", [
    ("tensor", (128, 128), False), ("token", (128, 128), False), ("group", (128, 128), False),
    ("block", (128, 128), False), ("block", (1, 128), False), ("tensor", (128, 128), True),
    ("token", (128, 128), True)])
def test_prepared_and_general_launchers_agree(granularity, block, static):
    """A remembered signature runs the launcher its kernel prepared for it (geometry and
    codes worked out once); it must give the general launcher's bits."""
    from lowbit import _backend
    x = special_data((40, 384), torch.bfloat16, seed=21, device="cuda")
    if granularity not in ("block",):
        x = x.reshape(4, 10, 384)  # leading dimensions merged by a view
    scale = None
    if static:
        _, s = reference(x, None, granularity=granularity)
        scale = torch.where(torch.isfinite(s), s, torch.ones_like(s)).cuda()
    args = (x, scale, "e4m3fn", granularity, 128, list(block), True)
    name = lowbit.explain(lowbit.quantize_fp8, x, scale, granularity=granularity, block=block,
                          backend="cuda").kernel
    (kern,) = [k for k in _backend.kernels("quantize_fp8") if k.name == name]
    prepared = kern.prepare(*args)
    assert prepared is not kern.fn
    for _ in range(2):
        (q0, s0), (q1, s1) = kern.fn(*args), prepared(*args)
        assert_bits_equal(q1, q0, f"{granularity} prepared")
        assert_bits_equal(s1, s0, f"{granularity} prepared scale")


@gpu
def test_beyond_int32_indexing():
    """More than 2^31 elements: 64-bit offsets (checked on the last rows and a sample)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 12 << 30:
        pytest.skip("needs 12 GB of free GPU memory")
    rows, k = (1 << 17) + 3, 1 << 14  # 2^31 + 3 * 2^14 elements
    x = torch.empty(rows, k, dtype=torch.bfloat16, device="cuda")
    x.normal_()
    for granularity in ("token", "tensor"):
        q, s = cuda_quant(x, None, granularity=granularity)
        tail = slice(rows - 5, rows)
        if granularity == "token":
            qr, sr = reference(x[tail], None, granularity="token")
            assert_bits_equal(s[tail], sr, "token scale, last rows")
        else:
            # torch's `t / 448.0` multiplies by a reciprocal: divide in NumPy instead.
            amax = x.abs().amax().float().cpu().numpy()
            sr = torch.from_numpy(np.asarray(amax / np.float32(448.0), np.float32))
            assert_bits_equal(s, sr, "tensor scale")
            qr, _ = reference(x[tail], s.cpu())
        assert_bits_equal(q[tail], qr, f"{granularity} last rows")
        del q
    torch.cuda.empty_cache()


# -------------------------------------------------------------------------- dequantize
@gpu
def test_dequantize_round_trip_and_nd():
    x = special_data((24, 512), torch.bfloat16, seed=4, device="cuda").reshape(2, 12, 512)
    for granularity in ("tensor", "token", "group"):
        q, s = cuda_quant(x, None, granularity=granularity)
        for dtype in DTYPES:
            out = lowbit.dequantize_fp8(q, s, out_dtype=dtype, backend="cuda")
            want = lowbit.dequantize_fp8(q.cpu(), s.cpu(), out_dtype=dtype, backend="reference")
            assert_bits_equal(out, want, f"round trip {granularity} {dtype}")
    empty = torch.empty(0, 128, dtype=torch.float8_e4m3fn, device="cuda")
    out = lowbit.dequantize_fp8(empty, torch.tensor(1.0, device="cuda"), backend="cuda")
    assert out.shape == (0, 128) and out.dtype == torch.bfloat16


@gpu
@pytest.mark.parametrize("granularity", ["tensor", "token", "group", "block"])
def test_prepared_and_general_dequantizers_agree(granularity):
    """A remembered dequantize signature runs the launch its kernel prepared (geometry, scale
    tiles and the launch object worked out once): the general path's bits, for every scale
    layout, a 3-D q whose rows are a view, and another call's tensors; a q whose rows are
    a copy (leading dimensions no stride merges) keeps the general path."""
    from lowbit import _backend
    x = special_data((40, 384), torch.bfloat16, seed=23, device="cuda")
    block = (128, 128)
    if granularity != "block":
        x = x.reshape(4, 10, 384)  # leading dimensions merged by a view
    q, s = cuda_quant(x, None, granularity=granularity, block=block)
    (kern,) = [k for k in _backend.kernels("dequantize_fp8") if k.backend == "cuda"]
    for dtype in DTYPES:
        prepared = kern.prepare(q, s, dtype)
        assert prepared is not kern.fn
        for q_, s_ in ((q, s), cuda_quant(x * 3, None, granularity=granularity, block=block)):
            assert_bits_equal(prepared(q_, s_, dtype), kern.fn(q_, s_, dtype),
                              f"{granularity} {dtype} prepared")
    if granularity == "tensor":
        assert kern.prepare(q.permute(1, 0, 2), s, torch.float32) is kern.fn


@gpu
def test_auto_picks_a_gpu_kernel():
    x = torch.randn(8, 256, device="cuda", dtype=torch.bfloat16)
    choice = lowbit.explain(lowbit.quantize_fp8, x, granularity="token", backend="cuda")
    assert choice.backend == "cuda" and choice.kernel == "cuda_fp8_quant_per_token"
    choice = lowbit.explain(lowbit.quantize_fp8, x, torch.tensor(1.0, device="cuda"),
                            backend="cuda")
    assert choice.kernel == "cuda_fp8_quant_static"


# ------------------------------------------------------------------------- CPU tests
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_without_gpu_reference_is_chosen_and_cuda_unavailable():
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    choice = lowbit.explain(lowbit.quantize_fp8, x)
    assert choice.backend == "reference"
    assert lowbit.explain(lowbit.dequantize_fp8, x.to(torch.float8_e4m3fn),
                          torch.tensor(1.0)).backend == "reference"
    reason = cuda_backend.available()
    assert isinstance(reason, str) and reason
    from lowbit._backend import kernels
    names = {k.name for k in kernels("quantize_fp8") if k.backend == "cuda"}
    assert {"cuda_fp8_quant_static", "cuda_fp8_quant_per_tensor", "cuda_fp8_quant_per_token",
            "cuda_fp8_quant_per_group", "cuda_fp8_quant_per_block128"} <= names
    for k in kernels("quantize_fp8") + kernels("dequantize_fp8"):
        if k.name.startswith("cuda_fp8_"):
            assert k.available() == reason
    # The ops still run (on the reference) and agree with it.
    q, s = lowbit.quantize_fp8(x)
    q_ref, s_ref = lowbit.quantize_fp8(x, backend="reference")
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


def test_cuda_backend_on_cpu_tensors_is_value_error():
    x = torch.randn(4, 256)
    with pytest.raises(ValueError, match="backend='cuda'"):
        lowbit.quantize_fp8(x, backend="cuda")
    with pytest.raises(ValueError, match="backend='cuda'"):
        lowbit.dequantize_fp8(x.to(torch.float8_e4m3fn), torch.tensor(1.0), backend="cuda")


def test_bad_arguments_raise_before_any_launch():
    x = torch.randn(4, 100)
    with pytest.raises(ValueError, match="group_size"):
        lowbit.quantize_fp8(x, granularity="group", group_size=128, backend="cuda")
    with pytest.raises(TypeError, match="x must have dtype"):
        lowbit.quantize_fp8(x.to(torch.int32), backend="cuda")


@pytest.mark.skipif(not cuda_backend.has_cuda_kernels(), reason="lowbit._C built without CUDA")
def test_binding_rejects_bad_enums_without_touching_the_gpu():
    """The launch bindings validate their arguments before any CUDA call, so this runs
    anywhere: values no kernel takes are a ValueError when the launch is built; a failed
    launch is a RuntimeError with the CUDA error string."""
    from lowbit import _C
    from lowbit.backends.cuda import kernel_id
    static, dequant = kernel_id("cuda_fp8_quant_static"), kernel_id("cuda_fp8_dequant")
    with pytest.raises(ValueError, match="fp8 format"):
        _C.QuantizeLaunch(static, 0, 4, 16, 16, 1, 7, True, 0, 0, False)
    with pytest.raises(ValueError, match="no fp8_quantize kernel"):
        _C.QuantizeLaunch(dequant, 0, 4, 16, 16, 1, 0, True, 0, 0, False)
    with pytest.raises(ValueError, match="scale tile"):
        _C.QuantizeLaunch(static, 0, 4, 16, 16, 1, 0, True, 3, 0, False)
    # A static-scale kernel given no scale; a scale tile no dequantize layout has.
    with pytest.raises(RuntimeError, match="cuda_fp8_quant_static: .*invalid argument"):
        _C.QuantizeLaunch(static, 0, 4, 16, 16, 1, 0, True, 0, 0, False).launch(0, 0, 0, 16, 0, 0)
    with pytest.raises(RuntimeError, match="cuda_fp8_dequant: .*invalid argument"):
        _C.DequantizeLaunch(dequant, 4, 16, 16, 1, 0, 16, 3, 0, 1).launch(0, 16, 16, 0)


def test_torch_encoder_matches_reference():
    """The oracle of test_every_fp32_pattern (torch ops) against the NumPy reference on every
    bf16 pattern, random fp32 patterns, and the halfway points between fp8 neighbours."""
    rng = np.random.default_rng(0)
    bf = (np.arange(1 << 16, dtype=np.uint32) << 16)
    rnd = rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    for fmt in FORMATS:
        from lowbit.reference import fp8_decode
        d = fp8_decode(np.arange(256, dtype=np.uint8), fmt)
        fin = np.unique(np.abs(d[np.isfinite(d)])).astype(np.float64)
        mids = ((fin[:-1] + fin[1:]) / 2).astype(np.float32).view(np.uint32)
        edge = np.concatenate([mids, mids + 1, mids - 1])
        bits = np.concatenate([bf, rnd, edge, edge | 0x80000000]).astype(np.uint32)
        x = bits.view(np.float32)
        for saturate in (True, False):
            want = fp8_encode(x, fmt, saturate)
            got = torch_fp8_encode(torch.from_numpy(x.copy()), fmt, saturate).numpy()
            assert np.array_equal(got, want), (fmt, saturate)
