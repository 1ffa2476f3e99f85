"""Virtual points held in memory: for demos, commissioning and tests of the core."""

from __future__ import annotations

from drivers.memory.driver import MemoryConnection, MemoryDevice, MemoryDriver, MemoryPoint
from gatewayd.driver import DriverSpec

__all__ = ["SPEC", "MemoryConnection", "MemoryDevice", "MemoryDriver", "MemoryPoint"]

SPEC = DriverSpec(
    kind="memory",
    config=MemoryConnection,
    device=MemoryDevice,
    point=MemoryPoint,
    build=MemoryDriver,
)
