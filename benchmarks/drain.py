"""Outbox drain rate to a loopback mosquitto at QoS 1, and peak memory on a large backlog.

    python -m benchmarks drain [--records N] [--devices D]

The backlog is written by a child process first, so the peak RSS reported is the drain's own:
a fresh daemon-like process that opens the outbox and sends everything through the uplink.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from gatewayd.cloud.children import Child, StatusBoard
from gatewayd.cloud.link import Uplink
from gatewayd.health import Health
from gatewayd.settings import CloudConfig, OutboxConfig
from gatewayd.store.cloud_state import CloudState, cloud_state_schema
from gatewayd.store.outbox import open_outbox

PAYLOAD = (
    b'{"status":"online","timestamp":"2026-01-01T00:00:00.000Z",'
    b'"telemetries":{"seq":12345,"t":21.5}}'
)


class NoChildren:
    def __init__(self) -> None:
        self.changed = asyncio.Event()

    def children(self) -> Sequence[Child]:
        return ()

    def device_id(self, connection: str, device: str) -> str | None:
        del connection, device
        return None

    def take_changes(self) -> Mapping[str, Child | None]:
        return {}

    def restore(self, changes: Mapping[str, Child | None]) -> None:
        del changes


async def fill(path: Path, records: int, devices: int) -> None:
    config = OutboxConfig(max_bytes=10**11)
    async with open_outbox(path, config, schema=cloud_state_schema) as outbox:
        per = records // devices

        async def produce(device: str) -> None:
            for _ in range(per):
                await outbox.append(device, "telemetry", PAYLOAD)

        await asyncio.gather(*(produce(f"dev{i}") for i in range(devices)))


async def drain(path: Path, port: int) -> tuple[int, float]:
    config = OutboxConfig(max_bytes=10**11)
    cloud = CloudConfig(host="127.0.0.1", port=port, rate_limit_msg_s=10**6, keepalive_s=60)
    async with open_outbox(path, config, schema=cloud_state_schema) as outbox:
        total = outbox.depth
        health = Health()
        uplink = Uplink(
            cloud, "bench-gw", outbox, CloudState(outbox.worker), NoChildren(), StatusBoard(),
            health.component("uplink"),
        )  # fmt: skip
        task = asyncio.create_task(uplink.run())
        while uplink.connects == 0:
            await asyncio.sleep(0.001)
        start = time.perf_counter()
        while outbox.depth > 0:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return total, elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks drain")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--fill-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fill_only:
        asyncio.run(fill(args.fill_only, args.records, args.devices))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = work / "outbox.db"
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "benchmarks", "drain", "--records", str(args.records),
             "--devices", str(args.devices), "--fill-only", str(db)],
            check=True,
        )  # fmt: skip
        print(f"filled {args.records:,} records in {time.perf_counter() - start:.1f} s")
        port = free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "set_tcp_nodelay true\nmax_queued_messages 0\nmax_inflight_messages 100\n"
            "log_dest none\n"
        )
        assert shutil.which("mosquitto"), "mosquitto is not installed"
        broker = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            time.sleep(0.3)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            total, elapsed = asyncio.run(drain(db, port))
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        finally:
            broker.terminate()
            broker.wait()
    print(
        f"drained {total:,} records in {elapsed:.1f} s: {total / elapsed:,.0f} messages/s "
        f"(QoS 1, window 100); peak RSS {peak / 1024:.1f} MB "
        f"(before the drain {before / 1024:.1f} MB)"
    )
    return 0
