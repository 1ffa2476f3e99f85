"""A driver with no wire: each point holds a value, optionally stepping on every read.

Useful where no field device exists yet (commissioning a site, demos) and for exercising the
core pipeline without a protocol in the way. A point may hold a written number the way real
devices do, not as asked: rounded to its resolution (`write_step`) and held within its limits
(`clamp`), so what the device reads back differs from what was written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal, Self

from pydantic import Field, model_validator

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
    write_step: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Resolution of a written number: it is stored rounded to the nearest multiple "
            "(half to even), as a device with a coarser setting would; unset stores it as "
            "written."
        ),
    )
    clamp: tuple[float, float] | None = Field(
        default=None,
        description=(
            "`[min, max]`: a written number is stored within these limits (after "
            "`write_step`), as a device with a range clamps a setting; the value read back "
            "shows it. Unset stores it as written."
        ),
    )

    @model_validator(mode="after")
    def _numeric_limits(self) -> Self:
        if self.clamp is not None and self.clamp[0] > self.clamp[1]:
            msg = f"clamp: min {self.clamp[0]} is above max {self.clamp[1]}"
            raise ValueError(msg)
        if (self.clamp is not None or self.write_step is not None) and not _is_number(self.initial):
            msg = "clamp and write_step: only a numeric point (a number as `initial`) has them"
            raise ValueError(msg)
        return self

    def held(self, value: Value) -> Value:
        """What the point holds once `value` is written: rounded, then clamped."""
        if not _is_number(value):
            return value
        number = float(value)
        if self.write_step is not None:
            step = Decimal(repr(self.write_step))
            number = float(round(Decimal(repr(number)) / step) * step)
        if self.clamp is not None:
            number = min(max(number, self.clamp[0]), self.clamp[1])
        if isinstance(value, int) and number.is_integer():
            return int(number)
        return number


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
        self._values[key] = point.held(value)


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
