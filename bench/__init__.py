"""Benchmarks: scripts that measure renegx, run as `python -m bench.<name>` from the repository root."""
