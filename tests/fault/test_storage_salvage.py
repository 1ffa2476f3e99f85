"""Issue 14, item 4: a damaged outbox is salvaged, not set aside whole.

As in the issue: an outbox holding 94 queued records is truncated to half, or gets 8 KB of
garbage in the middle. Truncated, a fresh file loses all 94 (its record pages are all in the
second half), so the file is one with a history: 1,000 records sent and deleted before the
94, their pages free and reused, as on a gateway that has run for a while. With garbage, a
fresh file: in one with a history the middle is free pages, which SQLite's check does not
read, and nothing is damaged (tests/integration/test_outbox_salvage.py has all four).

The real daemon starts on it with a real broker: every record SQLite can still read reaches
the cloud once, with its original record id; the counts salvaged and lost are logged, shown
in /healthz (degraded) and in /metrics, and the damaged file is kept.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from gatewayd.settings import OutboxConfig
from gatewayd.store.cloud_state import cloud_state_schema
from gatewayd.store.outbox import open_outbox
from tests.fault.daemon_setup import DEVICES, TOKEN, Daemon
from tests.fault.storage_setup import storage_config
from tests.helpers import free_port
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud

pytestmark = pytest.mark.timeout(60)

QUEUED = 94


async def queued_outbox(path: Path, history: int) -> set[str]:
    """94 records waiting, after `history` sent and deleted; returns their record ids."""
    async with open_outbox(path, OutboxConfig(), schema=cloud_state_schema) as outbox:
        for i in range(history):
            await outbox.append("memory_d0", "telemetry", b'{"old":%d,"pad":"%s"}' % (i, b"x" * 60))
        for record in await outbox.fetch({}, 5000):
            outbox.ack(record.id)
        await outbox.flush()
        ids = set()
        for i in range(QUEUED):
            device = DEVICES[i % len(DEVICES)]
            body = {
                "status": "online",
                "timestamp": "2026-12-03T10:00:00Z",
                "telemetries": {"seq": i // len(DEVICES)},
            }
            ids.add(await outbox.append(f"memory_{device}", "telemetry", json.dumps(body).encode()))
    return ids


def truncate_to_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def garbage_in_the_middle(path: Path) -> None:
    middle = path.stat().st_size // 2
    with path.open("r+b") as f:
        f.seek(middle - 4096)
        f.write(os.urandom(8192))


def metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


@pytest.mark.parametrize(
    ("damage", "history"), [(truncate_to_half, 1000), (garbage_in_the_middle, 0)]
)
async def test_a_damaged_outbox_is_salvaged_into_the_new_one_and_reported(
    tmp_path, damage, history
):
    state = tmp_path / "state"
    state.mkdir()
    queued = await queued_outbox(state / "outbox.db", history)
    damage(state / "outbox.db")
    with Broker(tmp_path / "broker") as broker:
        async with RefCloud(broker.port).running() as cloud:
            port = free_port()
            config = storage_config(tmp_path / "gw.yaml", state, port, broker.port, producing=False)
            daemon = Daemon(config, port, tmp_path / "daemon.log")
            await asyncio.to_thread(daemon.start)
            try:
                health = await asyncio.to_thread(daemon.get, "/healthz")
                text = await asyncio.to_thread(metrics, daemon)
                salvaged = int(metric(text, "gatewayd_outbox_salvaged_records"))
                lost = int(metric(text, "gatewayd_outbox_salvage_lost_records"))
                await cloud.wait(lambda: len(cloud.telemetry()) >= salvaged, 15)
                await cloud.wait(lambda: daemon.get("/v1/outbox/stats")["records"] == 0, 15)
            finally:
                await asyncio.to_thread(daemon.stop)

    delivered = [u.body["record_id"] for u in cloud.telemetry()]
    assert set(delivered) <= queued, "only records of the damaged file, with their own ids"
    assert len(set(delivered)) == salvaged
    assert salvaged > 0
    assert salvaged + lost == QUEUED
    assert health["status"] == "degraded"
    assert any(f"{salvaged} records salvaged" in p for p in health["problems"]), health
    kept = [p for p in state.iterdir() if ".damaged-" in p.name]
    assert kept, "the damaged file is kept"
    log = (tmp_path / "daemon.log").read_text()
    assert f"{salvaged} records salvaged" in log


def metrics(daemon: Daemon) -> str:
    import urllib.request  # noqa: PLC0415

    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.api_port}/metrics", headers={"X-Auth-Token": TOKEN}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return resp.read().decode()
