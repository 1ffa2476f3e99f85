"""Per-record accounting for the fault tests: drain what the daemon kept, then count.

Every memory device's `seq` point counts 0, 1, 2, ... in each run of the daemon, so the cloud
can tell a lost record (a gap, found by `check_no_loss`) from a late one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tests.fault.daemon_setup import Daemon, check_no_loss, daemon_config, free_port
from tests.refcloud import RefCloud


@dataclass(frozen=True)
class Counts:
    """sent: records the devices produced up to the last one delivered in each run (the
    sequences are complete, so this is also what was stored); delivered: distinct records
    at the cloud; lost: sent - delivered; duplicated: arrivals beyond the first."""

    sent: int
    delivered: int
    lost: int
    duplicated: int
    runs: int

    def __str__(self) -> str:
        return (
            f"sent {self.sent}, delivered {self.delivered}, lost {self.lost}, "
            f"duplicated {self.duplicated} ({self.runs} run-device lanes)"
        )


def counts(cloud: RefCloud, devices: Collection[str] | None = None) -> Counts:
    """Count what reached the cloud (of `devices`, default all); fails on a gap or a
    changed duplicate."""
    telemetry = [u for u in cloud.telemetry() if devices is None or u.device in devices]
    highest = check_no_loss(telemetry)
    sent = sum(h + 1 for h in highest.values())
    delivered = len({u.body["record_id"] for u in telemetry})
    return Counts(sent, delivered, sent - delivered, len(telemetry) - delivered, len(highest))


def config(tmp_path: Path, broker_port: int, api_port: int, **changes: Any) -> Path:
    """`daemon_config` with changes: `cloud`, `outbox`, `api` merged by key, others set;
    `interval_s` sets every device's poll interval (10 devices: 100 / interval_s records/s);
    `device_prefix` renames the devices d0..d9 (to run two daemons against one cloud)."""
    name = changes.pop("name", "gw")
    prefix = changes.pop("device_prefix", None)
    producing = changes.pop("producing", True)
    interval_s = changes.pop("interval_s", None)
    path = daemon_config(tmp_path, broker_port, api_port, producing=producing, name=name)
    data = yaml.safe_load(path.read_text())
    if prefix is not None:
        for connection in data["connections"].values():
            devices = connection["devices"]
            connection["devices"] = {f"{prefix}{k[1:]}": v for k, v in devices.items()}
    if interval_s is not None:
        for connection in data["connections"].values():
            for device in connection["devices"].values():
                device["interval_s"] = interval_s
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def api(daemon: Daemon, path: str) -> Any:
    return await asyncio.to_thread(daemon.get, path)


async def wait_api(
    daemon: Daemon, path: str, check: Callable[[Any], bool], timeout_s: float
) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            body = await api(daemon, path)
            if check(body):
                return body
            await asyncio.sleep(0.1)


async def first_publish_after(
    cloud: RefCloud, since: float, timeout_s: float, *, start: float | None = None
) -> float:
    """Seconds from `start` (monotonic; default `since`) to the first telemetry arriving
    after `since`."""
    await cloud.wait(lambda: any(u.at > since for u in cloud.telemetry()[-2000:]), timeout_s)
    first = min(u.at for u in cloud.telemetry()[-5000:] if u.at > since)
    return first - (since if start is None else start)


def read_at(uplink: Any) -> float:
    stamp = uplink.body["timestamp"].replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


async def fresh(cloud: RefCloud, wall_since: float, timeout_s: float) -> None:
    """Wait for telemetry read after `wall_since` (wall clock): the link carries new data."""
    try:
        await cloud.wait(
            lambda: any(read_at(u) > wall_since for u in cloud.telemetry()[-200:]), timeout_s
        )
    except TimeoutError:
        last = cloud.telemetry()[-1]
        msg = (
            f"no reading taken after {wall_since:.3f} arrived in {timeout_s} s; the last "
            f"arrival was read at {read_at(last):.3f}, {time.monotonic() - last.at:.1f} s ago"
        )
        raise AssertionError(msg) from None


async def drain(
    tmp_path: Path,
    broker_port: int,
    refcloud: RefCloud,
    *,
    state: str = "state",
    devices: Collection[str] | None = None,
    **changes: Any,
) -> Counts:
    """Run the daemon without producing on the same state dir until its outbox is empty,
    then prove the cloud has everything acknowledged (a marker behind it) and count."""
    port = free_port()
    path = config(
        tmp_path,
        broker_port,
        port,
        producing=False,
        name=f"drain-{state}",
        state_dir=str(tmp_path / state),
        **changes,
    )
    daemon = Daemon(path, port, tmp_path / f"drain-{state}.log")
    await asyncio.to_thread(daemon.start)
    try:
        stats = await wait_api(daemon, "/v1/outbox/stats", lambda s: s["records"] == 0, 60)
    finally:
        await asyncio.to_thread(daemon.stop)
    assert stats["drops"] == {}, stats["drops"]
    assert stats["dead_letters"] == 0
    # The broker delivers to the cloud's session in order: a marker published after the last
    # PUBACK arrives after every record the daemon was acknowledged for.
    marker = f"marker-{time.monotonic_ns()}"
    await refcloud.push(marker, "cloud_settings/update", {"property": "end", "value": 1}, 60)
    await refcloud.wait(lambda: refcloud.of("cloud_settings/update", marker), timeout_s=30)
    return counts(refcloud, devices)
