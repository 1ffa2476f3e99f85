"""Benchmarks: one module per topic, run with `python -m benchmarks NAME`."""
