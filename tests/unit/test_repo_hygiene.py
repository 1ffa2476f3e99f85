"""Nothing half-merged ships: no conflict markers in any tracked text file."""

from __future__ import annotations

import subprocess

from tests.helpers import ROOT

MARKERS = ("<" * 7 + " ", ">" * 7 + " ")


def test_no_conflict_markers():
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    found = []
    for name in files:
        path = ROOT / name
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        found += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1)
                  if line.startswith(MARKERS)]  # fmt: skip
    assert not found, found
