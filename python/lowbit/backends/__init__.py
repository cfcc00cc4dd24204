"""Kernel backends. Importing a module here registers its kernels with lowbit._backend."""
