"""The BLE session on its own: discovery, a missing adapter, polled reads of advertisements."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from bleak.backends.scanner import BaseBleakScanner
from bleak.exc import BleakError

from drivers.ble import BleDriver
from gatewayd.errors import DeviceUnavailable
from tests.drivers.ble.conftest import connection
from tests.drivers.ble.radio import Peripheral, ad_structure


async def test_discovery_lists_devices_nobody_manages(world, adapter):
    managed = Peripheral(world, "F0:00:00:00:00:01", "known")
    await managed.start()
    stranger = Peripheral(world, "F0:00:00:00:00:0A", "stranger")
    await stranger.start(ad_structure(0x09, b"stranger") + ad_structure(0x03, b"\x0f\x18"))
    config = connection({"known": {"address": "F0:00:00:00:00:01"}})
    scanner, client = adapter
    driver = BleDriver(config, scanner_backend=scanner, client_backend=client)
    with pytest.raises(DeviceUnavailable, match="not open"):
        await driver.discover(0.1)
    async with driver.connect():
        found = await driver.discover(0.5)
    assert [d.address for d in found] == ["F0:00:00:00:00:0A"]
    (entry,) = found
    assert entry.name == "stranger"
    assert entry.service_uuids == ("0000180f-0000-1000-8000-00805f9b34fb",)
    assert isinstance(entry.rssi, int)


async def test_polled_read_of_advertised_points_uses_the_latest_advertisement(world, adapter):
    sensor = Peripheral(world, "F0:00:00:00:00:01", "m")
    await sensor.start(ad_structure(0xFF, b"\x99\x04\x2a\x00"))
    config = connection(
        {
            "m": {
                "address": "F0:00:00:00:00:01",
                "offline_after_s": 0.5,
                "points": {
                    "v": {"source": "manufacturer", "company_id": 0x0499, "field": "u16"},
                    "seen": {"source": "last_seen"},
                },
            }
        }
    )
    scanner, client = adapter
    driver = BleDriver(config, scanner_backend=scanner, client_backend=client)
    device = config.devices["m"]
    points = list(device.points.values())
    async with driver.connect() as session:

        async def read() -> dict[str, object] | str:
            try:
                return {s.point: s.value for s in await session.read(device, points)}
            except DeviceUnavailable as exc:
                return str(exc)

        values = await until(read, lambda v: isinstance(v, dict))
        assert isinstance(values, dict)
        assert values["v"] == 42
        assert datetime.fromisoformat(str(values["seen"])).tzinfo is not None

        await sensor.device.stop_advertising()
        error = await until(read, lambda v: isinstance(v, str))
        assert error == "m: no advertisement for 0.5 s"


async def until(probe, accept, timeout_s: float = 5.0):
    """Call `probe` until `accept` takes its result."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = await probe()
            if accept(result):
                return result
            await asyncio.sleep(0.02)


class _NoAdapter(BaseBleakScanner):
    def __init__(self, *args, **kwargs):
        super().__init__(None, None)

    async def start(self):
        raise BleakError("org.bluez was not provided")

    async def stop(self):
        pass


async def test_missing_adapter_is_a_transient_failure_to_open(adapter):
    _, client = adapter
    driver = BleDriver(connection({}), scanner_backend=_NoAdapter, client_backend=client)
    with pytest.raises(DeviceUnavailable, match=r"adapter hci0: cannot scan: org\.bluez"):
        async with driver.connect():
            pass
