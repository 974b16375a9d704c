"""Timing scripts (run as ``python -m benchmarks.<name>``); never imported by the library."""
