"""Benchmarks: one module per topic; results go to docs/benchmarks.md."""
