"""The built-in drivers, listed explicitly: one line per driver kind."""

from __future__ import annotations

from typing import Any

from drivers import ble, memory, modbus, serial
from gatewayd.driver import DriverSpec

__all__ = ["BUILTIN", "spec_for"]

BUILTIN: tuple[DriverSpec[Any, Any, Any], ...] = (
    memory.SPEC,
    modbus.SPEC,
    modbus.RTU_SPEC,
    modbus.RTU_TCP_SPEC,
    serial.SPEC,
    ble.SPEC,
)


def spec_for(kind: str) -> DriverSpec[Any, Any, Any]:
    """The spec registered for a `driver:` value."""
    for spec in BUILTIN:
        if spec.kind == kind:
            return spec
    msg = f"unknown driver {kind!r}"
    raise KeyError(msg)
