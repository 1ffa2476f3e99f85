"""Noted reported values: buffered per service, flushed in one transaction, never out of order."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from datetime import timedelta

import pytest

from gatewayd.devices import DeviceCreate, DeviceStatus
from gatewayd.store import open_store
from gatewayd.store.shadows import DesiredUpdate, ShadowStore
from tests.helpers import async_wait_for
from tests.store_fixtures import WATER, store_settings
from tests.store_fixtures import WallClock as Clock

DEV = f"{WATER}_n1"
OTHER = f"{WATER}_n2"
LONG = {"shadows": {"reported_flush_ms": 60_000}}  # the store's own flusher stays out of the way


class Gate:
    """An injected sleep that returns only when the test opens it."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._open = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self._open.wait()
        self._open.clear()

    def open(self) -> None:
        self._open.set()


def _values(section):
    return {k: p.value for k, p in section.items()}


async def _stored(store, device_id=DEV, service_id="WaterMeter"):
    """The reported state in the file, read without flushing anything: {name: [value, time]}."""
    row = await store.db.run(
        lambda conn: conn.execute(
            "SELECT reported FROM shadows WHERE device_id = ? AND service_id = ?",
            (device_id, service_id),
        ).fetchone()
    )
    return json.loads(row[0]) if row else {}


async def _stored_values(store, device_id=DEV, service_id="WaterMeter"):
    return {k: v for k, (v, _) in (await _stored(store, device_id, service_id)).items()}


async def _transactions(store):
    """A list that collects every BEGIN the state database runs from now on."""
    seen: list[str] = []
    await store.db.run(
        lambda conn: conn.set_trace_callback(lambda sql: seen.append(sql) if "BEGIN" in sql else 0)
    )
    return seen


async def _devices(store, *node_ids):
    for node_id in node_ids:
        await store.registry.create(DeviceCreate(node_id=node_id, product_id=WATER))


async def test_many_notes_are_one_transaction_with_the_latest_values(tmp_path):
    clock = Clock()
    async with open_store(store_settings(tmp_path, **LONG)) as store:
        await _devices(store, "n1", "n2")
        shadows = ShadowStore(store.db, store.products, clock, flush_ms=1000)
        first = clock.now
        for t in range(100):
            shadows.note_reported(DEV, "WaterMeter", {"temperature": t % 50, "flow": t / 10})
            shadows.note_reported(OTHER, "Battery", {"level": t})
            clock.tick()
        shadows.note_reported(DEV, "WaterMeter", {"temperature": 7}, at=clock.now)
        assert await _stored(store) == {}  # nothing written yet
        begins = await _transactions(store)
        await shadows.flush()
        assert len(begins) == 1
        stored = await _stored(store)
        assert stored == {
            "temperature": [7, clock.now.isoformat()],  # each property stamped by its own note
            "flow": [9.9, (clock.now - timedelta(seconds=1)).isoformat()],
        }
        assert await _stored_values(store, OTHER, "Battery") == {"level": 99}
        device = await store.registry.get(DEV)
        assert (device.status, device.active_time) == (DeviceStatus.ONLINE, first)
        await shadows.flush()
        assert len(begins) == 1  # nothing noted since: no transaction


async def test_noted_values_are_written_at_most_once_per_interval(tmp_path):
    async with open_store(store_settings(tmp_path, **LONG)) as store:
        await _devices(store, "n1")
        shadows = ShadowStore(store.db, store.products, flush_ms=250)
        gate = Gate()
        flusher = asyncio.create_task(shadows.run(sleep=gate))
        try:
            begins = await _transactions(store)
            shadows.note_reported(DEV, "WaterMeter", {"temperature": 21})
            await async_wait_for(lambda: gate.asked == [0.25], 5)  # wrote, now waits
            assert await _stored_values(store) == {"temperature": 21}
            shadows.note_reported(DEV, "WaterMeter", {"temperature": 22})
            shadows.note_reported(DEV, "WaterMeter", {"temperature": 23, "flow": 1})
            for _ in range(20):
                await asyncio.sleep(0)
            assert await _stored_values(store) == {"temperature": 21}  # the interval holds
            assert len(begins) == 1
            gate.open()
            await async_wait_for(lambda: gate.asked == [0.25, 0.25], 5)
            assert await _stored_values(store) == {"temperature": 23, "flow": 1}
            assert len(begins) == 2
        finally:
            flusher.cancel()
            await asyncio.wait([flusher])


async def test_reads_see_noted_values_at_once(tmp_path):
    async with open_store(store_settings(tmp_path, **LONG)) as store:
        await _devices(store, "n1", "n2")
        shadows = ShadowStore(store.db, store.products)  # no flusher: only reads write
        shadows.note_reported(DEV, "WaterMeter", {"temperature": 20, "flow": 2})
        shadows.note_reported(OTHER, "WaterMeter", {"temperature": 30})
        water, _ = await shadows.get(DEV)
        assert _values(water.reported) == {"temperature": 20, "flow": 2}
        assert await _stored_values(store, OTHER) == {}  # only the device read was written
        shadows.note_reported(DEV, "WaterMeter", {"valve_open": True})
        assert await shadows.delta(DEV) == {}
        shadows.note_reported(OTHER, "WaterMeter", {"temperature": 31})
        water, _ = await shadows.update_desired(
            OTHER, [DesiredUpdate("WaterMeter", {"temperature": 40})]
        )
        assert _values(water.reported) == {"temperature": 31}


async def test_refused_values_are_dropped_and_logged_once_while_others_land(tmp_path, caplog):
    async with open_store(store_settings(tmp_path, **LONG)) as store:
        await _devices(store, "n1", "n2")
        await store.registry.delete(OTHER)  # deleted while its values wait
        shadows = store.shadows
        caplog.set_level(logging.WARNING, "gatewayd.store.reported")
        for t in (25, 26):
            shadows.note_reported(DEV, "WaterMeter", {"temperature": t, "flow": -1})
            shadows.note_reported(OTHER, "WaterMeter", {"temperature": t})
            shadows.note_reported(DEV, "Nope", {"x": t})
            shadows.note_reported(DEV, "Battery", {"level": t})
            await shadows.flush()
            assert await _stored_values(store) == {"temperature": t}
            assert await _stored_values(store, DEV, "Battery") == {"level": t}
        warnings = sorted(r.getMessage() for r in caplog.records)
        assert len(warnings) == 3, warnings
        nope, flow, gone = warnings
        assert f"{DEV}, service WaterMeter, dropped: flow:" in flow
        assert f"{OTHER}, service WaterMeter, dropped: device_id:" in gone
        assert f"{DEV}, service Nope, dropped: service_id:" in nope


async def test_the_stores_flusher_writes_and_close_flushes_the_rest(tmp_path):
    settings = store_settings(tmp_path, **LONG)
    async with open_store(settings) as store:
        await _devices(store, "n1")
        store.shadows.note_reported(DEV, "WaterMeter", {"temperature": 21})
        await _eventually_stored(store, {"temperature": 21})  # written at once after a pause
        store.shadows.note_reported(DEV, "WaterMeter", {"temperature": 22})
        assert await _stored_values(store) == {"temperature": 21}  # the next one waits 60 s
    async with open_store(settings) as store:
        assert await _stored_values(store) == {"temperature": 22}
        store.shadows.note_reported(DEV, "WaterMeter", {"temperature": 23})
    with pytest.raises(RuntimeError, match="closed"):
        store.shadows.note_reported(DEV, "WaterMeter", {"temperature": 24})


async def test_a_zero_interval_writes_every_reading_as_it_arrives(tmp_path):
    async with open_store(store_settings(tmp_path, shadows={"reported_flush_ms": 0})) as store:
        await _devices(store, "n1")
        for t in (21, 22, 23):
            store.shadows.note_reported(DEV, "WaterMeter", {"temperature": t})
            await _eventually_stored(store, {"temperature": t})


async def _eventually_stored(store, want):
    async with asyncio.timeout(5):
        while await _stored_values(store) != want:
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("through", ["report", "record_reported"])
async def test_a_value_noted_before_a_write_never_lands_after_it(tmp_path, through):
    async with open_store(store_settings(tmp_path, **LONG)) as store:
        await _devices(store, "n1")
        shadows = ShadowStore(store.db, store.products)
        write = getattr(shadows, through)
        # noted and waiting in the buffer
        shadows.note_reported(DEV, "WaterMeter", {"temperature": 21, "flow": 1})
        await write(DEV, "WaterMeter", {"temperature": 25})
        await shadows.flush()
        assert await _stored_values(store) == {"temperature": 25, "flow": 1}
        # noted and on its way to the file in a flush under way
        shadows.note_reported(DEV, "WaterMeter", {"temperature": 22})
        flushing = asyncio.create_task(shadows.flush())
        await asyncio.sleep(0)
        await write(DEV, "WaterMeter", {"temperature": 26})
        await flushing
        await shadows.flush()
        assert await _stored_values(store) == {"temperature": 26, "flow": 1}
        # noted after the write was called: newer, so it lands after it
        writing = asyncio.create_task(write(DEV, "WaterMeter", {"temperature": 27}))
        await asyncio.sleep(0)
        shadows.note_reported(DEV, "WaterMeter", {"temperature": 28})
        await writing
        await shadows.flush()
        assert await _stored_values(store) == {"temperature": 28, "flow": 1}


async def test_report_returns_the_older_noted_values_written_with_it(tmp_path):
    async with open_store(store_settings(tmp_path, **LONG)) as store:
        await _devices(store, "n1")
        shadows = ShadowStore(store.db, store.products)
        shadows.note_reported(DEV, "WaterMeter", {"temperature": 21, "flow": 1})
        water = await shadows.report(DEV, "WaterMeter", {"temperature": 25})
        assert _values(water.reported) == {"temperature": 25, "flow": 1}


async def test_a_failed_flush_keeps_its_values_and_a_later_report_still_wins(tmp_path, caplog):
    async with open_store(store_settings(tmp_path, **LONG)) as store:
        await _devices(store, "n1")
        shadows = ShadowStore(store.db, store.products)
        await store.db.run(_refuse_shadow_writes)
        shadows.note_reported(DEV, "WaterMeter", {"temperature": 21, "flow": 1})
        with pytest.raises(sqlite3.Error):
            await shadows.flush()
        shadows.note_reported(DEV, "WaterMeter", {"flow": 2})
        with pytest.raises(sqlite3.Error):
            await shadows.report(DEV, "WaterMeter", {"temperature": 24})
        assert [r.levelname for r in caplog.records if "not written" in r.getMessage()] == [
            "ERROR"  # once per outage
        ]
        await store.db.run(lambda conn: conn.execute("DROP TRIGGER refuse_shadow_writes"))
        water = await shadows.report(DEV, "WaterMeter", {"temperature": 25})
        assert _values(water.reported) == {"temperature": 25, "flow": 2}  # kept, then the report
        await shadows.flush()
        assert await _stored_values(store) == {"temperature": 25, "flow": 2}


def _refuse_shadow_writes(conn):
    conn.execute(
        "CREATE TEMP TRIGGER refuse_shadow_writes BEFORE INSERT ON main.shadows "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    )
