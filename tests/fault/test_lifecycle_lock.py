"""Issue 14, item 8: one daemon per state directory.

A second `gatewayd run` on the state directory of a running daemon exits 75 at once, naming
the lock file and the holder's pid, having opened no store and made no MQTT connection; the
lock goes with the holder's process, so a restart after a SIGKILL starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from pathlib import Path

import pytest

from tests.fault.daemon_setup import Spawned, free_port
from tests.fault.test_lifecycle_startup import LINGERING, STOP_S, lifecycle_config
from tests.mqtt_broker import Broker

pytestmark = [pytest.mark.timeout(90)]

CONNECTED = "New client connected"
TAKEOVER = "already connected"


def snapshot(state: Path) -> dict[str, tuple[int, int, str]]:
    """Every file of the state directory: size, modification time, content hash."""
    return {
        path.name: (
            path.stat().st_size,
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in sorted(state.iterdir())
        if path.is_file()
    }


async def broker_saw(broker: Broker, text: str, count: int, timeout_s: float = 15) -> None:
    async with asyncio.timeout(timeout_s):
        while broker.log.read_text().count(text) < count:
            await asyncio.sleep(0.05)


async def test_a_second_daemon_exits_75_touching_nothing_and_a_kill_frees_the_lock(tmp_path):
    with Broker(tmp_path / "broker") as broker:
        # keepalive_s: the holder is frozen (SIGSTOP) while the second one tries, and must
        # not be dropped by the broker meanwhile.
        config = lifecycle_config(tmp_path, broker.port, free_port(), keepalive_s=60)
        first = await Spawned.start(config)
        try:
            await first.wait_line("ready")
            await broker_saw(broker, CONNECTED, 1)
            state = tmp_path / "state"
            lock = state / "gatewayd.lock"
            assert lock.read_text().strip() == str(first.proc.pid)

            # Frozen, it still holds the lock, and nothing but the second daemon could touch
            # a file of the directory.
            first.proc.send_signal(signal.SIGSTOP)
            before = snapshot(state)
            other = lifecycle_config(tmp_path, broker.port, free_port(), keepalive_s=60)
            second = await Spawned.start(other)
            status, took = await second.exit(timeout_s=30)
            after = snapshot(state)
            first.proc.send_signal(signal.SIGCONT)

            print(f"second daemon: exit {status} {took:.2f} s after its start")
            assert status == 75, second.log
            assert f"{lock} is locked by pid {first.proc.pid}" in second.log
            # It said it started, and why it stopped: nothing happened in between.
            assert len(second.lines) == 2, second.log
            assert "starting" in second.lines[0]
            assert "Traceback" not in second.log
            assert after == before
            log = broker.log.read_text()
            assert log.count(CONNECTED) == 1, log
            assert TAKEOVER not in log

            # The first one goes on: its link never dropped, and it stops on SIGTERM.
            await first.wait_line("ready")
            status, took = await first.stop(signal.SIGTERM, STOP_S)
            assert status == 0, first.log[-2000:]
            assert broker.log.read_text().count(CONNECTED) == 1
        finally:
            await first.kill()

        # A holder killed outright leaves its pid in the file, but not the lock.
        third = await Spawned.start(config)
        try:
            await third.wait_line("ready")
            await broker_saw(broker, CONNECTED, 2)
            third.proc.send_signal(signal.SIGKILL)
            await third.exit(timeout_s=10)
        finally:
            await third.kill()
        assert lock.read_text().strip() == str(third.proc.pid)
        restart = await Spawned.start(config)
        try:
            await restart.wait_line("ready")
            await broker_saw(broker, CONNECTED, 3)
            assert lock.read_text().strip() == str(restart.proc.pid)
            status, took = await restart.stop(signal.SIGTERM, STOP_S)
        finally:
            await restart.kill()
        print(f"restart after SIGKILL: ready, exit {status} {took:.2f} s after SIGTERM")
        assert status == 0, restart.log[-2000:]
        assert LINGERING not in first.log + restart.log
