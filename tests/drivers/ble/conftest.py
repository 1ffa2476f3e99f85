"""Fixtures for BLE tests: an emulated radio, an adapter on it, a runner over the driver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from drivers.ble import BleConnection, BleDriver
from gatewayd.backoff import Backoff
from gatewayd.bridge.runner import ConnectionRunner, RunnerLimits
from gatewayd.health import Component
from gatewayd.model import Reading, Value
from tests.drivers.ble.radio import World


class RecordingSink:
    """A BridgeSink that keeps every reading and availability change, in order."""

    def __init__(self) -> None:
        self.log: list[Reading] = []
        self.states: list[tuple[str, bool, str]] = []
        self._changed = asyncio.Event()

    async def readings(self, connection: str, device: str, batch: Any) -> None:
        self.log.extend(batch)
        self._changed.set()

    async def availability(self, connection: str, device: str, state: Any, reason: str) -> None:
        up = state == "ONLINE"
        self.states.append((device, up, reason))
        self._changed.set()

    def values(self, device: str, point: str) -> list[Value | None]:
        return [r.value for r in self.log if r.ref.device == device and r.ref.point == point]

    def up(self, device: str) -> bool | None:
        states = [up for dev, up, _ in self.states if dev == device]
        return states[-1] if states else None

    async def until(self, predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
        """Wait until the predicate holds, re-checking whenever something arrives."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                try:
                    async with asyncio.timeout(0.1):
                        await self._changed.wait()
                except TimeoutError:
                    pass


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def adapter(world: World) -> tuple[Any, Any]:
    return await world.adapter()


def connection(devices: dict[str, Any], **settings: Any) -> BleConnection:
    defaults = {
        "scan_timeout_s": 1.0,
        "connect_timeout_s": 1.0,
        "io_timeout_s": 1.0,
        "retry_initial_s": 0.2,
        "retry_max_s": 1.0,
    }
    return BleConnection.model_validate(
        {"driver": "ble", **defaults, **settings, "devices": devices}
    )


@asynccontextmanager
async def running(
    config: BleConnection, adapter: tuple[Any, Any]
) -> AsyncIterator[tuple[ConnectionRunner, RecordingSink, BleDriver]]:
    """The real ConnectionRunner over the BLE driver, on the emulated adapter."""
    scanner, client = adapter
    driver = BleDriver(config, scanner_backend=scanner, client_backend=client)
    sink = RecordingSink()
    runner = ConnectionRunner(
        "ble0",
        config,
        driver,
        sink,
        Component("connection[ble0]"),
        backoff=Backoff(initial_s=0.1, max_s=0.5),
        limits=RunnerLimits(job_timeout_s=10.0, breaker=Backoff(initial_s=0.5, max_s=1.0)),
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(runner.run(), name="runner")
        try:
            yield runner, sink, driver
        finally:
            task.cancel()
