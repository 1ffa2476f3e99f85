"""Issue 14, items 3 and 6: a small partition and a full disk, on a real tmpfs.

The real daemon keeps its state on a small tmpfs, polls 10 memory devices every 10 ms
(1,000 readings/s, each device counting 0, 1, 2, ...) and sends through a real broker to
the reference cloud. The disk is filled with a file and freed by deleting it.

What must hold: readings keep flowing while the link is up (held in memory, acknowledged,
never written); during an outage the held records are bounded and every record dropped is
counted; /healthz says degraded with the reason while it lasts and clears when space
returns; the daemon never exits; and at the end every reading the cloud misses is one the
daemon counted as dropped (per-record counts: sent, delivered, lost, duplicated).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatewayd.health import Health
from gatewayd.settings import OutboxConfig
from gatewayd.store.outbox import open_outbox
from tests.fault.daemon_setup import TOKEN, Daemon
from tests.fault.storage_setup import fill, storage_config, tmpfs
from tests.helpers import ROOT, free_port
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
    pytest.mark.timeout(90),
]

DEVICES_PATH = "/v5/iot/local/devices"
HELD = 64 * 1024  # outbox.held_max_bytes in these tests: an outage fills it in a second


async def get(daemon: Daemon, path: str) -> Any:
    return await asyncio.to_thread(daemon.get, path)


async def until(daemon: Daemon, path: str, check: Any, timeout_s: float, what: str) -> Any:
    """Poll the daemon's API until `check(body)`; fails naming `what` and the last body."""
    body = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                body = await get(daemon, path)
                if check(body):
                    return body
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {timeout_s} s; last {path}: {body}") from None


def disk_problem(health: dict[str, Any]) -> str | None:
    return next((p for p in health.get("problems", []) if "free disk" in p or "writes fail" in p),
                None)  # fmt: skip


def counts(cloud: RefCloud, run: str) -> dict[str, int]:
    """Per-record counts of one run: sent (the highest reading + 1 of each device),
    delivered (distinct), lost (never delivered), duplicated (delivered more than once)."""
    seen: dict[str, tuple[str, int]] = {}
    duplicated = 0
    values: dict[str, set[int]] = {}
    for up in cloud.telemetry():
        rid = up.body["record_id"]
        if not rid.startswith(run + "-"):
            continue
        value = (up.device, int(up.body["telemetries"]["seq"]))
        if rid in seen:
            assert seen[rid] == value, f"{rid} names two readings"
            duplicated += 1
            continue
        seen[rid] = value
        values.setdefault(up.device, set()).add(value[1])
    sent = sum(max(v) + 1 for v in values.values())
    delivered = sum(len(v) for v in values.values())
    return {"sent": sent, "delivered": delivered, "lost": sent - delivered,
            "duplicated": duplicated}  # fmt: skip


def assert_accounted(tally: dict[str, int]) -> None:
    """Every reading the cloud misses was counted as dropped. A record dropped from memory
    while its PUBACK was on its way may have reached the cloud all the same: a drop count a
    little above the loss (at most the pump's window) is no record lost silently."""
    assert tally["lost"] <= tally["dropped"] <= tally["lost"] + 200, tally


def drops(stats: dict[str, Any]) -> int:
    return sum(n for by_device in stats["drops"].values() for n in by_device.values())


async def start(tmp_path: Path, state: Path, broker: Broker, **outbox: Any) -> Daemon:
    port = free_port()
    config = storage_config(
        tmp_path / "gw.yaml", state, port, broker.port, outbox={"held_max_bytes": HELD, **outbox}
    )
    daemon = Daemon(config, port, tmp_path / "daemon.log")
    await asyncio.to_thread(daemon.start)
    return daemon


async def flowing(cloud: RefCloud, n: int = 1000, timeout_s: float = 10) -> float:
    """Wait for `n` more readings at the cloud; returns how long they took."""
    began, seen = time.monotonic(), len(cloud.telemetry())
    await cloud.wait(lambda: len(cloud.telemetry()) >= seen + n, timeout_s)
    return time.monotonic() - began


async def outage_and_recovery(daemon: Daemon, broker: Broker, cloud: RefCloud) -> int:
    """Stop the broker until the held records overflow; returns the drops counted."""
    if broker.running:
        broker.stop()
    stats = await until(daemon, "/v1/outbox/stats", lambda s: drops(s) > 500, 15,
                        "records dropped at the memory bound during the outage")  # fmt: skip
    health = await until(daemon, "/healthz",
                         lambda h: any("dropping records" in p for p in h.get("problems", [])),
                         5, "drops shown in /healthz")  # fmt: skip
    assert health["status"] == "degraded"
    broker.start()
    await flowing(cloud)
    return drops(stats)


async def drain(daemon: Daemon, cloud: RefCloud, run: str) -> dict[str, int]:
    """Stop producing, let every record go out, and count the run's records at the cloud."""
    stats = await until(daemon, "/v1/outbox/stats", lambda s: True, 5, "stats")
    await asyncio.to_thread(daemon.stop)
    assert daemon.proc is not None
    assert daemon.proc.returncode == 0
    return counts(cloud, run) | {"dropped": drops(stats)}


def run_of(cloud: RefCloud) -> str:
    return cloud.telemetry()[-1].body["record_id"].split("-")[0]


async def test_a_small_partition_keeps_delivering_below_the_floor_and_reports_it(tmp_path):
    """Item 3 as written: a partition smaller than the old 64 MiB floor, then one below the
    automatic floor (2 % of it)."""
    with (
        tmpfs(tmp_path / "disk", "16m") as disk,
        Broker(tmp_path / "broker", persistence=True) as broker,
    ):
        async with RefCloud(broker.port).running() as cloud:
            daemon = await start(tmp_path, disk / "state", broker)
            try:
                await flowing(cloud)
                health = await get(daemon, "/healthz")
                assert health["status"] == "ok", health
                assert (await get(daemon, "/v1/outbox/stats"))["drops"] == {}

                filler = fill(disk, leave=100 * 1024)  # below the floor of 16 MiB / 50
                health = await until(daemon, "/healthz", disk_problem, 5, "floor in /healthz")
                assert "min_free_bytes" in disk_problem(health)
                took = await flowing(cloud)  # connected: readings keep flowing
                assert (await get(daemon, "/v1/outbox/stats"))["drops"] == {}

                dropped = await outage_and_recovery(daemon, broker, cloud)

                filler.unlink()
                freed = time.monotonic()
                await until(daemon, "/healthz", lambda h: not disk_problem(h), 5, "floor cleared")
                resumed = time.monotonic() - freed
                run = run_of(cloud)
                await flowing(cloud)
                tally = await drain(daemon, cloud, run)
            finally:
                daemon.stop()
    assert tally["dropped"] >= dropped
    assert_accounted(tally)
    assert tally["delivered"] > 3000
    print(f"small partition: 1,000 readings in {took:.2f} s below the floor; {tally}; "
          f"floor cleared {resumed:.2f} s after the space returned")  # fmt: skip


async def test_disk_full_while_connected_and_during_an_outage_then_space_returns(tmp_path):
    """Item 6: the disk fills to the last byte while running; nothing crashes, nothing sent
    is lost, drops are counted and shown, and writing resumes by itself."""
    with (
        tmpfs(tmp_path / "disk", "8m") as disk,
        Broker(tmp_path / "broker", persistence=True) as broker,
    ):
        async with RefCloud(broker.port).running() as cloud:
            daemon = await start(tmp_path, disk / "state", broker, min_free_bytes=0)
            try:
                await flowing(cloud)
                filler = fill(disk)  # to the last byte: SQLite's writes fail
                # Connected, readings keep flowing: acknowledged within batch_window_ms,
                # they are never written. The state database's writes (reported values)
                # fail: kept, retried, and shown.
                took = await flowing(cloud)
                await until(daemon, "/healthz",
                            lambda h: any("state database" in p for p in h["problems"]),
                            5, "state.db writes failing in /healthz")  # fmt: skip

                broker.stop()  # now records wait: their writes fail, they are held
                health = await until(daemon, "/healthz", disk_problem, 5, "disk in /healthz")
                assert health["status"] == "degraded"
                assert "database or disk is full" in disk_problem(health)
                dropped = await outage_and_recovery(daemon, broker, cloud)

                filler.unlink()
                freed = time.monotonic()
                await until(daemon, "/healthz", lambda h: not disk_problem(h), 10, "disk cleared")
                await until(daemon, "/healthz",
                            lambda h: not any("state database" in p for p in h["problems"]),
                            5, "state.db writes cleared")  # fmt: skip
                resumed = time.monotonic() - freed
                run = run_of(cloud)
                await flowing(cloud)
                tally = await drain(daemon, cloud, run)
            finally:
                daemon.stop()
    log = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in log
    assert tally["dropped"] >= dropped
    assert_accounted(tally)
    print(f"disk full: 1,000 readings in {took:.2f} s while full; {tally}; "
          f"writes resumed {resumed:.2f} s after the space returned")  # fmt: skip


async def test_a_daemon_started_on_a_full_disk_runs_and_stops_on_sigterm(tmp_path):
    """Item 6: starting on a full disk (its files there from an earlier run) is no crash,
    readings flow, and SIGTERM with the disk full stops it within 5 s."""
    with (
        tmpfs(tmp_path / "disk", "8m") as disk,
        Broker(tmp_path / "broker", persistence=True) as broker,
    ):
        async with RefCloud(broker.port).running() as cloud:
            daemon = await start(tmp_path, disk / "state", broker, min_free_bytes=0)
            await flowing(cloud, 100)
            await asyncio.to_thread(daemon.stop)
            filler = fill(disk)
            try:
                await asyncio.to_thread(daemon.start)
                health = await until(daemon, "/healthz", disk_problem, 5, "disk in /healthz")
                assert health["status"] == "degraded"
                await flowing(cloud)
                assert daemon.proc is not None
                daemon.proc.terminate()
                began = time.monotonic()
                status = await asyncio.to_thread(daemon.proc.wait, 10)
                stopped = time.monotonic() - began
            finally:
                daemon.stop()
                filler.unlink()
    assert status == 0
    assert stopped < 5
    log = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in log
    print(f"started on a full disk; SIGTERM to exit {stopped:.2f} s")


async def test_a_new_outbox_on_a_full_disk_is_kept_in_memory_and_reported(tmp_path):
    """A wiped state directory on a full disk: SQLite cannot even create the file. The
    outbox runs in memory for this run, degraded, instead of ending the daemon."""
    store = Health().component("store")
    with tmpfs(tmp_path / "disk", "1m") as disk:
        (disk / "state").mkdir()
        filler = fill(disk)
        try:
            async with open_outbox(disk / "state" / "outbox.db", OutboxConfig(),
                                   health=store) as outbox:  # fmt: skip
                record_id = await outbox.append("a", "telemetry", b"1")
                assert [r.record_id for r in await outbox.fetch({}, 10)] == [record_id]
                assert "cannot be opened" in store.problems["outbox.memory"]
        finally:
            filler.unlink()


async def test_a_wiped_state_directory_on_a_full_disk_runs_in_memory(tmp_path):
    """Item 6, the hardest start: no state files at all and no byte free. The daemon runs,
    reports it, sends readings, and stops on SIGTERM."""
    with (
        tmpfs(tmp_path / "disk", "2m") as disk,
        Broker(tmp_path / "broker", persistence=True) as broker,
    ):
        filler = fill(disk)
        async with RefCloud(broker.port).running() as cloud:
            daemon = await start(tmp_path, disk / "state", broker)
            try:
                health = await until(
                    daemon, "/healthz", lambda h: len(h["problems"]) >= 2, 5, "in memory"
                )
                assert health["status"] == "degraded"
                assert sum("kept in memory" in p for p in health["problems"]) == 2, health
                await flowing(cloud)
                assert daemon.proc is not None
                daemon.proc.terminate()
                status = await asyncio.to_thread(daemon.proc.wait, 5)
            finally:
                daemon.stop()
                filler.unlink()
    assert status == 0
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()


def post(daemon: Daemon, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST `body`; the status and the JSON reply, whatever the status."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.api_port}{path}",
        data=json.dumps(body).encode(),
        headers={"X-Auth-Token": TOKEN, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


async def test_api_writes_on_a_full_disk_are_refused_with_503_not_500(tmp_path):
    """A registry change the disk cannot take is answered 503 STORAGE_UNAVAILABLE (the
    client may retry), never a 500; the daemon goes on, and the same request succeeds once
    space returns."""
    with tmpfs(tmp_path / "disk", "8m") as disk, Broker(tmp_path / "broker") as broker:
        daemon = await start(tmp_path, disk / "state", broker, min_free_bytes=0)
        await asyncio.to_thread(daemon.stop)
        config = yaml.safe_load(daemon.config.read_text())
        config["api"]["tokens"]["tests"]["scope"] = "admin"
        config["products"] = str(ROOT / "tests" / "data" / "products")
        daemon.config.write_text(yaml.safe_dump(config))
        await asyncio.to_thread(daemon.start)
        statuses: dict[int, int] = {}
        try:
            filler = fill(disk)
            try:
                refused = None
                for i in range(400):  # until the WAL has to grow; bounded
                    body = {
                        "node_id": f"n{i}",
                        "product_id": "thermostat",
                        "description": "x" * 2000,
                    }
                    status, reply = await asyncio.to_thread(post, daemon, DEVICES_PATH, body)
                    statuses[status] = statuses.get(status, 0) + 1
                    assert status in {201, 503}, reply
                    if status == 503:
                        refused = (i, reply)
                        break
                assert refused is not None, f"the full disk took every write: {statuses}"
                assert refused[1]["error_code"] == "STORAGE_UNAVAILABLE"
                assert "not stored" in refused[1]["error_msg"]
            finally:
                filler.unlink()
            body = {"node_id": f"n{refused[0]}", "product_id": "thermostat"}
            status, reply = await asyncio.to_thread(post, daemon, DEVICES_PATH, body)
            assert status == 201, reply
            assert daemon.proc is not None
            assert daemon.proc.poll() is None
        finally:
            daemon.stop()
    log = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in log
    print(f"API writes on a full disk: {statuses}")
