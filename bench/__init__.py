"""Development benchmarks that `lowbit bench` does not cover (not part of the package); they
time and print through lowbit.bench's timing and table modules. Run from the repo root as
``python -m bench.<tool>``."""
