"""`python -m benchmarks [NAME ...] [--record]`: run benchmark modules (default: all).

Each module in this package exposes `main(argv: list[str]) -> int`; `--record` (passed on)
appends the results to docs/benchmarks.md with the machine and the date. Long ones (`soak`,
an hour by default) run only when named.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

LONG = frozenset({"soak"})


def _available() -> list[str]:
    here = str(Path(__file__).parent)
    return sorted(m.name for m in pkgutil.iter_modules([here]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    available = _available()
    # Leading names pick the benchmarks; everything from the first option on is passed to
    # them, so options can take values (`modbus_e2e --duration-s 300`).
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, flags = list(argv[:split]), list(argv[split:])
    if "-h" in flags or "--help" in flags:
        print(__doc__)
        print("available:", ", ".join(available))
        return 0
    unknown = sorted(set(names) - set(available))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}")
        return 2
    worst = 0
    for name in names or [n for n in available if n not in LONG]:
        module = importlib.import_module(f"benchmarks.{name}")
        worst = max(worst, int(module.main(flags)))
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
