"""Field -> registry status and reported shadow; desired (local API) -> write -> read-back."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import pytest

from gatewayd.bridge.sink import LatestValues
from gatewayd.devices import DeviceStatus
from gatewayd.model import Quality
from tests.helpers import eventually
from tests.store_fixtures import ADMIN, running_app, store_settings

DEVICE_ID = "thermostat_room1"


def _settings(tmp_path, interval_s=0.05, **setpoint):
    points = {
        "temperature": {"initial": 21.5, "unit": "°C"},
        "setpoint": {"initial": 20.0, "writable": True, **setpoint},
        "mode": {"initial": "auto", "writable": False},
    }
    return store_settings(
        tmp_path,
        connections={
            "virtual": {
                "driver": "memory",
                "devices": {
                    "room1": {
                        "product_id": "thermostat",
                        "interval_s": interval_s,
                        "points": points,
                    }
                },
            }
        },
    )


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.url = f"{base}/v5/iot/proj1/devices/{DEVICE_ID}/shadow"
        self.latest = LatestValues()

    async def shadow(self) -> dict[str, Any]:
        async with self.session.get(self.url) as resp:
            assert resp.status == 200, await resp.text()
            return (await resp.json())["shadow"][0]

    async def reported(self, prop: str) -> Any:
        return (await self.shadow())["reported"]["properties"].get(prop)

    async def put_desired(self, desired: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = {"shadow": [{"service_id": "Climate", "desired": desired}]}
        async with self.session.put(self.url, json=body) as resp:
            return resp.status, await resp.json()


async def _with_api(settings, test):
    latest = LatestValues()  # what the field sink passes downstream, instead of the outbox
    async with (
        running_app(settings, latest) as (base, app),
        aiohttp.ClientSession(headers={"X-Auth-Token": ADMIN}) as session,
    ):
        api = Api(session, base)
        api.latest = latest
        await test(api, app)


async def test_readings_make_the_device_online_and_fill_reported(tmp_path):
    async def test(api, app):
        async def status():
            return (await app.store.registry.get(DEVICE_ID)).status

        await eventually(status, DeviceStatus.ONLINE)
        await eventually(lambda: api.reported("temperature"), 21.5)

    await _with_api(_settings(tmp_path), test)


@pytest.mark.parametrize(
    "setpoint",
    [{}, {"scale": 0.5, "initial": 40}],  # scaled: 23.5 is raw 47 in the device
    ids=["plain", "scaled"],
)
async def test_desired_change_is_written_then_reported_after_read_back(tmp_path, setpoint):
    async def test(api, app):
        status, body = await api.put_desired({"setpoint": 23.5})
        assert status == 200, body
        await eventually(lambda: api.reported("setpoint"), 23.5)
        # reported follows the device: the field really holds the value (read back, normalised)
        assert (await app.runners["virtual"].read("room1", ["setpoint"]))[0].value == 23.5

    await _with_api(_settings(tmp_path, **setpoint), test)


async def test_reported_after_a_write_is_what_the_device_holds_not_what_was_asked(tmp_path):
    # The device keeps a setpoint within [10, 26] in steps of 0.5. It is polled once at start,
    # so after that only the read-back of each write can change reported.
    async def test(api, app):
        await eventually(lambda: api.reported("setpoint"), 20.0)
        previous = 20.0
        for asked, held in ((28.0, 26.0), (21.3, 21.5), (7, 10)):
            status, body = await api.put_desired({"setpoint": asked})
            assert status == 200, body
            async with asyncio.timeout(10):
                while (reported := await api.reported("setpoint")) == previous:
                    await asyncio.sleep(0.02)
            assert reported == held, f"asked {asked}, the device holds {held}"
            shadow = await api.shadow()
            assert shadow["desired"]["properties"]["setpoint"] == asked  # the delta stays seen
            previous = held
        assert (await app.runners["virtual"].read("room1", ["setpoint"]))[0].value == 10

    await _with_api(_settings(tmp_path, 3600, clamp=[10, 26], write_step=0.5), test)


async def test_property_without_writable_point_is_not_written(tmp_path):
    # "mode" is RW in the product but the point is not writable: nothing is written
    async def test(api, app):
        status, body = await api.put_desired({"mode": "eco"})
        assert status == 200, body
        await api.put_desired({"setpoint": 22.0})  # a later change still flows
        await eventually(lambda: api.reported("setpoint"), 22.0)
        assert await api.reported("mode") == "auto"

    await _with_api(_settings(tmp_path), test)


async def test_read_only_property_is_refused_by_the_api(tmp_path):
    async def test(api, _app):
        status, body = await api.put_desired({"temperature": 30})
        assert status == 400
        assert "temperature" in body["error_msg"]

    await _with_api(_settings(tmp_path), test)


async def test_value_outside_the_product_range_never_reaches_reported(tmp_path):
    settings = store_settings(
        tmp_path,
        connections={
            "virtual": {
                "driver": "memory",
                "devices": {
                    "room1": {
                        "product_id": "thermostat",
                        "interval_s": 0.05,
                        "points": {"temperature": {"initial": 84.0, "step": 1.0}},
                    }
                },
            }
        },
    )

    async def test(api, app):
        # 84 and 85 are in range; 86 and beyond are not and arrive downstream as BAD
        def bad_reading_seen() -> bool:
            latest = api.latest.values.get("virtual/room1/temperature")
            return latest is not None and latest.value > 85 and latest.quality is Quality.BAD

        async with asyncio.timeout(10):
            while not bad_reading_seen():
                await asyncio.sleep(0.02)
        assert await api.reported("temperature") == 85.0

    await _with_api(settings, test)


class Recording:
    def __init__(self) -> None:
        self.values: list[object] = []

    async def readings(self, connection, device, batch) -> None:
        self.values.extend(r.value for r in batch if r.ref.point == "temperature")

    async def availability(self, connection, device, state, reason) -> None:
        pass


async def test_deadband_thins_telemetry_but_not_the_first_value(tmp_path):
    settings = store_settings(
        tmp_path,
        connections={
            "virtual": {
                "driver": "memory",
                "devices": {
                    "room1": {
                        "product_id": "thermostat",
                        "interval_s": 0.02,
                        "points": {"temperature": {"initial": 20.0, "step": 0.1, "deadband": 0.45}},
                    }
                },
            }
        },
    )
    sink = Recording()
    async with running_app(settings, sink):
        async with asyncio.timeout(10):
            while len(sink.values) < 4:
                await asyncio.sleep(0.02)
    values = [float(v) for v in sink.values]
    assert values[0] == 20.0
    steps = [round(b - a, 6) for a, b in itertools.pairwise(values)]
    assert all(step >= 0.45 for step in steps), steps
    assert all(step <= 0.5 + 1e-6 for step in steps), steps  # nothing beyond the deadband lost


async def test_telemetry_uses_the_product_property_name(tmp_path):
    settings = store_settings(tmp_path, connections={"virtual": {"driver": "memory", "devices": {
        "room1": {"product_id": "thermostat", "interval_s": 0.02, "points": {
            "t_raw": {"initial": 19.5, "property": "temperature"}}}}}})  # fmt: skip
    latest = LatestValues()
    async with running_app(settings, latest):
        async with asyncio.timeout(10):
            while "virtual/room1/temperature" not in latest.values:
                await asyncio.sleep(0.02)
    assert latest.values["virtual/room1/temperature"].value == 19.5
    assert "virtual/room1/t_raw" not in latest.values


async def test_a_stepped_value_with_decimals_carries_no_float_noise(tmp_path):
    settings = store_settings(tmp_path, connections={"virtual": {"driver": "memory", "devices": {
        "room1": {"product_id": "thermostat", "interval_s": 0.01, "points": {
            "temperature": {"initial": 20.0, "step": 0.1, "decimals": 1}}}}}})  # fmt: skip
    sink = Recording()
    async with running_app(settings, sink):
        async with asyncio.timeout(10):
            while len(sink.values) < 20:
                await asyncio.sleep(0.02)
    # 20.0 stepped by 0.1 seventeen times is 21.70000000000001 in binary floating point
    assert [repr(v) for v in sink.values[:20]] == [repr(round(20 + i / 10, 1)) for i in range(20)]


async def test_the_product_default_is_not_written_over_the_devices_setting(tmp_path):
    async def test(api, app):
        # the product's default setpoint is 20; the device holds 25 and keeps it
        await eventually(lambda: api.reported("setpoint"), 25.0)
        shadow = await api.shadow()
        assert shadow["desired"]["properties"]["setpoint"] == 25.0
        for _ in range(3):  # polls after the first reading: a write would go ahead of them
            assert (await app.runners["virtual"].read("room1", ["setpoint"]))[0].value == 25.0

    await _with_api(_settings(tmp_path, initial=25.0), test)
