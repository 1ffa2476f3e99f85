"""Shadows: initial desired from products, versions, conditional updates, delta, the change feed."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from gatewayd.devices import DeviceCreate, DeviceStatus
from gatewayd.store import open_store
from gatewayd.store.errors import DeviceNotFound, InvalidField, VersionConflict
from gatewayd.store.shadows import DesiredUpdate, ShadowStore
from tests.store_fixtures import WATER, store_settings
from tests.store_fixtures import WallClock as Clock

DEV = f"{WATER}_n1"


def _values(section):
    return {k: p.value for k, p in section.items()}


async def _device(store, shadow=None):
    return await store.registry.create(DeviceCreate(node_id="n1", product_id=WATER, shadow=shadow))


async def test_initial_shadow_is_defaults_overridden_by_the_request(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        shadow = [{"service_id": "WaterMeter", "desired": {"temperature": "60", "label": "x"}}]
        await _device(store, shadow)
        water, battery = await store.shadows.get(DEV)
        assert water.service_id == "WaterMeter"
        assert _values(water.desired) == {"temperature": 60, "valve_open": True, "label": "x"}
        assert water.version == 0
        assert (battery.service_id, dict(battery.desired), battery.version) == ("Battery", {}, 0)


async def test_initial_shadow_null_and_empty(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        await _device(store, [{"service_id": "WaterMeter", "desired": {"valve_open": None}}])
        assert _values((await store.shadows.get(DEV))[0].desired) == {"temperature": 20}
    async with open_store(store_settings(tmp_path / "b")) as store:
        await _device(store, [{"service_id": "WaterMeter", "desired": {}}])
        assert _values((await store.shadows.get(DEV))[0].desired) == {}


async def test_versions_conditions_null_and_clear(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        await _device(store)
        shadows = store.shadows
        (water, _) = await shadows.update_desired(
            DEV, [DesiredUpdate("WaterMeter", {"temperature": 30}, version=0)]
        )
        assert water.version == 1
        assert _values(water.desired) == {"temperature": 30, "valve_open": True}
        with pytest.raises(VersionConflict) as info:
            await shadows.update_desired(
                DEV, [DesiredUpdate("WaterMeter", {"temperature": 31}, version=0)]
            )
        assert info.value.field == "shadow.0.version"
        (water, _) = await shadows.update_desired(
            DEV, [DesiredUpdate("WaterMeter", {"valve_open": None})]
        )
        assert (water.version, _values(water.desired)) == (2, {"temperature": 30})
        (water, _) = await shadows.update_desired(DEV, [DesiredUpdate("WaterMeter", {})])
        assert (water.version, dict(water.desired)) == (3, {})


async def test_a_bad_service_leaves_the_others_unchanged(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        await _device(store)
        cases = [
            (DesiredUpdate("Nope", {}), "shadow.1.service_id"),
            (DesiredUpdate("Battery", {"level": 5}), "shadow.1.desired.level"),  # read-only
            (DesiredUpdate("Battery", {"colour": 5}), "shadow.1.desired.colour"),
            (DesiredUpdate("WaterMeter", {}), "shadow.1.service_id"),  # given twice
        ]
        for bad, field in cases:
            with pytest.raises(InvalidField) as info:
                await store.shadows.update_desired(
                    DEV, [DesiredUpdate("WaterMeter", {"temperature": 99}), bad]
                )
            assert info.value.field == field
        water = (await store.shadows.get(DEV))[0]
        assert (water.version, water.desired["temperature"].value) == (0, 20)
        with pytest.raises(InvalidField) as info:
            await store.shadows.update_desired(
                DEV, [DesiredUpdate("WaterMeter", {"temperature": "hot"})]
            )
        assert info.value.field == "shadow.0.desired.temperature"
        with pytest.raises(DeviceNotFound):
            await store.shadows.get("nobody")


async def test_report_timestamps_delta_and_activation(tmp_path):
    clock = Clock()
    async with open_store(store_settings(tmp_path)) as store:
        await _device(store)
        shadows = ShadowStore(store.db, store.products, clock)
        await shadows.update_desired(DEV, [DesiredUpdate("WaterMeter", {"temperature": 25})])
        assert await shadows.delta(DEV) == {"WaterMeter": {"temperature": 25, "valve_open": True}}
        clock.tick()
        water = await shadows.report(DEV, "WaterMeter", {"temperature": 25, "flow": "1.5"})
        assert water.version == 1  # reported never bumps the version
        assert water.reported["flow"].value == 1.5
        assert water.reported["temperature"].at == clock.now
        assert water.desired["temperature"].at == clock.now - timedelta(seconds=1)
        assert await shadows.delta(DEV) == {"WaterMeter": {"valve_open": True}}
        clock.tick()
        water = await shadows.report(DEV, "WaterMeter", {"valve_open": True})
        assert water.reported["flow"].at == clock.now - timedelta(seconds=1)
        assert water.reported_time == clock.now
        assert await shadows.delta(DEV) == {}
        device = await store.registry.get(DEV)
        assert device.status is DeviceStatus.ONLINE
        assert device.active_time == clock.now - timedelta(seconds=1)
        with pytest.raises(InvalidField) as info:
            await shadows.report(DEV, "WaterMeter", {"pressure": 1})
        assert info.value.field == "pressure"
        with pytest.raises(InvalidField):
            await shadows.report(DEV, "WaterMeter", {"flow": -1})
        with pytest.raises(InvalidField):
            await shadows.report(DEV, "Nope", {})


async def test_delta_treats_true_and_one_as_different(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        await _device(store)
        await store.shadows.report(DEV, "WaterMeter", {"temperature": 20})
        assert await store.shadows.delta(DEV) == {"WaterMeter": {"valve_open": True}}


async def test_desired_changes_are_announced_coalesced(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        changes = store.shadows.desired_changes()
        await _device(store)  # defaults exist for WaterMeter only
        assert await asyncio.wait_for(anext(changes), 5) == (DEV, "WaterMeter")
        for t in (30, 31, 32):
            await store.shadows.update_desired(
                DEV, [DesiredUpdate("WaterMeter", {"temperature": t})]
            )
        await store.shadows.update_desired(DEV, [DesiredUpdate("Battery", {})])
        assert await asyncio.wait_for(anext(changes), 5) == (DEV, "WaterMeter")
        assert await asyncio.wait_for(anext(changes), 5) == (DEV, "Battery")
        await store.shadows.report(DEV, "WaterMeter", {"temperature": 32})
        pending = asyncio.create_task(anext(changes))
        done, _ = await asyncio.wait({pending}, timeout=0.2)
        assert not done  # a report is not a desired change
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await changes.aclose()


async def test_a_product_default_is_never_a_write_and_stands_aside_for_the_device(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        await _device(store, [{"service_id": "WaterMeter", "desired": {"label": "x"}}])
        water = (await store.shadows.get(DEV))[0]
        origins = {k: p.origin for k, p in water.desired.items()}
        assert origins == {"temperature": "default", "valve_open": "default", "label": "request"}
        # the cloud sees the defaults as desired, but only the asked value is to be written
        assert water.delta() == {"temperature": 20, "valve_open": True, "label": "x"}
        assert water.writes() == {"label": "x"}
        # the device holds its own settings: desired shows them, nothing is left to write
        await store.shadows.report(DEV, "WaterMeter", {"temperature": 65, "valve_open": False})
        water = (await store.shadows.get(DEV))[0]
        assert _values(water.desired) == {"temperature": 65, "valve_open": False, "label": "x"}
        assert water.delta() == {"label": "x"}
        assert water.writes() == {"label": "x"}
        # a later desired change elsewhere in the service keeps the others unasked
        (water, _) = await store.shadows.update_desired(
            DEV, [DesiredUpdate("WaterMeter", {"label": "y"})]
        )
        assert not water.desired["valve_open"].asked
        assert water.writes() == {"label": "y"}
        # asking for a value makes it a write, even the default's own value
        (water, _) = await store.shadows.update_desired(
            DEV, [DesiredUpdate("WaterMeter", {"temperature": 20})]
        )
        assert water.desired["temperature"].asked
        assert water.writes() == {"temperature": 20, "label": "y"}
    async with open_store(store_settings(tmp_path)) as store:  # origins are stored
        water = (await store.shadows.get(DEV))[0]
        assert water.writes() == {"temperature": 20, "label": "y"}
        assert water.desired["valve_open"].origin == "default"


async def test_yaml_desired_takes_defaults_and_its_own_changes_but_not_later_requests(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        await _device(store)
        shadows = store.shadows
        changes = shadows.desired_changes()
        assert await asyncio.wait_for(anext(changes), 5) == (DEV, "WaterMeter")  # created
        where = "connections.c.devices.d.desired"
        assert await shadows.configure_desired(DEV, {"temperature": 30}, field_prefix=where) == {
            "temperature": 30
        }
        assert await asyncio.wait_for(anext(changes), 5) == (DEV, "WaterMeter")
        water = (await shadows.get(DEV))[0]
        assert (water.version, water.desired["temperature"].origin) == (1, "config")
        assert water.writes() == {"temperature": 30}
        # the same file at the next start changes nothing
        assert await shadows.configure_desired(DEV, {"temperature": 30}, field_prefix=where) == {}
        # a changed file does
        assert await shadows.configure_desired(DEV, {"temperature": 31}, field_prefix=where) == {
            "temperature": 31
        }
        # a value asked for through the API or the cloud stands
        await shadows.update_desired(DEV, [DesiredUpdate("WaterMeter", {"temperature": 40})])
        assert await shadows.configure_desired(DEV, {"temperature": 32}, field_prefix=where) == {}
        assert (await shadows.get(DEV))[0].desired["temperature"].value == 40
        with pytest.raises(InvalidField) as info:
            await shadows.configure_desired(DEV, {"flow": 1}, field_prefix=where)
        assert info.value.field == f"{where}.flow"  # read-only
        with pytest.raises(InvalidField) as info:
            await shadows.configure_desired(DEV, {"nothing": 1}, field_prefix=where)
        assert info.value.field == f"{where}.nothing"
        await changes.aclose()


async def test_values_stored_before_origins_equal_to_the_default_are_defaults(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        await _device(store, [{"service_id": "WaterMeter", "desired": {"temperature": 60}}])
        # as an older gatewayd stored them: [value, time], no origin
        at = "2024-01-01T00:00:00+00:00"
        legacy = json.dumps({"temperature": [60, at], "valve_open": [True, at]})
        await store.db.run(
            lambda conn: conn.execute(
                "UPDATE shadows SET desired = ? WHERE device_id = ? AND service_id = ?",
                (legacy, DEV, "WaterMeter"),
            )
        )
        water = (await store.shadows.get(DEV))[0]
        assert water.writes() == {"temperature": 60}  # differs from the default: asked
        assert water.desired["valve_open"].origin == "default"
        (water, _) = await store.shadows.update_desired(
            DEV, [DesiredUpdate("WaterMeter", {"label": "x"})]
        )
        assert water.version == 1
        assert water.writes() == {"temperature": 60, "label": "x"}  # stored with origins now
