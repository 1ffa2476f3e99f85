"""Issue 14, item 8: one daemon per state directory.

A second `gatewayd run` on the state directory of a running daemon exits 75 at once, naming
the lock file and the holder's pid, having opened no store and made no MQTT connection; the
lock goes with the holder's process, so a restart after a SIGKILL starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault.daemon_setup import Spawned, free_port
from tests.fault.storage_setup import as_user
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


@pytest.fixture
def nobody() -> tuple[list[str], int]:
    if os.geteuid() != 0:
        pytest.skip("needs root to own files as root")
    prefix, why = as_user("nobody")
    if not prefix:
        pytest.skip(why)
    return prefix, pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A folder `nobody` can reach (pytest's own sit under a 0700 folder of root's)."""
    folder = Path(tempfile.mkdtemp(prefix="gatewayd-lock-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_lock_file_root_left_behind_still_locks_for_the_service_user(reachable, nobody):
    """`gatewayd run` as root once leaves a root-owned lock file: the service user cannot write
    its pid into it, but locks it all the same, and a second daemon is still refused."""
    prefix, uid = nobody
    tmp_path = reachable
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, uid, -1)
    lock = state / "gatewayd.lock"
    lock.write_text("1\n")  # root's, 0644
    with Broker(tmp_path / "broker") as broker:
        config = lifecycle_config(tmp_path, broker.port, free_port())
        for path in tmp_path.glob("*.yaml"):
            path.chmod(0o644)
        daemon = await Spawned.start(config, prefix)
        try:
            await daemon.wait_line("ready")
            assert any("belongs to another user" in line for line in daemon.lines)
            other = lifecycle_config(tmp_path, broker.port, free_port())
            second = await Spawned.start(other, prefix)
            status, _ = await second.exit(timeout_s=30)
            assert status == 75, second.log
            stop, _ = await daemon.stop(signal.SIGTERM, STOP_S)
        finally:
            await daemon.kill()
    assert stop == 0, daemon.log[-2000:]
    assert lock.stat().st_uid == 0


async def test_a_state_dir_the_user_cannot_write_exits_77_naming_the_lock_file(reachable, nobody):
    prefix, _ = nobody
    tmp_path = reachable
    state = tmp_path / "state"
    state.mkdir(mode=0o755)  # root's: the service user cannot create the lock file
    config = lifecycle_config(tmp_path, free_port(), free_port())
    config.chmod(0o644)
    daemon = await Spawned.start(config, prefix)
    try:
        status, _ = await daemon.exit(timeout_s=30)
    finally:
        await daemon.kill()
    assert status == 77, daemon.log
    reason = [line for line in daemon.lines if "cannot start" in line]
    assert len(reason) == 1, daemon.log
    assert f"{state / 'gatewayd.lock'}" in reason[0]
    assert "Permission denied" in reason[0]
    assert "Traceback" not in daemon.log
    assert list(state.iterdir()) == []
