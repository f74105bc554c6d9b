"""Benchmarks of lilaw-med: accuracy under label noise, step cost, audit quality.

Run from the repository root: ``python -m benchmarks.run --suite all --budget 60``. The real
MedMNIST data are read from ``$LILAW_SHARED_DATA`` or ``../shared/data``; suites that need them
skip with a message when the folder is absent.
"""
