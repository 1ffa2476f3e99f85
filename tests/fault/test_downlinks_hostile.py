"""Hostile downlinks to the real daemon over a real broker: it keeps running and answering.

Each payload below killed the daemon, or could have, before downlinks were decoded under
limits and a failure became that one downlink's. After each group the daemon must still run,
answer /healthz, and answer a normal command published after it; /metrics must count every
hostile downlink that reached it as `invalid` and none as `failed`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from gatewayd.cloud.dialects import native
from tests.fault.daemon_setup import TOKEN, Daemon, daemon_config, free_port
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud

GW = "gatewayd_gw-fault"
CHILD = "memory_d0"
EVERY_TOPIC = [(GW, k) for k in (*native.DEVICE_DOWNLINKS, *native.GATEWAY_DOWNLINKS)] + [
    (CHILD, k) for k in native.DEVICE_DOWNLINKS
]
NESTED = b"[" * 100_000 + b"]" * 100_000  # the payload
# Over the CONNECT's Maximum Packet Size: the broker does not send them to the gateway.
OVER_PACKET_MAX = "1.2 MB messages, over the maximum packet size the gateway takes"


@dataclass
class Running:
    daemon: Daemon
    cloud: RefCloud
    markers: int = 0

    async def still_answers(self) -> None:
        """The process runs, /healthz answers, and a ping published now is answered `done`."""
        assert self.daemon.proc is not None
        assert self.daemon.proc.poll() is None, self.daemon.log.read_text()[-3000:]
        health = await asyncio.to_thread(self.daemon.get, "/healthz")
        assert health["status"] in {"ok", "degraded"}
        self.markers += 1
        marker = f"marker-{self.markers}"
        await self.cloud.push(CHILD, "commands", {"id": marker, "name": "ping"})
        await self.cloud.wait(lambda: answered(self.cloud, marker), timeout_s=20)

    async def metrics(self) -> dict[str, int]:
        text = await asyncio.to_thread(get_text, self.daemon, "/metrics")
        return {
            m[1]: int(m[2])
            for m in re.finditer(
                r'^gatewayd_downlinks_total\{result="(\w+)"\} (\d+)$', text, re.MULTILINE
            )
        }


def answered(cloud: RefCloud, command_id: str) -> bool:
    return any(
        u.body == {"id": command_id, "status": "done", "message": "pong"}
        for u in cloud.of("commands/update")
    )


def get_text(daemon: Daemon, path: str) -> str:
    url = f"http://127.0.0.1:{daemon.api_port}{path}"
    request = urllib.request.Request(url, headers={"X-Auth-Token": TOKEN})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return str(resp.read().decode())


@asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    with Broker(tmp_path / "broker") as broker:
        port = free_port()
        config = daemon_config(tmp_path, broker.port, port, producing=False)
        daemon = Daemon(config, port, tmp_path / "daemon.log")
        try:
            async with RefCloud(broker.port).running() as cloud:
                await asyncio.to_thread(daemon.start)
                await cloud.wait(lambda: len(cloud.of("get", GW)) > 0)
                yield Running(daemon, cloud)
        finally:
            daemon.stop()
    log = daemon.log.read_text()
    assert "Traceback" not in log
    assert "never retrieved" not in log


def hostile_groups() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """(what, [(device, kind, payload)]) of every group of downlinks that reach the daemon."""
    yield "the issue's nesting on every topic", [(d, k, NESTED) for d, k in EVERY_TOPIC]
    yield "objects nested 50,000 deep", [(GW, "config", b'{"a":' * 50_000)]
    over = json.dumps({"id": "over", "name": "ping", "parameters": "x" * 300_000}).encode()
    yield "a 300 KB command", [(CHILD, "commands", over), (GW, "config", b" " * 300_000)]
    big = json.dumps({"id": "big", "name": "ping", "parameters": "x" * 1_200_000}).encode()
    yield OVER_PACKET_MAX, [(CHILD, "commands", big), (GW, "config", b" " * 1_100_000)]
    yield (
        "invalid UTF-8",
        [
            (CHILD, "commands", b'{"id": "u1", "name": "\xff\xfe"}'),
            (GW, "license", b"\xed\xa0\x80"),
            (GW, "children/notify", b'{"version": 1, "event": "add", "devices": [\xc3]}'),
        ],
    )
    digits = b"9" * 5000
    yield (
        "a 5,000-digit integer",
        [
            (CHILD, "commands", b'{"id": "n1", "name": "ping", "parameters": ' + digits + b"}"),
            (GW, "config", b'{"version": ' + digits + b"}"),
            (GW, "children/notify", b'{"version": -' + digits + b', "event": "add"}'),
        ],
    )
    yield (
        "numbers JSON does not have",
        [
            (CHILD, "config", b'{"version": 1, "WaterMeter": {"temperature": NaN}}'),
            (CHILD, "commands", b'{"id": "f1", "name": "ping", "parameters": 1e400}'),
        ],
    )
    yield "a lone surrogate", [(CHILD, "commands", b'{"id": "s1", "name": "\\udc00"}')]
    yield (
        "valid JSON of the wrong shape",
        [
            (CHILD, "commands", b"[]"),
            (CHILD, "commands", b'"ping"'),
            (CHILD, "commands", b'{"id": 7, "name": ["ping"]}'),
            (GW, "config", b'{"version": {"v": 1}}'),
            (GW, "license", b"null"),
            (GW, "firmware", b"{}"),
            (GW, "space_info", b'{"location": "here", "maintenance": "yes"}'),
            (GW, "children/add/response", b'{"request_id": "r", "successful_devices": [{}]}'),
            (GW, "children/delete/response", b'{"request_id": "", "successful_devices": 3}'),
            (GW, "children/notify", b'{"version": 1, "event": "move"}'),
        ],
    )
    yield "empty payloads", [(d, k, b"") for d, k in EVERY_TOPIC]


async def test_hostile_downlinks_never_end_the_daemon(tmp_path):
    async with running(tmp_path) as gw:
        await gw.still_answers()
        sent = 0
        for what, downlinks in hostile_groups():
            for device, kind, payload in downlinks:
                await gw.cloud.push(device, kind, payload, timeout_s=10)
            if what != OVER_PACKET_MAX:  # the broker drops these: they never reach it
                sent += len(downlinks)
            await gw.still_answers()
            counts = await gw.metrics()
            assert (counts["invalid"], counts["failed"]) == (sent, 0), what
        # Topics it does not subscribe to (the reference cloud reads these: not nested), and a
        # command for a device it does not have.
        await gw.cloud.push(GW, "telemetry", b"\xff\xfe")
        await gw.cloud.push(GW, "commands/extra", b"{")
        await gw.cloud.push("nobody", "commands", {"id": "x", "name": "ping"})
        await gw.cloud.push(GW, "commands/update", b"\xff")
        await gw.still_answers()
        counts = await gw.metrics()
        assert (counts["invalid"], counts["failed"]) == (sent, 0)
        assert counts["ok"] >= gw.markers
        log = gw.daemon.log.read_text()
    lines = [line for line in log.splitlines() if "dropped a malformed downlink" in line]
    assert 0 < len(lines) <= 20  # the log budget: 20 lines a minute
    assert all(len(line) < 700 for line in lines)
    assert f"dropped a malformed downlink on 'v1/device/{GW}/commands' (200000 bytes)" in log
    assert "nests 100000 deep, more than 32" in log


FLOOD = 3000


@pytest.mark.timeout(120)
async def test_a_flood_of_commands_is_answered_and_the_daemon_stays(tmp_path):
    async with running(tmp_path) as gw:
        await gw.still_answers()
        started = time.monotonic()
        for first in range(0, FLOOD, 100):  # 100 publishes in flight at a time
            await asyncio.gather(
                *(
                    gw.cloud.push(CHILD, "commands", {"id": f"flood-{i}", "name": "ping"}, 30)
                    for i in range(first, first + 100)
                )
            )
        published_s = time.monotonic() - started
        await gw.still_answers()  # the marker comes after the whole flood
        answered_s = time.monotonic() - started
        done = {
            u.body["id"]
            for u in gw.cloud.of("commands/update", CHILD)
            if u.body["status"] == "done" and u.body["id"].startswith("flood-")
        }
        counts = await gw.metrics()
    print(  # the figures for docs/reliability.md
        f"flood: {FLOOD} sent in {published_s:.1f} s, {len(done)} answered, "
        f"marker answered {answered_s:.1f} s after the first"
    )
    assert len(done) == FLOOD
    assert counts["failed"] == 0
    assert counts["ok"] >= FLOOD + gw.markers
