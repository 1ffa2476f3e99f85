"""A driver with no wire: each point holds a value, optionally stepping on every read.

Useful where no field device exists yet (commissioning a site, demos) and for exercising the
core pipeline without a protocol in the way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from gatewayd.batch import SampleBatch
from gatewayd.driver import ConnectionConfig, DeviceConfig, PointConfig
from gatewayd.errors import WriteRejected
from gatewayd.model import Value

__all__ = ["MemoryConnection", "MemoryDevice", "MemoryDriver", "MemoryPoint", "MemorySession"]


class MemoryPoint(PointConfig):
    """A virtual point."""

    initial: bool | int | float | str = Field(default=0, description="Value at start.")
    step: float = Field(
        default=0.0,
        description="Added to a numeric value after every read (0 keeps it constant).",
    )


class MemoryDevice(DeviceConfig[MemoryPoint]):
    """A virtual device."""


class MemoryConnection(ConnectionConfig):
    """A set of virtual devices."""

    driver: Literal["memory"] = Field(description="Virtual points held in memory.")
    devices: dict[str, MemoryDevice] = Field(default_factory=dict)


class MemorySession:
    """Reads and writes the driver's in-memory values."""

    def __init__(self, values: dict[tuple[str, str], Value]) -> None:
        self._values = values

    async def read(self, device: MemoryDevice, points: Sequence[MemoryPoint]) -> SampleBatch:
        """Return the current values and advance stepping points."""
        now = datetime.now(UTC)
        values: list[Value] = []
        for point in points:
            key = (device.id, point.id)
            value = self._values[key]
            values.append(value)
            if point.step and isinstance(value, int | float) and not isinstance(value, bool):
                self._values[key] = value + point.step
        return SampleBatch(tuple(p.id for p in points), values, [now] * len(values))

    async def write(self, device: MemoryDevice, point: MemoryPoint, value: Value) -> None:
        """Store a value; refuse one whose kind differs from the point's initial value."""
        key = (device.id, point.id)
        current = self._values[key]
        if isinstance(current, bool) != isinstance(value, bool) or isinstance(
            current, str
        ) != isinstance(value, str):
            msg = f"{point.id}: cannot store {type(value).__name__} in a {type(current).__name__}"
            raise WriteRejected(msg)
        self._values[key] = value


class MemoryDriver:
    """Builds sessions over one connection's devices; values live as long as the driver."""

    def __init__(self, config: MemoryConnection) -> None:
        self._values: dict[tuple[str, str], Value] = {
            (device.id, point.id): point.initial
            for device in config.devices.values()
            for point in device.points.values()
        }

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[MemorySession]:
        yield MemorySession(self._values)

    def connect(self) -> AbstractAsyncContextManager[MemorySession]:
        """Open a session; never fails."""
        return self._open()
