"""Render the configuration reference and the commented example from the models.

Both files are generated so they cannot drift from the code: a test regenerates them and
compares (`python -m gatewayd.config_docs` rewrites them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gatewayd.config_yaml import MAX_DEPTH, MAX_INT_CHARS, MAX_NODES
from gatewayd.driver import MIN_INTERVAL_S
from gatewayd.registry import BUILTIN
from gatewayd.settings import Settings

__all__ = ["render_example", "render_reference"]

ROOT = Path(__file__).resolve().parent.parent
_SECTIONS = ("gateway", "cloud", "outbox", "shadows", "api", "state_dir", "products", "logging")


def render_reference() -> str:
    """docs/configuration.md: every key with its type, default and meaning."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the configuration models by `python -m gatewayd.config_docs`; do not",
        "edit by hand. The main file is `/etc/gatewayd/gatewayd.yaml`; files in `conf.d/*.yaml`",
        "next to it are merged over it in name order (mappings merge key by key, lists are",
        "replaced); `GATEWAYD_<SECTION>__<KEY>` environment variables override both. Unknown keys",
        "are errors. `gatewayd check-config -c FILE` validates and exits 78 on any error.",
        "`gatewayd print-schema` prints the JSON schema for editors.",
        "",
        *_refusals(),
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        if name == "connections":
            continue
        lines.extend(_rows(name, field))
    lines += [
        "",
        "## Connections",
        "",
        "`connections` maps a connection id to one physical resource (a TCP endpoint, a serial",
        "port, a BLE adapter). `driver` picks the protocol; `devices` maps a device id to a",
        "device on that connection, and each device's `points` maps a point id to a value.",
        "",
    ]
    for spec in BUILTIN:
        lines += [
            f"### driver: {spec.kind}",
            "",
            "| key | type | default | meaning |",
            "| --- | --- | --- | --- |",
        ]
        for name, field in spec.config.model_fields.items():
            if name == "devices":
                continue
            lines.extend(_rows(f"connections.ID.{name}", field))
        for name, field in spec.device.model_fields.items():
            if name in {"points", "id"}:
                continue
            lines.extend(_rows(f"connections.ID.devices.ID.{name}", field))
        for name, field in spec.point.model_fields.items():
            if name == "id":
                continue
            lines.extend(_rows(f"connections.ID.devices.ID.points.ID.{name}", field))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _refusals() -> list[str]:
    """What is refused although each key alone may look fine: the rules, with their bounds."""
    return [
        "## What is refused",
        "",
        "Every problem is reported with its file and line (or its environment variable) and",
        "its key path, all at once, and `gatewayd run` exits 78 on the same problems, so",
        "systemd does not restart it. Besides a wrong type or value and an unknown key:",
        "",
        "- a key written twice in one mapping (YAML would keep the second silently); keys that",
        "  YAML reads as numbers or booleans (`1:`, `on:`): quote them;",
        (
            f"- a document nested deeper than {MAX_DEPTH} levels, holding more than "
            f"{MAX_NODES:,} values once"
        ),
        "  aliases are expanded, or with an alias inside the value it names; an integer longer",
        f"  than {MAX_INT_CHARS} characters; a date that does not exist; a byte that is not UTF-8;",
        "- a `GATEWAYD_*` variable that names no key (its parts, split at `__`, must be a path",
        "  of keys, as in YAML), and a variable that sets a section as JSON",
        "  (`GATEWAYD_CONNECTIONS='{...}'`) that is not JSON;",
        "- a value that is not implemented: `cloud.dialect` is `native` only;",
        f"- `interval_s` below {MIN_INTERVAL_S} s (no field bus answers faster; below it a poll",
        "  is a busy loop);",
        "- `state_dir` naming a file (or a path under a file);",
        "- the same physical device in two connections (the same Modbus TCP host, port and",
        "  `unit_id`, or the same Bluetooth address), one serial port in two connections, and",
        "  two devices with the same registry device id (`{product_id}_{node_id}`). Devices",
        "  sharing one unit id (one meter read as several devices) go under one connection.",
        "",
        "`check-config` also warns about a device whose `product_id` has no product file, a",
        "point that is not a property of its device's product (at run time its values would be",
        "reported as bad), a point whose `writable` differs from its property's access, and a",
        "settable property no point can write; `check-config --strict` makes these warnings",
        "errors (exit 78), for a site whose product files are in place.",
        "",
        "## Keys",
        "",
    ]


def _rows(path: str, field: FieldInfo) -> list[str]:
    model = _model_of(field.annotation)
    if model is not None:
        rows = [f"| `{path}` | section | | {_doc(model)} |"]
        for name, sub in model.model_fields.items():
            rows.extend(_rows(f"{path}.{name}", sub))
        return rows
    return [f"| `{path}` | {_type(field)} | {_default(field)} | {field.description or ''} |"]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _doc(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().splitlines()[0]


def _type(field: FieldInfo) -> str:
    text = str(field.annotation).replace("typing.", "").replace("pathlib.", "")
    text = text.replace("<class '", "").replace("'>", "")
    for model in _nested_models(field.annotation):
        text = text.replace(f"{model.__module__}.{model.__qualname__}", model.__name__)
    return f"`{text}`".replace("|", "\\|")


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    found = []
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            found.append(arg)
        found.extend(_nested_models(arg))
    return found


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = _default_value(field)
    return f"`{json.dumps(value, default=str)}`".replace("|", "\\|")


def _default_value(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        value = None
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    return value


def render_example() -> str:
    """config/gatewayd.example.yaml: every key at its default, commented."""
    lines = [
        "# gatewayd configuration: every key at its default, with what it means.",
        "# Generated by `python -m gatewayd.config_docs`; docs/configuration.md has the same.",
        "# Copy to /etc/gatewayd/gatewayd.yaml and change what you need. Per-driver examples",
        "# live next to this file (config/*.example.yaml).",
        "",
    ]
    for name in _SECTIONS:
        field = Settings.model_fields[name]
        lines.extend(_example(name, field, 0))
        lines.append("")
    lines += [
        "# Field connections keyed by id; see the per-driver examples for each driver's keys.",
        "connections:",
        "  virtual:",
        "    driver: memory",
        "    devices:",
        "      room:",
        "        interval_s: 10.0",
        "        points:",
        '          temperature: {initial: 21.0, unit: "°C"}',
    ]
    return "\n".join(lines) + "\n"


def _example(name: str, field: FieldInfo, depth: int) -> list[str]:
    pad = "  " * depth
    out = [f"{pad}# {field.description}"] if field.description else []
    model = _model_of(field.annotation)
    if model is not None:
        out = [f"{pad}# {_doc(model)}", f"{pad}{name}:"]
        for sub_name, sub in model.model_fields.items():
            out.extend(_example(sub_name, sub, depth + 1))
        return out
    if field.is_required():
        out.append(f"{pad}{name}: {_required_example(name)}  # required")
        return out
    value = _default_value(field)
    out.append(f"{pad}{name}: {json.dumps(value, ensure_ascii=False)}")
    return out


def _required_example(name: str) -> str:
    return {"node_id": "gw-0001"}.get(name, '""')


def main() -> int:
    """Rewrite docs/configuration.md and config/gatewayd.example.yaml."""
    (ROOT / "docs" / "configuration.md").write_text(render_reference(), encoding="utf-8")
    (ROOT / "config" / "gatewayd.example.yaml").write_text(render_example(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
