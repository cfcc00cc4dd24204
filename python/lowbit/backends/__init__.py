"""Kernel backends. Importing a module here registers its kernels with lowbit._backend;
``import lowbit`` imports this package, which imports every backend. The CUDA backend
imports without ``_C`` or a GPU (its kernels then say why they are unavailable) and the
Triton backend imports triton only when a kernel first runs."""
from . import cuda, reference, triton  # noqa: F401
