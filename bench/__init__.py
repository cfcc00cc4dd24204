"""Benchmarks of lowbit against the torch anchors of PERF.md (not part of the package)."""
