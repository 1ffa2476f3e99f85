"""Speed and memory measurements: `python -m benchmarks <name>` (results in docs/benchmarks.md)."""
