"""Running a real ConnectionRunner over a Modbus connection, with a counting sink."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from drivers.modbus import ModbusDriver
from gatewayd.bridge.runner import ConnectionRunner
from gatewayd.bridge.sink import LatestValues
from gatewayd.health import Health
from gatewayd.model import Reading
from gatewayd.registry import spec_for
from tests.helpers import async_wait_for


class CountingSink(LatestValues):
    """LatestValues that also counts batches per device and keeps every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: dict[str, int] = {}
        self.history: list[Reading] = []

    async def readings(self, connection: str, device: str, batch: Sequence[Reading]) -> None:
        await super().readings(connection, device, batch)
        self.batches[device] = self.batches.get(device, 0) + 1
        self.history.extend(batch)

    def value(self, device: str, point: str, connection: str = "c") -> Any:
        reading = self.values.get(f"{connection}/{device}/{point}")
        return None if reading is None else reading.value


def connection(data: dict[str, Any]) -> Any:
    """Validate a connection mapping with the registered spec for its driver."""
    return spec_for(data["driver"]).config.model_validate(data)


@contextlib.asynccontextmanager
async def running(config: Any, sink: CountingSink | None = None) -> AsyncIterator[ConnectionRunner]:
    runner = ConnectionRunner(
        "c", config, ModbusDriver(config), sink or CountingSink(), Health().component("c")
    )
    task = asyncio.create_task(runner.run(), name="test.runner")
    try:
        await async_wait_for(lambda: runner.connected, 5, "runner connected")
        yield runner
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
