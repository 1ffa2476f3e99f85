"""Layers (docs/architecture.md): contracts <- drivers <- core services <- app/cli.

Checked by reading imports, so a violation fails here rather than in review. Every import
counts: `import a.b`, `from a import b` (the module `a.b` when it is one, else `a`),
relative imports, and imports anywhere in the file (inside functions, `if TYPE_CHECKING:`).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ROOT

CONTRACTS = {
    "gatewayd.model",
    "gatewayd.batch",
    "gatewayd.driver",
    "gatewayd.errors",
    "gatewayd.backoff",
}
TOP = {"gatewayd.app", "gatewayd.cli", "gatewayd.demo", "gatewayd.__main__"}
# Packages whose __init__ holds no code of a layer (a docstring, the version).
NEUTRAL = {"gatewayd", "drivers"}


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports_of(source: str, module: str, *, package: bool = False) -> set[str]:
    """Every gatewayd/drivers module `source` (the text of `module`) imports."""
    tree = ast.parse(source, module)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if alias.name != "*" and _is_module(sub) else base)
    return {m for m in found if m.split(".")[0] in NEUTRAL and m not in NEUTRAL}


def _imports(path: Path) -> set[str]:
    return _imports_of(path.read_text(), _module(path), package=path.name == "__init__.py")


def _layer(module: str) -> int:
    if module in CONTRACTS:
        return 0
    if module.startswith("drivers"):
        return 1
    if module in TOP:
        return 3
    return 2


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def _upward(mod: str, imported: str) -> str | None:
    if _layer(imported) > _layer(mod):
        return f"{mod} (layer {_layer(mod)}) imports {imported} (layer {_layer(imported)})"
    return None


def _other_driver(mod: str, imported: str) -> str | None:
    if not _within(mod, "drivers") or not _within(imported, "drivers"):
        return None
    if imported.split(".")[:2] != mod.split(".")[:2]:
        return f"driver {mod} imports another driver's {imported}"
    return None


def _driver_above_contract(mod: str, imported: str) -> str | None:
    if _within(mod, "drivers") and _within(imported, "gatewayd") and imported not in CONTRACTS:
        return f"driver {mod} imports {imported}, above the contract"
    return None


def _store_dialect(mod: str, imported: str) -> str | None:
    if _within(mod, "gatewayd.store") and _within(imported, "gatewayd.cloud.dialects"):
        return f"store {mod} imports the dialect {imported}"
    return None


def _dialect_bridge(mod: str, imported: str) -> str | None:
    if _within(mod, "gatewayd.cloud.dialects") and _within(imported, "gatewayd.bridge"):
        return f"dialect {mod} imports the bridge's {imported}"
    return None


Rule = Callable[[str, str], "str | None"]
RULES: dict[str, Rule] = {
    "upward": _upward,
    "other_driver": _other_driver,
    "driver_above_contract": _driver_above_contract,
    "store_dialect": _store_dialect,
    "dialect_bridge": _dialect_bridge,
}


@functools.cache
def _import_map() -> dict[str, frozenset[str]]:
    """Each module of gatewayd/ and drivers/ with what it imports, parsed once for all rules."""
    paths = sorted([*ROOT.glob("gatewayd/**/*.py"), *ROOT.glob("drivers/**/*.py")])
    return {_module(path): frozenset(_imports(path)) for path in paths}


@pytest.mark.parametrize("rule", RULES)
def test_imports_respect_the_layers(rule):
    check = RULES[rule]
    problems = [
        problem
        for module, imports in _import_map().items()
        for imported in sorted(imports)
        if (problem := check(module, imported)) is not None
    ]
    assert not problems, "\n".join(problems)


def test_every_import_form_is_seen():
    source = """
import gatewayd.errors
from gatewayd import app
from gatewayd.store import db as database, errors
from drivers import modbus
from . import config
from .plan import plan_reads
from ..memory import driver

def later():
    from gatewayd.cloud.dialects import native
    import gatewayd.bridge.reconcile

if TYPE_CHECKING:
    from gatewayd.health import Component
"""
    assert _imports_of(source, "drivers.modbus.session") == {
        "gatewayd.errors",
        "gatewayd.app",
        "gatewayd.store.db",
        "gatewayd.store.errors",
        "drivers.modbus",
        "drivers.modbus.config",
        "drivers.modbus.plan",
        "drivers.memory.driver",
        "gatewayd.cloud.dialects.native",
        "gatewayd.bridge.reconcile",
        "gatewayd.health",
    }
    assert _imports_of("from . import driver", "drivers.memory", package=True) == {
        "drivers.memory.driver"
    }


@pytest.mark.parametrize(
    ("rule", "module", "imported"),
    [
        ("upward", "gatewayd.store.registry", "gatewayd.app"),
        ("upward", "gatewayd.model", "gatewayd.settings"),
        ("other_driver", "drivers.serial.driver", "drivers.modbus"),
        ("other_driver", "drivers.ble.session", "drivers.serial.framing"),
        ("driver_above_contract", "drivers.memory.driver", "gatewayd.settings"),
        ("driver_above_contract", "drivers.modbus.tcp", "gatewayd.bridge.runner"),
        ("store_dialect", "gatewayd.store.shadows", "gatewayd.cloud.dialects.native"),
        ("dialect_bridge", "gatewayd.cloud.dialects.native", "gatewayd.bridge.points"),
    ],
)
def test_each_rule_names_a_wrong_import(rule, module, imported):
    assert RULES[rule](module, imported) is not None
