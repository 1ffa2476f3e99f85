"""Issue 14, item 1: a state file the service user may not open is not damage.

As written in the issue: the state directory belongs to the service user, and a file in it
belongs to root with mode 0600 (what a `gatewayd run` as root once leaves behind). The real
daemon runs as `nobody`. It must exit 77 naming the file, its owner, its mode and its user,
and leave the file exactly as it was (same inode, same bytes, nothing moved aside).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewayd.errors import EX_STATE_ACCESS
from gatewayd.settings import OutboxConfig
from gatewayd.store.cloud_state import cloud_state_schema
from gatewayd.store.outbox import open_outbox
from tests.fault.storage_setup import as_user, storage_config
from tests.helpers import ROOT, daemon_env, free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as root")

PREFIX, WHY_NOT = as_user("nobody") if os.geteuid() == 0 else ([], "not root")


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A folder `nobody` can reach (pytest's own sit under a 0700 folder of root's)."""
    folder = Path(tempfile.mkdtemp(prefix="gatewayd-access-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fingerprint(path: Path) -> tuple[int, str]:
    return path.stat().st_ino, hashlib.sha256(path.read_bytes()).hexdigest()


async def queued_outbox(path: Path, n: int) -> None:
    async with open_outbox(path, OutboxConfig(), schema=cloud_state_schema) as outbox:
        for i in range(n):
            await outbox.append(f"memory_d{i % 10}", "telemetry", b'{"telemetries":{"seq":%d}}' % i)


def run_as_nobody(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PREFIX, sys.executable, "-m", "gatewayd", "run", "-c", str(config)],
        env=daemon_env(PYTHONDONTWRITEBYTECODE="1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.parametrize("held_by_root", ["outbox.db", "state.db", "outbox.db-wal"])
def test_a_root_owned_0600_state_file_stops_the_daemon_with_77_and_is_left_alone(
    tmp_path, held_by_root
):
    if not PREFIX:
        pytest.skip(WHY_NOT)
    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir()
    asyncio.run(queued_outbox(state / "outbox.db", 94))
    if held_by_root == "state.db":
        shutil.copy(state / "outbox.db", state / "state.db")  # any SQLite file will do
    if held_by_root == "outbox.db-wal":
        (state / "outbox.db-wal").write_bytes(b"")  # an empty WAL: SQLite ignores it
    for entry in [state, *state.iterdir()]:
        os.chown(entry, nobody.pw_uid, nobody.pw_gid)
    target = state / held_by_root
    os.chown(target, 0, 0)
    target.chmod(0o600)
    before = fingerprint(target)
    listing = sorted(p.name for p in state.iterdir())
    config = storage_config(tmp_path / "gw.yaml", state, free_port(), None)
    config.chmod(0o644)

    done = run_as_nobody(config)

    assert done.returncode == EX_STATE_ACCESS, done.stderr[-3000:]
    problem = next(line for line in done.stderr.splitlines() if str(target) in line)
    assert "owner root:root" in problem
    assert "mode 0600" in problem
    assert "nobody (uid 65534" in problem
    assert "Traceback" not in done.stderr
    assert fingerprint(target) == before
    assert set(listing) <= {p.name for p in state.iterdir()}  # nothing moved or renamed
    assert not [p for p in state.iterdir() if "damaged" in p.name or "corrupt" in p.name]


def test_the_same_file_given_to_the_service_user_starts_with_every_record(tmp_path):
    """The cure the message names (chown) works, and nothing was lost meanwhile."""
    if not PREFIX:
        pytest.skip(WHY_NOT)
    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir()
    asyncio.run(queued_outbox(state / "outbox.db", 94))
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    (state / "outbox.db").chmod(0o600)  # root's
    config = storage_config(tmp_path / "gw.yaml", state, free_port(), None, producing=False)
    assert run_as_nobody(config).returncode == EX_STATE_ACCESS
    os.chown(state / "outbox.db", nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    config = storage_config(tmp_path / "gw2.yaml", state, port, None, producing=False)
    from tests.fault.storage_setup import UserDaemon  # noqa: PLC0415

    daemon = UserDaemon(config, port, tmp_path / "daemon.log", PREFIX)
    daemon.start()
    try:
        devices = daemon.get("/v1/outbox/stats")["devices"]
        assert sum(v["records"] for d, v in devices.items() if d.startswith("memory_")) == 94
    finally:
        daemon.stop()
