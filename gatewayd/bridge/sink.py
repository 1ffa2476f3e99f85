"""Where runners deliver what they learn; the core decides what happens next."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gatewayd.model import Availability, Reading

__all__ = ["BridgeSink", "LatestValues"]


class BridgeSink(Protocol):
    """Receives readings and device availability from connection runners."""

    async def readings(self, connection: str, device: str, batch: Sequence[Reading]) -> None:
        """One device's readings from one read or push."""
        ...

    async def availability(
        self, connection: str, device: str, state: Availability, reason: str
    ) -> None:
        """A device started answering (ONLINE), stopped (OFFLINE), or lost its link (ABNORMAL)."""
        ...


class LatestValues:
    """A sink that keeps the latest reading per point and each device's availability."""

    def __init__(self) -> None:
        self.values: dict[str, Reading] = {}
        self.devices: dict[tuple[str, str], tuple[Availability, str]] = {}

    async def readings(self, connection: str, device: str, batch: Sequence[Reading]) -> None:
        """Remember each reading."""
        del connection, device
        for reading in batch:
            self.values[str(reading.ref)] = reading

    async def availability(
        self, connection: str, device: str, state: Availability, reason: str
    ) -> None:
        """Remember the device's state."""
        self.devices[(connection, device)] = (state, reason)
