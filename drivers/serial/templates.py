r"""Request and command templates: `str.format` fields, restricted to known names.

A template such as `"SET {value:.1f}"` or `"\x02{address}R\x03"` is checked when the
configuration loads (only `address`, `point` and `value` may appear, with no attribute or
index access), then rendered into bytes one byte per character.
"""

from __future__ import annotations

from string import Formatter

from drivers.serial.framing import text_bytes
from gatewayd.model import Value

__all__ = ["check_template", "render"]

_FORMATTER = Formatter()


def check_template(template: str, *, allowed: frozenset[str]) -> str:
    """Validate a template; return it unchanged.

    Raises:
        ValueError: unknown or dotted field names, or broken braces.
    """
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        msg = f"{template!r}: {exc}"
        raise ValueError(msg) from exc
    for _, name, spec, _ in parts:
        if name is None:
            continue
        if name not in allowed:
            msg = f"{template!r}: unknown field {{{name}}}; use {', '.join(sorted(allowed))}"
            raise ValueError(msg)
        if spec and "{" in spec:
            msg = f"{template!r}: nested fields are not supported"
            raise ValueError(msg)
    text_bytes(template.replace("{", "").replace("}", ""))
    return template


def render(template: str, **fields: Value) -> bytes:
    """Fill a checked template.

    Raises:
        ValueError: the value does not fit the field's format spec (e.g. `{value:d}` with 1.5).
    """
    try:
        text = template.format(**fields)
    except (ValueError, TypeError, KeyError) as exc:
        msg = f"template {template!r}: {exc}"
        raise ValueError(msg) from exc
    return text_bytes(text)
