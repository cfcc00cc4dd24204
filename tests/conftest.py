import os

import pytest
import torch

# Reproducible property tests in CI; a developer can still ask for more examples.
try:
    from hypothesis import settings

    settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
    settings.register_profile("dev", max_examples=200, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # the GPU machine may lack hypothesis; those tests skip there
    pass


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_kernel_choices():
    # Remembered kernel choices (lowbit._backend) must not leak from a test that monkeypatches
    # what supports() reads (capabilities, environment, registrations) into the next test.
    from lowbit import _backend
    _backend._choices.clear()
    yield
    _backend._choices.clear()
