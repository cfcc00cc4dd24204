"""Every Triton kernel launch that lowbit's ops make, compiled for the GPUs its users run:
Hopper (sm_90), Ampere (sm_80) and MI300X (gfx942), and MI355X (gfx950, where AMD's matrix
cores take the OCP fp8 formats), on a machine without any of them.

The ops run once under Triton's interpreter on small CPU tensors (every quantizer format and
granularity, both GEMM accumulations, INT8 with a zero point, the weight-only GEMMs), and
each launch is recorded as Triton would specialize it: argument dtypes, which pointers and
integers are 16-byte multiples, integers equal to 1 as constants, the constexprs, warps and
stages. A fresh process (one that imported triton for the interpreter cannot compile) then
compiles, for each target, the launches a GPU of that target makes in their place
(``_gpu_forms``: bf16 tensors as bf16 rather than the interpreter's int16 bits, the
e4m3fnuz GEMM native on MI300, the hardware-cast quantizer on sm_90) with
``triton.compile``: a kernel that uses something a target lacks (an NVIDIA-only
instruction, an fp8 type the backend refuses, more shared memory than the chip has) fails
here rather than on a user's GPU.

The GEMMs are compiled again with the tiles of full-size problems at each chip's
shared-memory fit (``_large_tiles``), and the quantizers with the tiles a GPU takes for
full-size inputs (``_gpu_quantizer_tiles``): the interpreter picks other sizes.
"""
import json

import pytest
import torch
from lowbit_testing import (GPU_TARGETS as TARGETS, SM_COUNT as SMS, SMEM_LIMIT as SMEM,
                            call_in_fresh_process, compile_kernel)

triton = pytest.importorskip("triton", reason="triton is not installed")
import lowbit  # noqa: E402
from lowbit.triton_kernels import _common  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="records launches under the interpreter (CPU only)")

# torch dtype -> the type Triton's signature gives a pointer to it.
_POINTEE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
            torch.float64: "fp64", torch.int8: "i8", torch.uint8: "u8", torch.int16: "i16",
            torch.int32: "i32", torch.int64: "i64", torch.bool: "i1",
            torch.float8_e4m3fn: "fp8e4nv", torch.float8_e5m2: "fp8e5",
            torch.float8_e4m3fnuz: "fp8e4b8"}
# Keywords of a launch that are compile options, not kernel parameters.
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "enable_fp_fusion", "maxnreg")


def _spec(kernel, args, kwargs) -> dict:
    """One launch as Triton specializes it: {kernel, signature, constexprs, aligned, options}."""
    names = kernel.arg_names
    params = {p.name: p for p in kernel.params}
    constexpr = {p.name for p in kernel.params if p.is_constexpr}
    defaults = _common._defaults(kernel)
    sig, consts, aligned = {}, {}, []
    for name, value in zip(names, args):
        if name in constexpr:
            consts[name] = value
        elif isinstance(value, torch.Tensor):
            sig[name] = "*" + _POINTEE[value.dtype]
            if value.data_ptr() % 16 == 0:
                aligned.append(name)
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            # Triton compiles an integer equal to 1 as that constant (a unit stride), and
            # marks a multiple of 16, unless the parameter opts out of specialization.
            if value == 1 and not params[name].do_not_specialize:
                consts[name] = 1
                continue
            sig[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
            if value % 16 == 0 and not params[name].do_not_specialize:
                aligned.append(name)
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{kernel.fn.__name__}: argument {name} of type {type(value)}")
    options = {}
    for name, value in kwargs.items():
        if name in constexpr:
            consts[name] = value
        elif name in _OPTIONS:
            options[name] = value
        else:
            raise TypeError(f"{kernel.fn.__name__}: keyword {name} is neither a constexpr "
                            "nor a launch option")
    for name in names[len(args):]:
        if name in constexpr and name not in consts:
            consts[name] = defaults[name]
    for name in names:
        if name in consts:
            sig[name] = "constexpr"
    return dict(module=kernel.fn.__module__, name=kernel.fn.__name__, signature=sig,
                constexprs=consts, aligned=aligned, options=options)


def _run_ops() -> None:
    """The ops whose Triton launches are checked, on small CPU tensors (each kernel and each
    variant of its constexprs that the ops choose)."""
    t = "triton"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(17, 256, generator=g).bfloat16()
    w = torch.randn(48, 256, generator=g)
    for fmt in ("e4m3fn", "e5m2", "e4m3fnuz"):
        for gran in ("tensor", "token", "group", "block"):
            q, s = lowbit.quantize_fp8(x, fmt=fmt, granularity=gran, backend=t)
            lowbit.dequantize_fp8(q, s, backend=t)
        lowbit.quantize_fp8(x.float(), torch.tensor(0.01), fmt=fmt, saturate=False, backend=t)
    for gran in ("tensor", "token", "group", "block"):
        for sym in (True, False):
            q, s, z = lowbit.quantize_int8(x, granularity=gran, symmetric=sym, backend=t)
            lowbit.dequantize_int8(q, s, z, backend=t)
    for fa, fb in (("e4m3fn", "e4m3fn"), ("e5m2", "e4m3fn"), ("e4m3fnuz", "e4m3fnuz")):
        for am, bm in (("token", "channel"), ("block", "block")):
            kw_a = dict(block=(1, 128)) if am == "block" else {}
            kw_b = dict(block=(128, 128)) if bm == "block" else {}
            qa, sa = lowbit.quantize_fp8(x, fmt=fa, granularity=am, **kw_a)
            qb, sb = lowbit.quantize_fp8(w, fmt=fb, granularity=bm, **kw_b)
            for fast in (False, True):
                lowbit.fp8_scaled_mm(qa, qb, sa, sb, out_dtype=torch.bfloat16,
                                     fast_accum=fast, backend=t)
    qa, sa, za = lowbit.quantize_int8(x, granularity="token", symmetric=False)
    qb, sb, _ = lowbit.quantize_int8(w, granularity="channel")
    lowbit.int8_mm(qa, qb, backend=t)
    lowbit.int8_gemm(qa, qb, sa, sb, out_dtype=torch.bfloat16, backend=t)
    lowbit.int8_gemm(qa, qb, sa, sb, out_dtype=torch.float32, a_zero=za, backend=t)
    qg, sg, _ = lowbit.quantize_int8(w, granularity="group", group_size=64)
    from lowbit._backend import kernels

    fused4 = next(k for k in kernels("w4a16_gemm") if k.name == "triton_w4a16_gemm")
    x65 = torch.randn(65, 256, generator=g).bfloat16()
    x129 = torch.randn(129, 256, generator=g).bfloat16()
    x257 = torch.randn(257, 256, generator=g).bfloat16()
    # decode (K split, then the split sum), tiled (M = 17-64 and 65-128 rows), and
    # dequantize-then-GEMM (int4 from M = 129, int8 from 257), with the fused kernel pinned
    # where the dequantizer leads
    for xm in (x[:4], x, x65, x129):
        for sym in (True, False):
            iw = lowbit.int4_quantize(w, group_size=64, symmetric=sym, backend=t)
            lowbit.w4a16_gemm(xm, iw, backend=t)
            fused4.fn(xm, iw.qweight, iw.scales, iw.zeros, iw.group_size, None, None)
    for xm in (x[:4], x, x65, x129, x257):
        lowbit.w8a16_gemm(xm, qb, sb, backend=t)
        lowbit.w8a16_gemm(xm.half(), qg, sg, backend=t)
    # fp32 activations (the fused kernel at any M, fp32 tiles: the largest shared memory)
    iw = lowbit.int4_quantize(w, group_size=64, backend=t)
    for m in (4, 17, 65, 129, 257):
        xf = torch.randn(m, 256, generator=g)
        lowbit.w4a16_gemm(xf, iw, backend=t)
        lowbit.w8a16_gemm(xf, qb, sb, backend=t)


def recorded_launches(monkeypatch) -> list:
    """Run the ops under the interpreter and return their launches, each once."""
    kernel_class = _common._kernel_class()
    run = kernel_class.run
    seen = {}

    def recording(self, *args, grid, warmup, **kwargs):
        spec = _spec(self, args, kwargs)
        seen.setdefault(json.dumps(spec, sort_keys=True), spec)
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(kernel_class, "run", recording)
    _run_ops()
    return list(seen.values())


# Constexprs that only the interpreter sets (a bf16 tensor passed as its int16 bits, because
# the interpreter's own fp32 -> bf16 cast truncates), and the pointers they retype.
_INTERPRETER_BITS = {"BF16_BITS": ("c_ptr",), "OUT_BF16_BITS": ("c_ptr",),
                     "X_BF16_BITS": ("x_ptr",)}


def _gpu_forms(spec: dict, target: str) -> list:
    """The launches a GPU of ``target`` makes in place of a recorded one, as the host code
    decides them there: bf16 tensors as bf16 (``_INTERPRETER_BITS``); the e4m3fnuz GEMM
    native on MI300 (gfx942: e4m3fnuz pointers, no decoding); the saturating e4m3fn
    quantizer with the hardware cast on sm_90 (its default there) and without (the switch
    off); none for the OCP fp8 GEMM on sm_80, which lowbit's Triton backend refuses (no fp8
    tl.dot: lowbit/backends/triton.py, _gemm_supports); the weight-only GEMM's tiles fitted
    to the target's shared memory (the interpreter fits none)."""
    spec = json.loads(json.dumps(spec))  # a copy
    consts, sig = spec["constexprs"], spec["signature"]
    for flag, ptrs in _INTERPRETER_BITS.items():
        if consts.get(flag):
            consts[flag] = False
            for ptr in ptrs:  # (a split GEMM's fp32 workspace keeps its type)
                if sig[ptr] == "*i16":
                    sig[ptr] = "*bf16"
    if spec["name"] == "_wxa16_kernel":  # its tiles fitted to the target's shared memory
        from lowbit.triton_kernels import heuristics as H

        opts = spec["options"]
        cfg = H.wxa16_fit_smem(
            H.GemmConfig(consts["BLOCK_M"], consts["BLOCK_N"], consts["BLOCK_K"],
                         consts["GROUP_M"], opts["num_warps"], opts["num_stages"]),
            consts["BITS"], 4 if consts["FP32_DOT"] else 2, SMEM[target])
        consts.update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n)
        opts["num_stages"] = cfg.num_stages
    if spec["name"] == "_fp8_scaled_mm_kernel":
        if target == "sm80" and sig["a_ptr"] in ("*fp8e4nv", "*fp8e5"):
            return []
        if consts.get("DECODE") and target == "gfx942":
            consts["DECODE"] = False
            sig["a_ptr"] = sig["b_ptr"] = "*fp8e4b8"
    forms = [spec]
    if target == "sm90" and consts.get("HW_CAST") is False and consts.get("SATURATE") and \
            consts.get("MAX_CODE") == 0x7E and consts.get("NEG_ZERO"):  # e4m3fn's constants
        cast = json.loads(json.dumps(spec))
        cast["constexprs"]["HW_CAST"] = True
        forms.append(cast)
    return forms + _large_tiles(spec, target)


def _large_tiles(spec: dict, target: str) -> list:
    """A GEMM launch again with the tiles the host code picks for full-size problems on
    ``target`` (its table's configs fitted to the chip's shared memory: MI300 has 64 KB,
    not an H100's 227): M = 1 and 64 where the launch is a decode one (the weight-only
    GEMM's split), else M = 64 and 4096, on a 4096 x 4096 weight (the weight-only GEMM's
    also with its N tiles narrowed to the target's SM count)."""
    from lowbit.triton_kernels import heuristics as H

    consts, name, smem = spec["constexprs"], spec["name"], SMEM[target]
    if name == "_fp8_scaled_mm_kernel":
        cfgs = [H.fp8_gemm_config(m, 4096, 4096, consts["FAST_ACCUM"], consts["BLOCKWISE"],
                                  smem_limit=smem, decoded=consts.get("DECODE", False))
                for m in (1, 64, 4096)]
    elif name == "_int8_gemm_kernel":
        cfgs = [H.int8_gemm_config(m, 4096, 4096, smem_limit=smem) for m in (1, 64, 4096)]
    elif name == "_wxa16_kernel":
        group = 0 if consts["PER_CHANNEL"] else 64  # the recorded weights' groups
        x_bytes = 4 if consts["FP32_DOT"] else 2
        cfgs = [H.wxa16_gemm_config(m, 4096, 4096, group, consts["BITS"], x_bytes, smem, sms)
                for m in ((1, 16) if consts["PARTIAL"] else (64, 128, 256, 4096))
                for sms in (None, SMS[target])]
    else:
        return _gpu_quantizer_tiles(spec)
    forms = []
    for cfg in cfgs:
        form = json.loads(json.dumps(spec))
        form["constexprs"].update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                                  BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m)
        if "K_UNROLL" in consts:
            form["constexprs"]["K_UNROLL"] = cfg.k_unroll
        form["options"].update(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        if form != spec and form not in forms:
            forms.append(form)
    return forms


def _gpu_quantizer_tiles(spec: dict) -> list:
    """A quantizer or dequantizer launch again with the tiles a GPU takes (the interpreter's
    are other sizes): elementwise tiles of 4096 x 4096 and 4096 x 1024 inputs; segment tiles
    of 4096-long rows (held in registers), 16384-long rows (two passes) and groups of 128;
    the 128 x 128 block quantizer's GPU slices; the int4 quantizer's 32 rows."""
    from lowbit.triton_kernels import heuristics as H

    name, variants = spec["name"], []
    if name in ("_extent_kernel", "_quant_tensor_kernel", "_dequant_kernel"):
        for rows, cols in ((4096, 4096), (4096, 1024)):
            br, bk = H.elementwise_tile(rows, cols)
            variants.append(({"BLOCK_R": br, "BLOCK_K": bk}, {}))
    elif name == "_quant_segment_kernel":
        for segs, seg_len in ((4096, 4096), (4096, 16384), (4096 * 32, 128)):
            bs, bk, one, warps = H.segment_tile(segs, seg_len)
            variants.append(({"BLOCK_S": bs, "BLOCK_K": bk, "ONE_TILE": one},
                             {"num_warps": warps}))
    elif name == "_quant_block2d_kernel":
        variants.append(({"SUB_R": H.block2d_sub_rows()}, {}))
    elif name == "_int4_quant_kernel":
        from lowbit.triton_kernels import int4_quant
        variants.append(({"BLOCK_N": int4_quant.BLOCK_N}, {}))
    forms = []
    for consts, options in variants:
        form = json.loads(json.dumps(spec))
        form["constexprs"].update(consts)
        form["options"].update(options)
        if form != spec and form not in forms:
            forms.append(form)
    return forms


def compile_launches(path: str, target: str) -> None:
    """Compile every launch in the JSON file at ``path`` for ``target`` (TARGETS' key);
    raises on the first that fails, naming it. Run without the interpreter."""
    import importlib

    with open(path) as f:
        launches = json.load(f)
    forms = [form for spec in launches for form in _gpu_forms(spec, target)]
    for spec in forms:
        kernel = getattr(importlib.import_module(spec["module"]), spec["name"])
        options = dict(spec["options"])
        if TARGETS[target][0] == "cuda" and "enable_fp_fusion" in options and \
                _common._nvidia_reflect_ftz_option():
            options["enable_reflect_ftz"] = False  # what such a launch adds on NVIDIA GPUs
        what = f"{spec['name']} {spec['constexprs']} {options} for {target}"
        try:
            c = compile_kernel(kernel, TARGETS[target], spec["signature"], spec["constexprs"],
                               spec["aligned"], options)
        except Exception as e:  # noqa: BLE001 -- re-raised with the launch named
            raise AssertionError(f"{what}: {type(e).__name__}: {e}") from e
        assert c.metadata.shared <= SMEM[target], f"{what}: {c.metadata.shared} bytes of smem"


@pytest.fixture(scope="module")
def launches_file(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        launches = recorded_launches(mp)
    finally:
        mp.undo()
    path = tmp_path_factory.mktemp("launches") / "launches.json"
    path.write_text(json.dumps(launches))
    return str(path), launches


def test_the_ops_launch_every_kernel(launches_file):
    """The recorded calls reach every Triton kernel of the package (a new kernel must join
    _run_ops to be checked)."""
    _, launches = launches_file
    got = {(s["module"].rsplit(".", 1)[1], s["name"]) for s in launches}
    import importlib

    want = set()
    for mod_name in ("_common", "fp8_gemm", "fp8_quant", "int8_gemm", "int8_quant",
                     "int4_quant", "wxa16_gemm"):
        mod = importlib.import_module(f"lowbit.triton_kernels.{mod_name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, _common._kernel_class()) and name.endswith("_kernel") and \
                    obj.fn.__module__ == mod.__name__:
                want.add((mod_name, name))
    assert want - got == set(), f"kernels no recorded call launches: {sorted(want - got)}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_launch_compiles_for(target, launches_file):
    """In a fresh process: this one imported triton for the interpreter, which cannot
    compile."""
    path, _ = launches_file
    call_in_fresh_process(__file__, f"compile_launches({path!r}, {target!r})", timeout=1200)
