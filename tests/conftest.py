import os

import pytest
import torch


def _load_triton_kernels_interpreted():
    """Without a GPU the Triton kernels run under Triton's interpreter, which a kernel gets
    only if TRITON_INTERPRET=1 is set when its module defines it (triton.jit reads it then).
    The conftest runs before any test module (in every pytest-xdist worker too), so the
    kernels' modules are loaded here, under the variable, whatever order the test modules
    import in; the variable is then restored, so other tests see the environment they set."""
    if torch.cuda.is_available():
        return
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
    except ImportError:  # the Triton tests skip
        pass
    else:
        import lowbit.triton_kernels.fp8_gemm  # noqa: F401
        import lowbit.triton_kernels.fp8_quant  # noqa: F401
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


_load_triton_kernels_interpreted()

# Reproducible property tests in CI; a developer can still ask for more examples.
try:
    from hypothesis import settings

    settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
    settings.register_profile("dev", max_examples=200, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # the GPU machine may lack hypothesis; those tests skip there
    pass


def _shard(config, items):
    """LOWBIT_TEST_SHARD=i/n keeps every n-th collected test from the i-th on, so that n runs
    (i = 0 .. n - 1) split a suite that outlasts one call on the lent GPU, each with tests of
    every file; the n shards partition the collection."""
    shard = os.environ.get("LOWBIT_TEST_SHARD")
    if not shard:
        return
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise pytest.UsageError(f"LOWBIT_TEST_SHARD={shard!r}: expected i/n with 0 <= i < n")
    keep = items[i::n]
    kept = {id(item) for item in keep}
    config.hook.pytest_deselected(items=[item for item in items if id(item) not in kept])
    items[:] = keep


def pytest_collection_modifyitems(config, items):
    _shard(config, items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def triton_interpreter(monkeypatch):
    """Without a GPU, TRITON_INTERPRET=1 for the test: the Triton backend then takes CPU
    tensors (the kernels were loaded interpreted above)."""
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


@pytest.fixture(autouse=True)
def _fresh_kernel_choices():
    # Remembered kernel choices (lowbit._backend) must not leak from a test that monkeypatches
    # what supports() reads (capabilities, environment, registrations) into the next test.
    from lowbit import _backend
    _backend._choices.clear()
    yield
    _backend._choices.clear()


@pytest.fixture
def unchecked_values(monkeypatch):
    """LOWBIT_CHECK_SCALES=0 for the test: static scales and zero points the ops refuse where
    they read values (0 and subnormal scales, zero points out of range) reach the kernels on
    the CPU too, as they do on a GPU by default; the kernels' tests compare what each backend
    does with them against the reference, bit for bit."""
    monkeypatch.setenv("LOWBIT_CHECK_SCALES", "0")


@pytest.fixture
def python_step(monkeypatch):
    """The quantized modules' Python path for the test: their forwards do not enter the C++
    plans of lowbit._torch_ops (tests/test_native_ops.py tests those), so that the module's
    own prepared step runs, as it does where the library is not built."""
    from lowbit.nn import _layer
    monkeypatch.setattr(_layer, "_MODULE_ENTRY", {})
    yield
