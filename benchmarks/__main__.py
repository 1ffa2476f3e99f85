"""`python -m benchmarks NAME [ARGS]` runs benchmarks.NAME.main(ARGS).

With no NAME, every benchmark runs with `--record` (each appends to docs/benchmarks.md).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    names = sorted(
        m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name[0] != "_"
    )
    if len(sys.argv) < 2:  # `make bench`: every benchmark, results recorded
        for name in names:
            print(f"== {name}", flush=True)
            importlib.import_module(f"benchmarks.{name}").main(["--record"])
        return 0
    if sys.argv[1] not in names:
        print("usage: python -m benchmarks [NAME [ARGS]]\navailable: " + ", ".join(names))
        return 2
    module = importlib.import_module(f"benchmarks.{sys.argv[1]}")
    return int(module.main(sys.argv[2:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
