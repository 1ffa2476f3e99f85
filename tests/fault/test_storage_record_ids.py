"""Issue 14, item 2: record ids never repeat, whatever happens to the outbox file.

The real daemon sends to the reference cloud through a real broker; between runs the
outbox is reset the three ways the issue names: a corrupt file set aside, a zero-length
file, a wiped state directory. The cloud drops duplicates by `record_id`, so one id must
never name two different readings.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.fault.daemon_setup import Daemon
from tests.fault.storage_setup import storage_config
from tests.helpers import free_port
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud

pytestmark = pytest.mark.timeout(90)


def corrupt(state: Path) -> None:
    (state / "outbox.db").write_bytes(b"not an SQLite file, " * 2000)


def zero_length(state: Path) -> None:
    (state / "outbox.db").write_bytes(b"")


def wipe(state: Path) -> None:
    shutil.rmtree(state)


async def test_record_ids_never_repeat_across_three_outbox_resets(tmp_path):
    state = tmp_path / "state"
    with Broker(tmp_path / "broker") as broker:
        async with RefCloud(broker.port).running() as cloud:
            port = free_port()
            config = storage_config(tmp_path / "gw.yaml", state, port, broker.port)
            daemon = Daemon(config, port, tmp_path / "daemon.log")
            for reset in (None, corrupt, zero_length, wipe):
                if reset is not None:
                    reset(state)
                seen = len(cloud.telemetry())
                await asyncio.to_thread(daemon.start)
                try:
                    await cloud.wait(lambda n=seen: len(cloud.telemetry()) >= n + 100, 20)
                finally:
                    await asyncio.to_thread(daemon.stop)

    by_id: dict[str, tuple[str, object, object]] = {}
    repeats = []
    for up in cloud.telemetry():
        body = up.body
        reading = (up.device, body["telemetries"].get("seq"), body.get("timestamp"))
        if by_id.setdefault(body["record_id"], reading) != reading:
            repeats.append((body["record_id"], by_id[body["record_id"]], reading))
    assert not repeats, f"{len(repeats)} ids name two readings, e.g. {repeats[:3]}"
    runs = {rid.split("-")[0] for rid in by_id}
    assert len(runs) == 4, runs
    instances = {run.split(".")[0] for run in runs}
    assert len(instances) == 4, "every reset starts a file with its own instance"
    log = (tmp_path / "daemon.log").read_text()
    assert "failed its integrity check" in log
    assert "is empty (0 bytes)" in log
