"""Append a benchmark's results to docs/benchmarks.md, with the machine and the date."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks.md"
_HEADER = (
    "# Benchmarks\n\n"
    "Results appended by `python -m benchmarks NAME --record`; newest last. Each entry names\n"
    "the machine it ran on. Timings on shared machines vary by about +-30 %.\n"
)


def machine() -> str:
    """One line describing where the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}"
    )


def append(title: str, lines: list[str]) -> None:
    """Add one dated section to docs/benchmarks.md."""
    text = RESULTS.read_text() if RESULTS.exists() else _HEADER
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = [f"\n## {title} ({stamp})\n\n", f"Machine: {machine()}\n", *[f"{x}\n" for x in lines]]
    RESULTS.write_text(text.rstrip("\n") + "\n" + "".join(section))
