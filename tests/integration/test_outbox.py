"""The outbox on a real SQLite file: durability, order, bounds, drops, dead letters."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from gatewayd.health import Health
from gatewayd.settings import OutboxConfig
from gatewayd.store.access import StateLocked
from gatewayd.store.outbox import OutboxFull, open_outbox
from tests.helpers import ROOT, daemon_env


async def test_records_survive_a_reopen_in_order_with_their_record_ids(tmp_path):
    path = tmp_path / "outbox.db"
    async with open_outbox(path, OutboxConfig()) as outbox:
        ids = [await outbox.append("d1", "telemetry", b'{"n":%d}' % i) for i in range(10)]
        boot = outbox.boot
        first = await outbox.fetch({}, 3)
        for record in first:
            outbox.ack(record.id)
    instance, start = boot.split(".")
    async with open_outbox(path, OutboxConfig()) as outbox:
        assert outbox.boot == f"{instance}.{int(start) + 1}"
        rest = await outbox.fetch({}, 100)
        assert [r.record_id for r in rest] == ids[3:]
        assert [json.loads(r.payload)["n"] for r in rest] == list(range(3, 10))
        new = await outbox.append("d1", "telemetry", b"{}")
        assert new == f"{instance}.{int(start) + 1}-1"


async def test_fetch_interleaves_devices_and_keeps_order_within_each(tmp_path):
    async with open_outbox(tmp_path / "o.db", OutboxConfig()) as outbox:
        for i in range(5):
            await outbox.append("a", "telemetry", b"%d" % i)
        await outbox.append("b", "telemetry", b"live")
        got = await outbox.fetch({}, 2)
        assert [(r.device, r.payload) for r in got] == [("a", b"0"), ("a", b"1"), ("b", b"live")]
        cursor = {"a": got[1].id, "b": got[2].id}
        more = await outbox.fetch(cursor, 2)
        assert [r.payload for r in more] == [b"2", b"3"]


async def test_drop_oldest_keeps_the_newest_and_counts_every_drop(tmp_path):
    config = OutboxConfig(max_bytes=1024, policy="drop_oldest")
    async with open_outbox(tmp_path / "o.db", config) as outbox:
        payload = b"x" * 100
        for i in range(30):
            await outbox.append("a" if i % 2 else "b", "telemetry", payload[:-3] + b"%03d" % i)
        stats = await outbox.stats()
        kept = await outbox.fetch({}, 100)
        assert stats.bytes <= 1024
        assert stats.records == len(kept) == 10
        assert sorted(int(r.payload[-3:]) for r in kept) == list(range(20, 30))
        assert stats.drops == {"max_bytes": {"a": 10, "b": 10}}
        assert sum(stats.drops["max_bytes"].values()) == 30 - stats.records


async def test_reject_new_refuses_with_a_clear_error_and_counts_it(tmp_path):
    config = OutboxConfig(max_bytes=1024, policy="reject_new")
    async with open_outbox(tmp_path / "o.db", config) as outbox:
        for _ in range(10):
            await outbox.append("a", "telemetry", b"x" * 100)
        with pytest.raises(OutboxFull, match=r"outbox.max_bytes \(1024\) reached.*reject_new"):
            await outbox.append("a", "telemetry", b"x" * 100)
        stats = await outbox.stats()
        assert stats.records == 10
        assert stats.drops == {"rejected": {"a": 1}}
        # the oldest are still there, untouched
        assert len(await outbox.fetch({}, 100)) == 10


async def test_below_the_free_disk_floor_records_are_held_in_memory_and_sent(tmp_path):
    free = [10**9]
    store = Health().component("store")
    config = OutboxConfig(min_free_bytes=10**6)
    async with open_outbox(
        tmp_path / "o.db", config, disk_free=lambda: free[0], health=store, memory_bytes=1000
    ) as outbox:
        await outbox.append("a", "telemetry", b"1")
        free[0] = 10
        outbox.check_disk()
        assert "min_free_bytes (1000000)" in store.problems["outbox.disk"]
        await outbox.append("a", "telemetry", b"2")  # held, not written: returns at once
        await outbox.put("a", "telemetry", b"3")
        got = await outbox.fetch({}, 10)
        assert [r.payload for r in got] == [b"1", b"2", b"3"]
        outbox.ack(got[1].id)  # acknowledged while held: never written
        await outbox.flush()
        assert outbox.depth == 1
        free[0] = 10**9
        outbox.check_disk()
        assert "outbox.disk" not in store.problems
        await outbox.flush()
        assert [r.payload for r in await outbox.fetch({}, 10)] == [b"1", b"3"]
        assert outbox.depth == 2
        assert outbox.unwritten == 1
        assert (await outbox.stats()).drops == {}


async def test_held_records_beyond_the_memory_bound_are_dropped_counted_and_reported(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("gatewayd.store.outbox.DROPS_QUIET_S", 0.5)  # 10 s in the daemon
    free = [10]
    store = Health().component("store")
    config = OutboxConfig(min_free_bytes=10**6, durability="full")
    async with open_outbox(
        tmp_path / "o.db", config, disk_free=lambda: free[0], health=store, memory_bytes=1000
    ) as outbox:
        for i in range(20):
            await outbox.put("a", "telemetry", b"%03d" % i + b"x" * 97)
        assert [r.payload[:3] for r in await outbox.fetch({}, 100)] == [
            b"%03d" % i for i in range(10, 20)
        ]
        assert (await outbox.stats()).drops == {"disk_floor": {"a": 10}}
        async with asyncio.timeout(5):
            while "outbox.drops" not in store.problems:
                await asyncio.sleep(0.05)
        assert "disk_floor 10" in store.problems["outbox.drops"]
        free[0] = 10**9
        outbox.check_disk()
        await outbox.flush()
        assert outbox.depth == 10
        assert (await outbox.stats()).drops == {"disk_floor": {"a": 10}}
        async with asyncio.timeout(5):  # no drop for a while: the problem clears
            while "outbox.drops" in store.problems:
                await asyncio.sleep(0.05)


async def test_reject_new_at_the_memory_bound_refuses_the_new_record(tmp_path):
    config = OutboxConfig(min_free_bytes=10**6, policy="reject_new")
    async with open_outbox(
        tmp_path / "o.db", config, disk_free=lambda: 10, memory_bytes=250
    ) as outbox:
        await outbox.put("a", "telemetry", b"x" * 100)
        await outbox.put("a", "telemetry", b"x" * 100)
        with pytest.raises(OutboxFull, match="held in memory"):
            await outbox.put("a", "telemetry", b"x" * 100)
        assert outbox.held == 2
        assert (await outbox.stats()).drops == {"disk_floor": {"a": 1}}


async def test_records_older_than_max_age_are_dropped_and_counted(tmp_path):
    now = [1000.0]
    config = OutboxConfig(max_age_s=60)
    async with open_outbox(tmp_path / "o.db", config, clock=lambda: now[0]) as outbox:
        await outbox.append("a", "telemetry", b"old")
        now[0] += 30
        await outbox.append("a", "telemetry", b"young")
        now[0] += 40
        async with asyncio.timeout(5):
            while outbox.depth != 1:
                await asyncio.sleep(0.05)
        stats = await outbox.stats()
        assert stats.drops == {"max_age": {"a": 1}}
        assert [r.payload for r in await outbox.fetch({}, 10)] == [b"young"]


async def test_dead_letters_leave_the_queue_and_are_listed(tmp_path):
    path = tmp_path / "o.db"
    async with open_outbox(path, OutboxConfig()) as outbox:
        await outbox.append("a", "telemetry", b"bad")
        await outbox.append("a", "telemetry", b"good")
        bad, _ = await outbox.fetch({}, 10)
        outbox.dead_letter(bad.id, 0x87, "broker refused: Not authorized")
        await outbox.flush()
    async with open_outbox(path, OutboxConfig()) as outbox:
        assert [r.payload for r in await outbox.fetch({}, 10)] == [b"good"]
        (dead,) = await outbox.dead_letters()
        assert (dead.payload, dead.reason_code, dead.record_id) == (b"bad", 0x87, bad.record_id)


async def test_a_corrupt_file_is_moved_aside_and_a_fresh_store_starts(tmp_path):
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not an sqlite database" * 100)
    async with open_outbox(path, OutboxConfig()) as outbox:
        assert outbox.worker.moved_aside is not None
        assert outbox.worker.moved_aside.exists()
        await outbox.append("a", "telemetry", b"1")
        assert outbox.depth == 1


@pytest.mark.parametrize("durability", ["batched", "full"])
def test_an_append_that_returned_survives_sigkill(tmp_path, durability):
    """A child process appends and prints each record id once append() returned; SIGKILL it."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from gatewayd.health import Health
from gatewayd.settings import OutboxConfig
        from gatewayd.store.outbox import open_outbox

        async def main():
            config = OutboxConfig(durability={durability!r})
            async with open_outbox(Path({str(tmp_path / "o.db")!r}), config) as outbox:
                async def producer(device):
                    i = 0
                    while True:
                        rid = await outbox.append(device, "telemetry", b"%d" % i)
                        sys.stdout.write(rid + "\\n")
                        sys.stdout.flush()
                        i += 1
                await asyncio.gather(*(producer(f"d{{k}}") for k in range(4)))

        asyncio.run(main())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=daemon_env(),
        cwd=ROOT,
        text=True,
    )
    acknowledged = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) >= 3000:
            proc.send_signal(signal.SIGKILL)
            break
    rest, _ = proc.communicate(timeout=10)
    acknowledged += [line for line in rest.splitlines() if line]

    async def stored():
        async with open_outbox(tmp_path / "o.db", OutboxConfig()) as outbox:
            return {r.record_id for r in await outbox.fetch({}, 10**6)}

    found = asyncio.run(stored())
    missing = [rid for rid in acknowledged if rid not in found]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"


async def test_put_does_not_wait_for_its_commit_until_too_much_waits(tmp_path, monkeypatch):
    import gatewayd.store.outbox as outbox_module  # noqa: PLC0415

    async with open_outbox(tmp_path / "o.db", OutboxConfig()) as outbox:
        first = await outbox.put("a", "telemetry", b"1")
        assert outbox.depth == 0  # returned before its commit
        await asyncio.wait_for(_until(lambda: outbox.depth == 1), 5)
        monkeypatch.setattr(outbox_module, "PUT_AHEAD_BYTES", 1)
        second = await outbox.put("a", "telemetry", b"2")  # nothing waits: no wait
        third = await outbox.put("a", "telemetry", b"3")  # "2" waits: this one waits too
        assert outbox.depth == 3  # "3" returned only once committed, and "2" with it
        got = await outbox.fetch({}, 10)
        assert [r.record_id for r in got] == [first, second, third]


async def test_a_record_acknowledged_before_its_commit_is_never_written(tmp_path):
    held = OutboxConfig(batch_window_ms=10_000)  # nothing is written unless forced
    async with open_outbox(tmp_path / "o.db", held) as outbox:
        await outbox.put("a", "telemetry", b"sent")
        kept = await outbox.put("a", "telemetry", b"kept")
        first, second = await outbox.fetch({}, 10)  # the pump sends them before any commit
        assert outbox.depth == 0
        outbox.ack(first.id)  # the broker has it
        assert outbox.unwritten == 1
        await outbox.flush()
        assert outbox.depth == 1
    async with open_outbox(tmp_path / "o.db", OutboxConfig()) as outbox:
        assert [r.record_id for r in await outbox.fetch({}, 10)] == [kept]
        assert second.record_id == kept


async def test_records_nobody_acknowledges_are_written_after_the_hold(tmp_path):
    async with open_outbox(tmp_path / "o.db", OutboxConfig(batch_window_ms=50)) as outbox:
        for i in range(3):
            await outbox.put("a", "telemetry", b"%d" % i)
        assert outbox.depth == 0
        await asyncio.wait_for(_until(lambda: outbox.depth == 3), 5)


async def test_an_append_is_not_held_back_and_takes_older_records_with_it(tmp_path):
    async with open_outbox(tmp_path / "o.db", OutboxConfig(batch_window_ms=10_000)) as outbox:
        await outbox.put("a", "telemetry", b"held")
        await asyncio.wait_for(outbox.append("a", "commands/update", b"now"), 2)
        assert outbox.depth == 2  # in the file in order: nothing newer precedes anything older


async def test_a_record_refused_before_its_commit_is_still_dead_lettered(tmp_path):
    async with open_outbox(tmp_path / "o.db", OutboxConfig(batch_window_ms=10_000)) as outbox:
        rid = await outbox.put("a", "telemetry", b"bad")
        (record,) = await outbox.fetch({}, 10)
        outbox.dead_letter(record.id, 0x87, "broker refused: Not authorized")

        async def moved() -> None:  # promptly, though the hold is long
            while not await outbox.dead_letters():
                await asyncio.sleep(0.01)

        await asyncio.wait_for(moved(), 2)
        (dead,) = await outbox.dead_letters()
        assert (dead.record_id, dead.reason_code) == (rid, 0x87)
        assert (await outbox.stats()).records == 0


async def _until(check) -> None:
    while not check():
        await asyncio.sleep(0.01)


async def test_a_file_another_process_locks_is_not_damage_and_is_left_alone(tmp_path):
    path = tmp_path / "o.db"
    async with open_outbox(path, OutboxConfig()) as outbox:
        await outbox.append("a", "telemetry", b"1")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StateLocked, match="locked by another process"):
            async with open_outbox(path, OutboxConfig()):
                pass
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "damaged" in p.name) == []
    async with open_outbox(path, OutboxConfig()) as outbox:
        assert outbox.depth == 1
