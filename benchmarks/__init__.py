"""Benchmarks: one module per topic, run with `python -m benchmarks NAME` (no name: all)."""

from __future__ import annotations

__all__: list[str] = []
