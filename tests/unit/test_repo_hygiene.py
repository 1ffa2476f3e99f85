"""Nothing half-merged ships, and the repository stands on its own.

No conflict markers in any tracked text file, and no tracked file points outside the
repository for what a contributor needs: no sibling `shared` directory, no design, style or
testing notes that are not in it, no cloud API named only by a number. What those notes held
is in docs/architecture.md, docs/testing.md and docs/style.md; the cloud APIs are named by what
they are (IoTDA's device registration, the device MQTT API).
"""

from __future__ import annotations

import re
import subprocess

from tests.helpers import ROOT

MARKERS = ("<" * 7 + " ", ">" * 7 + " ")
# Written so that this file does not match itself; our own docs/testing.md is lower case.
OUTSIDE = re.compile(r"(?i:\.\./shared|\bseeds? 00\d)|\b(DESIGN|STYLE|TESTING)\.md\b")


def _tracked_texts() -> list[tuple[str, str]]:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    texts = []
    for name in files:
        try:
            texts.append((name, (ROOT / name).read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def outside_references(text: str) -> list[int]:
    """Line numbers that cite something outside the repository."""
    return [n for n, line in enumerate(text.splitlines(), 1)
            if OUTSIDE.search(line)]  # fmt: skip


def test_no_conflict_markers():
    found = []
    for name, text in _tracked_texts():
        found += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1)
                  if line.startswith(MARKERS)]  # fmt: skip
    assert not found, found


def test_no_file_cites_notes_outside_the_repository():
    found = [f"{name}:{n}" for name, text in _tracked_texts() for n in outside_references(text)]
    assert not found, found


def test_outside_references_are_recognised():
    cited = ["see ../" + "shared/x", "DESIGN" + ".md 4.1", "(STYLE" + ".md", "TESTING" + ".md",
             "seed " + "004's rules", "Seeds " + "000/001"]  # fmt: skip
    assert outside_references("\n".join(cited)) == list(range(1, len(cited) + 1))
    own = ["docs/testing.md", "[style](style.md)", "a random seed 7", "seed = 0042"]
    assert outside_references("\n".join(own)) == []


def test_readme_links_every_doc_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(([^)#]+)\)", readme))
    local = {link for link in links if "://" not in link}
    assert [link for link in sorted(local) if not (ROOT / link).exists()] == []
    docs = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")}
    assert sorted(docs - local) == []


def test_benchmarks_page_starts_with_the_latest_figure_of_every_benchmark():
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    top = text.split("\n## ")[1]
    assert top.startswith("Latest figures"), top[:80]
    rows = [line.split("|")[1].strip() for line in top.splitlines() if line.startswith("| ")]
    named = {row.split()[0] for row in rows if row}
    benchmarks = {p.stem for p in (ROOT / "benchmarks").glob("[!_]*.py")}
    assert sorted(benchmarks - named) == []


def test_test_modules_outside_packages_have_unique_names():
    # pytest imports a test file outside a package by its basename alone: two of the same
    # name in such folders stop the whole run at collection.
    seen: dict[str, str] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if (path.parent / "__init__.py").exists():
            continue
        where = str(path.relative_to(ROOT))
        assert path.name not in seen, f"{where} and {seen[path.name]} share a module name"
        seen[path.name] = where
