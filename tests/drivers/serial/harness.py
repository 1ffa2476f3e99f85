"""Run the real ConnectionRunner with the serial driver and record what it delivers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from drivers.serial import SerialConnection, SerialDriver
from gatewayd.backoff import Backoff
from gatewayd.bridge.runner import ConnectionRunner, RunnerLimits
from gatewayd.health import Component
from gatewayd.model import Reading, Value


class RecordingSink:
    """Keeps every reading and every availability change, in order."""

    def __init__(self) -> None:
        self.batches: list[Reading] = []
        self.states: list[tuple[str, bool, str]] = []

    async def readings(self, connection: str, device: str, batch: Sequence[Reading]) -> None:
        del connection, device
        self.batches.extend(batch)

    async def availability(self, connection: str, device: str, state: Any, reason: str) -> None:
        up = state == "ONLINE"
        del connection
        self.states.append((device, up, reason))

    def values(self, point: str) -> list[Value | None]:
        return [r.value for r in self.batches if r.ref.point == point]

    def device_states(self, device: str) -> list[bool]:
        return [up for dev, up, _ in self.states if dev == device]


@dataclass
class Running:
    runner: ConnectionRunner
    driver: SerialDriver
    sink: RecordingSink
    component: Component
    config: SerialConnection
    extra: dict[str, Any] = field(default_factory=dict)


@asynccontextmanager
async def running(config: dict[str, Any]) -> AsyncIterator[Running]:
    conn = SerialConnection.model_validate(config)
    driver = SerialDriver(conn)
    sink = RecordingSink()
    component = Component("connection[test]")
    fast = Backoff(initial_s=0.05, max_s=0.2)
    runner = ConnectionRunner(
        "test",
        conn,
        driver,
        sink,
        component,
        backoff=fast,
        limits=RunnerLimits(breaker=fast, job_timeout_s=10.0),
    )
    task = asyncio.create_task(runner.run(), name="test.runner")
    try:
        yield Running(runner, driver, sink, component, conn)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
