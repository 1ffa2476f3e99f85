"""Layers (docs/architecture.md): contracts <- drivers <- core services <- app/cli.

Checked by reading imports, so a violation fails here rather than in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

CONTRACTS = {
    "gatewayd.model",
    "gatewayd.batch",
    "gatewayd.driver",
    "gatewayd.errors",
    "gatewayd.backoff",
}
TOP = {"gatewayd.app", "gatewayd.cli", "gatewayd.demo", "gatewayd.__main__"}


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {m for m in found if m.split(".")[0] in {"gatewayd", "drivers"}}


def _layer(module: str) -> int:
    if module in CONTRACTS:
        return 0
    if module.startswith("drivers"):
        return 1
    if module in TOP:
        return 3
    return 2


def test_imports_respect_the_layers():
    problems = []
    for path in sorted([*ROOT.glob("gatewayd/**/*.py"), *ROOT.glob("drivers/**/*.py")]):
        mod = _module(path)
        for imported in _imports(path):
            if _layer(imported) > _layer(mod):
                problems.append(f"{mod} (layer {_layer(mod)}) imports {imported}")
    assert not problems, "\n".join(problems)


def test_drivers_do_not_import_each_other():
    problems = []
    for path in sorted(ROOT.glob("drivers/*/**/*.py")):
        own = _module(path).split(".")[1]
        for imported in _imports(path):
            parts = imported.split(".")
            if parts[0] == "drivers" and len(parts) > 1 and parts[1] != own:
                problems.append(f"{_module(path)} imports {imported}")
    assert not problems, "\n".join(problems)
