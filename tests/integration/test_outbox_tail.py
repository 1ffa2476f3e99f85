"""The outbox's in-memory tail against SQLite itself: same answers, exact counters, no loss.

`fetch()` serves devices that are caught up from memory and the others from the file. Every
answer here is checked against a query of the file on the outbox's own worker (so it sees
exactly what the outbox committed), over random runs of appends, acknowledgements, dead
letters, drops for space, expiry by age, tail overflow, new sessions and restarts.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.model import PointRef, Reading
from gatewayd.settings import OutboxConfig
from gatewayd.store.outbox import Outbox, Record, open_outbox
from gatewayd.store.outbox_db import Batch, OutboxTables, migrate
from gatewayd.store.outbox_tail import RECORD_OVERHEAD, Tail
from tests.helpers import async_wait_for
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud
from tests.uplink_harness import running_gateway, settings_for

DEVICES = ("a", "b", "c")
MAX_AGE_S = 100.0

Op = tuple[str, int, int]
OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["append"] * 4
            + ["put", "put"]
            + ["burst", "send", "send", "send", "ack", "ack", "ack", "dead"]
            + ["peek", "peek", "session", "age", "skew", "sweep", "check", "reopen"]
        ),
        st.integers(0, 1000),
        st.integers(0, 1000),
    ),
    max_size=60,
)


def oracle(
    conn: sqlite3.Connection,
    after: dict[str, int],
    per_device: int,
    skip: set[int],
    held: list[Record],
) -> list[Record]:
    """What fetch() must answer: the file, plus the records put and not yet written.

    Per device the oldest records after its cursor that are not settled; devices in the order
    of their oldest record returned.
    """
    lanes = []
    for device in DEVICES:
        rows = conn.execute(
            "SELECT id, record_id, device, kind, payload, created FROM records "
            "WHERE device = ? AND id > ? ORDER BY id",
            (device, after.get(device, 0)),
        ).fetchall()
        cursor = after.get(device, 0)
        records = [Record(*row) for row in rows]
        records += [r for r in held if r.device == device and r.id > cursor]
        lane = [r for r in records if r.id not in skip][:per_device]
        if lane:
            lanes.append(lane)
    lanes.sort(key=lambda lane: lane[0].id)
    return [record for lane in lanes for record in lane]


def totals(conn: sqlite3.Connection) -> tuple[int, int]:
    row = conn.execute("SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM records")
    return tuple(row.fetchone())


@dataclass
class Run:
    """The pump's side of a run: cursors, records in flight, what was settled."""

    cursors: dict[str, int] = field(default_factory=dict)
    in_flight: list[Record] = field(default_factory=list)
    settled: set[int] = field(default_factory=set)  # acked or dead in this open
    appended: dict[str, bytes] = field(default_factory=dict)  # record_id -> payload
    acked: set[str] = field(default_factory=set)  # record ids
    dead: set[str] = field(default_factory=set)

    def new_session(self) -> None:
        self.cursors.clear()
        self.in_flight.clear()


async def check(outbox: Outbox, run: Run, after: dict[str, int], per_device: int) -> list[Record]:
    got = await outbox.fetch(after, per_device)
    # Put records are held back from the file (the hold outlasts a run): the pump sees them
    # from memory. No commit can start between this snapshot and the query behind it.
    held = [record for record, _ in outbox._pending.values()]
    want = await outbox.worker.call(lambda conn: oracle(conn, after, per_device, run.settled, held))
    assert got == want
    return got


async def check_counters(outbox: Outbox) -> None:
    await outbox.flush()
    count, size = await outbox.worker.call(totals)
    stats = await outbox.stats()
    assert (outbox.depth, stats.records, stats.bytes) == (count, count, size)


async def step(outbox: Outbox, run: Run, op: Op, now: list[float]) -> None:
    name, x, y = op
    if name in ("append", "burst"):  # concurrent appends share a commit
        n = 1 + x % 4 if name == "append" else 5 + x % 11
        devices = [DEVICES[(x + k * y) % len(DEVICES)] for k in range(n)]
        payloads = [b"%d-" % (len(run.appended) + k) + b"x" * ((y + k) % 300) for k in range(n)]
        ids = await asyncio.gather(
            *(outbox.append(d, "telemetry", p) for d, p in zip(devices, payloads, strict=True))
        )
        run.appended.update(zip(ids, payloads, strict=True))
    elif name == "put":  # held back from the file; sent, acknowledged or dropped meanwhile
        payload = b"%d-put" % len(run.appended) + b"y" * (x % 200)
        run.appended[await outbox.put(DEVICES[y % len(DEVICES)], "telemetry", payload)] = payload
    elif name == "send":  # what the pump does: fetch, move the cursors, put in flight
        batch = await check(outbox, run, dict(run.cursors), 1 + x % 6)
        for record in batch:
            run.cursors[record.device] = record.id
        run.in_flight += batch
    elif name in ("ack", "dead") and run.in_flight:
        # Not committed at once: later fetches and bounds meet acknowledgements on their way.
        record = run.in_flight.pop(x % len(run.in_flight))
        run.settled.add(record.id)
        if name == "ack":
            outbox.ack(record.id)
            run.acked.add(record.record_id)
        else:
            outbox.dead_letter(record.id, 0x87, "test")
            run.dead.add(record.record_id)
    elif name == "peek":  # any cursors, not only the pump's (row ids count appends from 1)
        top = len(run.appended) + 2
        after = {d: (x * (i + 1) + y) % top for i, d in enumerate(DEVICES)}
        await check(outbox, run, after, 1 + y % 5)
    elif name == "session":
        run.new_session()
    elif name in ("age", "skew", "sweep"):  # skew: the wall clock steps back
        now[0] += {"age": x % 120, "skew": -(x % 60), "sweep": 0}[name]
        await outbox.sweep()
    elif name == "check":
        await check_counters(outbox)


async def drain_and_compare(outbox: Outbox, run: Run) -> None:
    """A fresh session reads everything left: all that was neither settled nor dropped."""
    await outbox.flush()  # held records written now, and any drop for space with them
    run.new_session()
    seen: list[Record] = []
    while batch := await check(outbox, run, dict(run.cursors), 7):
        for record in batch:
            run.cursors[record.device] = record.id
        seen += batch
    left = {r.record_id for r in seen}
    assert not left & (run.acked | run.dead)
    for record in seen:
        assert record.payload == run.appended[record.record_id]
    await check_counters(outbox)
    stats = await outbox.stats()
    dropped = sum(n for per in stats.drops.values() for n in per.values())
    # A record neither waiting, acknowledged nor dead was dropped by a bound, and counted.
    # (One acknowledged while a bound dropped it counts as both: hence at most.)
    missing = set(run.appended) - left - run.acked - run.dead
    assert len(missing) <= dropped
    assert stats.records == len(left)
    assert stats.dead_letters <= len(run.dead)
    run.new_session()


async def scenario(path: Path, ops: list[Op], max_bytes: int, tail_bytes: int) -> None:
    now = [1000.0]
    config = OutboxConfig(
        max_bytes=max_bytes, policy="drop_oldest", max_age_s=MAX_AGE_S, batch_window_ms=10_000
    )
    run = Run()
    rest = list(ops)
    while True:
        async with open_outbox(path, config, clock=lambda: now[0], tail_bytes=tail_bytes) as ob:
            run.settled.clear()
            while rest:
                op = rest.pop(0)
                if op[0] == "reopen":
                    break
                await step(ob, run, op, now)
            await drain_and_compare(ob, run)
            if not rest:
                return


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(
    ops=OPS,
    max_bytes=st.sampled_from([1500, 4000, 10**9]),
    tail_bytes=st.sampled_from([1500, 4000, 1 << 20]),
)
def test_fetch_from_memory_answers_what_sqlite_answers(ops, max_bytes, tail_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp) / "outbox.db", ops, max_bytes, tail_bytes))


async def test_a_restart_delivers_everything_not_acknowledged(tmp_path):
    path = tmp_path / "outbox.db"
    async with open_outbox(path, OutboxConfig()) as outbox:
        for i in range(30):
            await outbox.append(DEVICES[i % 3], "telemetry", b"%d" % i)
        first = await outbox.fetch({}, 4)  # from memory: the file was empty at open
        for record in first[:6]:
            outbox.ack(record.id)
        outbox.dead_letter(first[6].id, 0x87, "refused")
        waiting = {r.record_id for r in await outbox.fetch({}, 100)}
    async with open_outbox(path, OutboxConfig()) as outbox:
        again = await outbox.fetch({}, 100)  # from the file: all of it is backlog now
        assert {r.record_id for r in again} == waiting
        assert len(waiting) == 30 - 7
        assert outbox.depth == 23


async def test_an_ack_of_a_record_a_bound_already_dropped_keeps_the_counters_exact(tmp_path):
    """The tail knew the record's size, but max_bytes dropped it before its ack was written."""
    conn = sqlite3.connect(tmp_path / "o.db", isolation_level=None)
    migrate(conn)
    tables = OutboxTables(conn)
    rows = [(i + 1, f"1-{i}", "a", "telemetry", b"x" * (10 + i), 1.0) for i in range(4)]
    tables.commit(conn, Batch(inserts=rows), None)
    records = [Record(*row) for row in rows]
    dropped = tables.commit(conn, Batch(inserts=[(5, "1-9", "b", "kind", b"y" * 40, 1.0)]), 60)
    assert dropped.dropped == {"a": 3}
    assert dropped.dropped_through == records[2].id
    late = Batch(acks=[records[0].id, records[3].id], known={r.id: r for r in records})
    tables.commit(conn, late, None)
    assert (tables.count, tables.bytes) == totals(conn) == (1, 40)
    conn.close()


@pytest.mark.parametrize("restart", [False, True], ids=["memory", "sqlite"])
async def test_a_new_session_skips_acknowledgements_not_yet_written(tmp_path, restart):
    path = tmp_path / "outbox.db"
    async with open_outbox(path, OutboxConfig()) as outbox:
        for i in range(10):
            await outbox.append("a", "telemetry", b"%d" % i)
        if not restart:
            await check_new_session(outbox)
    if restart:  # the records are a backlog in the file now
        async with open_outbox(path, OutboxConfig()) as outbox:
            await check_new_session(outbox)


async def check_new_session(outbox: Outbox) -> None:
    first = await outbox.fetch({}, 4)
    outbox.ack(first[0].id)
    outbox.ack(first[1].id)
    # A reconnect starts over at 0 before the acknowledgements are committed.
    again = await outbox.fetch({}, 4)
    assert [r.payload for r in again] == [b"2", b"3", b"4", b"5"]


async def test_records_expired_out_of_order_leave_the_others_deliverable(tmp_path):
    """The wall clock stepped back: a record stamped earlier than older ones expires first."""
    now = [1000.0]
    config = OutboxConfig(max_age_s=100)
    async with open_outbox(tmp_path / "o.db", config, clock=lambda: now[0]) as outbox:
        await outbox.append("a", "telemetry", b"old")
        now[0] = 1050.0
        await outbox.append("a", "telemetry", b"kept")
        await outbox.append("b", "telemetry", b"kept too")
        now[0] = 900.0
        await outbox.append("a", "telemetry", b"expires")
        now[0] = 1120.0
        await outbox.append("b", "telemetry", b"newest")
        await outbox.sweep()
        assert [r.payload for r in await outbox.fetch({}, 10)] == [b"kept", b"kept too", b"newest"]
        assert outbox.depth == 3


async def test_a_failed_commit_is_kept_and_written_once_the_file_takes_writes(tmp_path):
    """Another process holds the file's write lock: commits fail, nothing is lost or resent."""
    path = tmp_path / "o.db"
    async with open_outbox(path, OutboxConfig()) as outbox:
        await outbox.worker.call(lambda conn: conn.execute("PRAGMA busy_timeout = 20"))
        for i in range(5):
            await outbox.append("a", "telemetry", b"%d" % i)
        sent = await outbox.fetch({}, 10)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        outbox.ack(sent[0].id)
        outbox.ack(sent[1].id)
        await outbox.flush()
        assert outbox.holding == "disk_full"
        await outbox.append("a", "telemetry", b"held")  # held in memory: returns at once
        # The acknowledged records are not sent again; the held one is sent from memory.
        again = await outbox.fetch({}, 10)
        assert [r.payload for r in again] == [b"2", b"3", b"4", b"held"]
        other.execute("ROLLBACK")
        other.close()
        async with asyncio.timeout(5):
            while outbox.holding is not None or outbox.held:
                await asyncio.sleep(0.02)
        await check_counters(outbox)
        assert outbox.depth == 4


def reading(device: str, value: float) -> Reading:
    return Reading(PointRef("sim", device, "seq"), value, None, datetime.now(UTC))


async def test_a_pump_that_keeps_up_reads_no_record_back_from_sqlite(tmp_path):
    """The seam is SQLite's own statement trace on the outbox's connection."""
    devices = [f"d{i}" for i in range(5)]
    broker = Broker(tmp_path / "broker")
    settings = settings_for(tmp_path, broker.port, devices)
    async with open_outbox(settings.state_dir / "outbox.db", settings.outbox) as outbox:
        for i in range(300):  # a backlog from before the restart
            await outbox.append(f"memory_d{i % 5}", "telemetry", b'{"seq": %d}' % i)
    fetches: list[str] = []

    def trace(statement: str) -> None:
        if "FROM records WHERE device" in statement:
            fetches.append(statement)

    async with running_gateway(settings) as gw:  # offline: the broker is not up yet
        await gw.outbox.worker.call(lambda conn: conn.set_trace_callback(trace))
        with broker:
            async with RefCloud(broker.port).running() as cloud:
                await cloud.wait(lambda: len(cloud.telemetry()) >= 300)
                assert fetches, "the backlog is read from SQLite"
                await async_wait_for(lambda: gw.outbox.depth == 0)
                fetches.clear()

                async def produce(device: str) -> None:
                    for i in range(100):
                        await gw.sink.readings("sim", device, [reading(device, i)])

                async with asyncio.TaskGroup() as tg:
                    for device in devices:
                        tg.create_task(produce(device))
                await cloud.wait(lambda: len(cloud.telemetry()) >= 800)
                await async_wait_for(lambda: gw.outbox.depth == 0)
                assert fetches == []
                for device in devices:
                    live = cloud.of("telemetry", f"memory_{device}")[60:]
                    assert [u.body["telemetries"]["seq"] for u in live] == list(range(100))


def test_the_tail_never_gives_the_backlog_a_record_not_yet_written():
    tail = Tail(floor=0, backlog={}, max_bytes=2 * (RECORD_OVERHEAD + 10))
    records = [Record(i, f"1-{i}", "a", "telemetry", b"x" * 10, 1.0) for i in range(1, 7)]
    tail.add(records[:5])
    assert len(tail) == 5  # over its bound, but none of them is in the file yet
    assert tail.backlog == {}
    tail.settled = 3
    tail.add(records[5:])
    assert tail.backlog == {"a": 3}  # the written ones go; the rest stay
    assert len(tail) == 3
