"""Salvage of a damaged outbox file, in process: the four damages of issue 14 and the counts.

94 records are queued, in a fresh file or after 1,000 records sent and deleted (their pages
free and reused). The figures are SQLite's page layout at work: a fresh file keeps its
record pages in its second half, a file with a history has free pages in its middle.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from gatewayd.health import Health
from gatewayd.settings import OutboxConfig
from gatewayd.store.cloud_state import cloud_state_schema
from gatewayd.store.outbox import open_outbox

QUEUED = 94


async def queued(path: Path, history: int) -> list[str]:
    async with open_outbox(path, OutboxConfig(), schema=cloud_state_schema) as outbox:
        for i in range(history):
            await outbox.append("d0", "telemetry", b'{"old":%d,"pad":"%s"}' % (i, b"x" * 60))
        for record in await outbox.fetch({}, 5000):
            outbox.ack(record.id)
        await outbox.flush()
        body = {"status": "online", "timestamp": "2026-12-03T10:00:00Z"}
        return [
            await outbox.append(
                f"d{i % 10}", "telemetry", json.dumps({**body, "telemetries": {"seq": i}}).encode()
            )
            for i in range(QUEUED)
        ]


def truncate_to_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def garbage_in_the_middle(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2 - 4096)
        f.write(os.urandom(8192))


@pytest.mark.parametrize(
    ("damage", "history", "salvaged"),
    [
        (truncate_to_half, 0, "none"),  # every record page is in the second half
        (truncate_to_half, 1000, "some"),  # 83 or 86 of 94, as the pages fall
        (garbage_in_the_middle, 0, "all"),  # the garbage hits other tables' pages
        (garbage_in_the_middle, 1000, "undamaged"),  # free pages: SQLite sees no damage
    ],
)
async def test_a_damaged_outbox_gives_back_what_sqlite_can_read(
    tmp_path, damage, history, salvaged
):
    path = tmp_path / "outbox.db"
    ids = await queued(path, history)
    damage(path)
    store = Health().component("store")
    async with open_outbox(path, OutboxConfig(), schema=cloud_state_schema, health=store) as ob:
        records = await ob.fetch({}, 1000)
        assert {r.record_id for r in records} <= set(ids)
        if salvaged == "undamaged":
            assert ob.salvage is None
            assert len(records) == QUEUED
            return
        assert ob.salvage is not None
        n = ob.salvage.records
        assert {"none": n == 0, "some": 0 < n < QUEUED, "all": n == QUEUED}[salvaged]
        assert ob.salvage.lost == QUEUED - n
        assert len(records) == ob.depth == n
        assert ob.salvage.describe() in store.problems["outbox.salvaged"]
        aside = ob.salvage.source
    assert aside.exists()
    with pytest.raises(sqlite3.DatabaseError):  # kept as it was found
        sqlite3.connect(aside).execute("PRAGMA integrity_check").fetchall()


async def test_salvaged_records_keep_their_order_and_new_ones_follow(tmp_path):
    path = tmp_path / "outbox.db"
    ids = await queued(path, 1000)
    truncate_to_half(path)
    async with open_outbox(path, OutboxConfig(), schema=cloud_state_schema) as outbox:
        new = await outbox.append("d0", "telemetry", b"{}")
        got = [r.record_id for r in await outbox.fetch({}, 1000) if r.device == "d0"]
    assert got[-1] == new
    old = got[:-1]
    assert old == [rid for rid in ids if rid in old]  # in the order they were appended
    assert new.split("-")[0] != ids[0].split("-")[0]  # a new file, a new instance


async def test_a_zero_length_outbox_is_logged_and_started_as_new(tmp_path, caplog):
    path = tmp_path / "outbox.db"
    path.write_bytes(b"")
    async with open_outbox(path, OutboxConfig()) as outbox:
        assert outbox.worker.was_empty
        await outbox.append("d0", "telemetry", b"{}")
    assert "is empty (0 bytes)" in caplog.text
