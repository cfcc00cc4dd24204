"""The machine code of the built kernels, read without a GPU.

cuobjdump (NVIDIA's ``nvidia-cuda-cuobjdump`` wheel, a test dependency, or the toolkit's)
reads lowbit._C's cubins: each GEMM family must run on the tensor-core instruction its
README row names (the INT8 wgmma kernels on IGMMA, the FP8 ones on QGMMA, W4A16 on wgmma
with the weight as the register operand, the A100 path on IMMA), and the hot kernels must
keep their state in registers (no stack frame: no spill to local memory; for the weight-only
decode kernels, no local memory access inside their loops). A kernel change
that loses either shows here, on the CPU, instead of as a slower row on the next GPU run.
Skips when lowbit._C has no CUDA code or cuobjdump is missing.
"""
import os
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache

import pytest

import lowbit


def _cuobjdump():
    """cuobjdump, where nvdisasm (which its -sass runs) is beside it or on PATH."""
    found = shutil.which("cuobjdump")
    candidates = [found] if found else []
    try:
        import nvidia
    except ImportError:
        nvidia = None
    for root in nvidia.__path__ if nvidia is not None else ():
        for sub in ("cu13", "cu12", "cuda_cuobjdump"):
            candidates.append(os.path.join(root, sub, "bin", "cuobjdump"))
    for path in candidates:
        beside = os.path.join(os.path.dirname(path), "nvdisasm")
        if os.access(path, os.X_OK) and (os.access(beside, os.X_OK) or shutil.which("nvdisasm")):
            return path
    return None


def _library():
    if not lowbit.build_info().get("cuda"):
        return None
    from lowbit import _C

    return _C.__file__


CUOBJDUMP = _cuobjdump()
LIBRARY = _library()
pytestmark = pytest.mark.skipif(
    CUOBJDUMP is None or LIBRARY is None,
    reason="needs lowbit._C built with CUDA, and cuobjdump with nvdisasm (pip install "
           "nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
ARCHS = set(lowbit.build_info().get("cuda_archs", "").split(",")) - {""}


def _run(*args):
    return subprocess.run([CUOBJDUMP, *args], check=True, capture_output=True,
                          text=True).stdout


def _demangle(names):
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:  # the checks match demangled template arguments
        pytest.skip("needs c++filt (binutils)")
    out = subprocess.run([cxxfilt], input="\n".join(names), check=True, capture_output=True,
                         text=True).stdout
    return out.splitlines()


@lru_cache(maxsize=None)
def resources():
    """{(arch, demangled kernel): stack frame bytes} over every cubin of the library."""
    lines = _run("-res-usage", LIBRARY).splitlines()
    arch, rows = None, []
    for i, line in enumerate(lines):
        m = re.search(r"arch = (sm_\w+)", line)
        if m:
            arch = m.group(1)
        m = re.match(r"\s*Function (\S+):", line)
        if m and i + 1 < len(lines):
            stack = re.search(r"STACK:(\d+)", lines[i + 1])
            rows.append((arch, m.group(1), int(stack.group(1)) if stack else 0))
    names = _demangle([r[1] for r in rows])
    return {(arch, name): stack for (arch, _, stack), name in zip(rows, names)}


@lru_cache(maxsize=None)
def _cubins():
    """The library's cubins as cuobjdump -lelf lists them."""
    return _run("-lelf", LIBRARY)


def _sass_of(cubin):
    """SASS of one cubin of the library (its -lelf name), or None when the build has none."""
    if cubin not in _cubins():
        return None
    with tempfile.TemporaryDirectory() as tmp:  # -xelf writes the cubin where it runs
        subprocess.run([CUOBJDUMP, "-xelf", cubin, LIBRARY], check=True, cwd=tmp,
                       capture_output=True)
        return _run("-sass", os.path.join(tmp, cubin))


@lru_cache(maxsize=None)
def tensor_core_ops(cubin):
    """{tensor-core mnemonic with shape and types: [its operands]} in one cubin of the
    library (its name as cuobjdump -lelf lists it, e.g. sm90_int8_gemm_wgmma.sm_90a.cubin)."""
    sass = _sass_of(cubin)
    if sass is None:
        pytest.skip(f"{cubin} is not in this build")
    ops = {}
    for m in re.finditer(r"\b((?:[HIQ]GMMA|HMMA|IMMA|QMMA)\.\S+)\s+([^;]*);", sass):
        ops.setdefault(m.group(1), []).append(m.group(2))
    return ops


@lru_cache(maxsize=None)
def local_memory_in_loops(cubin):
    """{demangled kernel: (local loads and stores (LDL, STL) inside its loops, its loops)}
    for one cubin of the library; a loop is the span from a backward branch's target to the
    branch."""
    sass = _sass_of(cubin)
    if sass is None:
        pytest.skip(f"{cubin} is not in this build")
    mangled, counts = [], []
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        name, body = part.split("\n", 1)
        code = [(int(m.group(1), 16), m.group(2)) for m in
                re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", body)]
        loops = [(int(t.group(1), 16), at) for at, ins in code if "BRA" in ins
                 for t in [re.search(r"BRA\s+(?:`\(\S+\)\s*)?0x([0-9a-f]+)", ins)]
                 if t and int(t.group(1), 16) < at]
        mangled.append(name.strip())
        counts.append((sum(1 for at, ins in code if re.search(r"\b(?:LDL|STL)\b", ins)
                           and any(lo <= at <= hi for lo, hi in loops)), len(loops)))
    return dict(zip(_demangle(mangled), counts))


# (translation unit, arch, the instruction its kernels must issue, instructions they must not)
TENSOR_CORE = [
    ("sm90_fp8_gemm_wgmma", "90a", "QGMMA", ("HGMMA", "IGMMA", "HMMA")),
    ("sm90_fp8_gemm_swapab", "90a", "QGMMA", ("HGMMA", "IGMMA", "HMMA")),
    ("sm90_fp8_linear_swapab", "90a", "QGMMA", ("HGMMA", "IGMMA", "HMMA")),
    ("sm90_int8_gemm_wgmma", "90a", "IGMMA", ("QGMMA", "HGMMA", "IMMA")),
    ("sm90_int8_gemm_swapab", "90a", "IGMMA", ("QGMMA", "HGMMA", "IMMA")),
    ("sm90_int8_linear_swapab", "90a", "IGMMA", ("QGMMA", "HGMMA", "IMMA")),
    ("sm90_wxa16_gemm_wgmma", "90a", "HGMMA", ("QGMMA", "IGMMA")),
    ("sm89_fp8_gemm_mma", "89", "QMMA", ()),
    ("sm89_fp8_gemm_smallm", "89", "QMMA", ()),
    ("sm80_int8_gemm_mma", "80", "IMMA", ()),
    ("sm80_int8_gemm_smallm", "80", "IMMA", ()),
    ("wxa16_gemm", "80", "HMMA", ()),
]


@pytest.mark.parametrize("unit,arch,want,never", TENSOR_CORE,
                         ids=[f"{u}.sm_{a}" for u, a, _, _ in TENSOR_CORE])
def test_tensor_core_instructions(unit, arch, want, never):
    if arch not in ARCHS:
        pytest.skip(f"built without sm_{arch}")
    ops = tensor_core_ops(f"{unit}.sm_{arch}.cubin")
    kinds = {op.split(".")[0] for op in ops}
    assert want in kinds, f"{unit} for sm_{arch} issues no {want}: {sorted(ops)}"
    assert not kinds & set(never), f"{unit} for sm_{arch} issues {sorted(kinds & set(never))}"


def test_w4a16_wgmma_takes_the_weight_from_registers():
    """Every wgmma of the W4A16/W8A16 kernel reads its A operand (the dequantized weight)
    from registers: `HGMMA... Rd, Ra, gdesc[...]`, not two shared-memory descriptors."""
    if "90a" not in ARCHS:
        pytest.skip("built without sm_90a")
    ops = tensor_core_ops("sm90_wxa16_gemm_wgmma.sm_90a.cubin")
    operands = [o for op, found in ops.items() if op.startswith("HGMMA") for o in found]
    assert operands
    smem_a = [o for o in operands if not re.match(r"R\d+, R\d+, gdesc\[", o)]
    assert not smem_a, f"wgmmas with the A operand in shared memory: {smem_a[:3]}"


def _stack_free(arch, name):
    """Kernels that must keep their state in registers (no stack frame), and the known
    exceptions."""
    if "sm90_gemm_swapab_kernel" in name or "wxa16_wgmma_kernel" in name:
        return True
    if "sm90_gemm_wgmma_kernel" in name:
        # INT8 with a 16- or 32-bit float output: the direct-store epilogue (outputs TMA
        # cannot address) of asymmetric activations corrects the zero point in 64 bits and
        # spills there, after the mainloop; the TMA-store path and the mainloop do not.
        # (The last template argument is the schedule: INT8 has the cooperative one only.)
        return not re.search(r"<lowbit::sm90::S8, false, false, false, [24], false, false>",
                             name)
    if re.search(r"quant::detail::\w+_kernel<\(lowbit::FloatType\)[12]", name):
        return True  # the bf16 / fp16 quantizers (fp32's software fp8 encoder may spill)
    if "mma_tiled::gemm_mma_kernel" in name:
        return arch != "sm_90a"  # sm_90a runs wgmma; its copy of the A100 path is a test path
    m = re.search(r"wxa16_decode_kernel<(\d), [\w:]+, (\d), (\d+), (true|false), "
                  r"(true|false)>", name)
    if m:
        if m.group(5) == "true":
            return True  # the wide kernel: one CTA per SM (it uses up to 254 of 255 registers)
        # One token tile, no zero points, groups of 64 or more: the decode rows PERF.md
        # times (M <= 8, group 128, symmetric). Two token tiles, zero points and groups of
        # 32 take more registers than the 128 of two CTAs per SM (bench/NOTES.md).
        return m.group(2) == "1" and m.group(4) == "false" and int(m.group(3)) >= 64
    return False


def _loop_state_only(name):
    """Kernels held to registers in their loops only: the W4A16/W8A16 decode kernel runs at
    the 128 registers of two CTAs per SM, where ptxas may park a value the epilogue needs
    (an index) in local memory across the main loop: one store before it, one load after,
    nothing per stage. What must stay in registers is the loop's state. (The wide kernel, at
    one CTA per SM, is held to no stack frame at all.)"""
    wide = re.search(r"wxa16_decode_kernel<[^>]*, true>", name)
    return "wxa16_decode_kernel<" in name and not wide


def test_hot_kernels_keep_their_state_in_registers():
    table = resources()
    checked = [(arch, name) for arch, name in table if _stack_free(arch, name)]
    assert len(checked) >= 20, "the kernel names changed: update _stack_free"
    spilled = []
    for arch, name in checked:
        if not table[arch, name]:
            continue
        if _loop_state_only(name):
            found = local_memory_in_loops(f"wxa16_gemm.{arch}.cubin").get(name)
            assert found is not None, f"{name} is not in wxa16_gemm.{arch}.cubin"
            in_loops, loops = found
            assert loops, f"no loop found in {name}'s SASS: the branch syntax changed"
            if in_loops == 0:
                continue
            spilled.append(f"{arch}: {name[:160]} ({table[arch, name]} bytes, "
                           f"{in_loops} local loads and stores in its loops)")
        else:
            spilled.append(f"{arch}: {name[:160]} ({table[arch, name]} bytes)")
    assert not spilled, "stack frames (local memory) in:\n" + "\n".join(spilled)


def test_every_arch_of_the_build_has_kernels():
    archs = {arch for arch, _ in resources()}
    assert {f"sm_{a}" for a in ARCHS} <= archs, (ARCHS, archs)
