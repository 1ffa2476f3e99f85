"""Reported values from the field: group-committed, merged in SQLite, in call order."""

from __future__ import annotations

import asyncio
import math

import pytest

from gatewayd.devices import DeviceCreate, DeviceStatus
from gatewayd.store import open_store
from gatewayd.store.errors import DeviceNotFound, InvalidField
from tests.store_fixtures import WATER, store_settings

DEV = f"{WATER}_n1"


def _values(section):
    return {k: p.value for k, p in section.items()}


async def test_concurrent_reports_land_in_order_and_a_bad_one_fails_alone(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        await store.registry.create(DeviceCreate(node_id="n1", product_id=WATER))
        shadows = store.shadows
        calls = [
            shadows.record_reported(DEV, "WaterMeter", {"temperature": t}) for t in range(20, 30)
        ]
        calls.insert(3, shadows.record_reported("nobody", "WaterMeter", {"temperature": 1}))
        calls.insert(6, shadows.record_reported(DEV, "WaterMeter", {"flow": -1}))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(outcomes[3], DeviceNotFound)
        assert isinstance(outcomes[6], InvalidField)
        assert [o for i, o in enumerate(outcomes) if i not in {3, 6}] == [None] * 10
        water = (await shadows.get(DEV))[0]
        assert _values(water.reported) == {"temperature": 29}  # the last call wins
        assert (await store.registry.get(DEV)).status is DeviceStatus.ONLINE
        # a later report merges: other properties stay, the same one is replaced
        await shadows.record_reported(DEV, "WaterMeter", {"flow": "1.5", "temperature": 30})
        water = (await shadows.get(DEV))[0]
        assert _values(water.reported) == {"temperature": 30, "flow": 1.5}
        assert water.version == 0  # reported never bumps the version


async def test_report_waits_for_reports_queued_before_it(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        await store.registry.create(DeviceCreate(node_id="n1", product_id=WATER))
        shadows = store.shadows
        queued = [
            asyncio.create_task(shadows.record_reported(DEV, "WaterMeter", {"temperature": t}))
            for t in (21, 22, 23)
        ]
        await asyncio.sleep(0)  # they are queued (and one is being written)
        water = await shadows.report(DEV, "WaterMeter", {"flow": 2})
        assert _values(water.reported) == {"temperature": 23, "flow": 2}
        await asyncio.gather(*queued)
        assert _values((await shadows.get(DEV))[0].reported) == {"temperature": 23, "flow": 2}


async def test_values_json_cannot_carry_are_refused_by_name(tmp_path):
    settings = store_settings(
        tmp_path,
        connections={
            "bus": {"driver": "memory", "devices": {"plain": {"points": {"t": {}}}}},
        },
    )
    async with open_store(settings) as store:
        (plain,) = [d for d in await store.registry.devices() if d.product_id == "memory"]
        await store.shadows.record_reported(plain.device_id, "points", {"a": 1, "t": 1.0})
        with pytest.raises(InvalidField) as info:
            await store.shadows.record_reported(plain.device_id, "points", {"t": math.inf})
        assert info.value.field == "t"
        (points,) = await store.shadows.get(plain.device_id)
        assert _values(points.reported) == {"a": 1, "t": 1.0}


async def test_a_cancelled_caller_does_not_lose_the_others(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        await store.registry.create(DeviceCreate(node_id="n1", product_id=WATER))
        shadows = store.shadows
        first = asyncio.create_task(shadows.record_reported(DEV, "WaterMeter", {"temperature": 1}))
        second = asyncio.create_task(shadows.record_reported(DEV, "WaterMeter", {"flow": 3}))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.wait([first])
        await asyncio.wait_for(second, 5)
        assert _values((await shadows.get(DEV))[0].reported)["flow"] == 3
