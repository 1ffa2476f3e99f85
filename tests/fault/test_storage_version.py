"""A state file written by a newer gatewayd (a downgraded package) is not a configuration error.

The real daemon finds `outbox.db` or `state.db` with a schema version above what it knows. It
must exit 65 (which systemd retries, unlike 78) at once, in one line naming the file and
without a traceback, and leave the file exactly as it was, so that upgrading again finds every
record in it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.errors import EX_STATE_NEWER
from tests.fault.storage_setup import storage_config
from tests.helpers import ROOT, daemon_env, free_port


@pytest.mark.parametrize("name", ["outbox.db", "state.db"])
def test_a_state_file_from_a_newer_gatewayd_exits_65_and_is_left_alone(tmp_path, name):
    state = tmp_path / "state"
    config = storage_config(tmp_path / "gw.yaml", state, free_port(), None, producing=False)
    run = [sys.executable, "-m", "gatewayd", "run", "-c", str(config)]
    first = subprocess.Popen(run, env=daemon_env(), cwd=ROOT, stdout=subprocess.DEVNULL)
    # A first run creates both files; then the file is marked as written by a newer version.
    try:
        _wait_for_file(state / name)
    finally:
        first.terminate()
        assert first.wait(timeout=10) == 0
    with sqlite3.connect(state / name) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = _digest(state)

    done = subprocess.run(
        run, env=daemon_env(), cwd=ROOT, capture_output=True, text=True, timeout=20, check=False
    )

    assert done.returncode == EX_STATE_NEWER, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    assert name in output
    assert "newer" in output
    assert _digest(state) == before, "the file and its neighbours are unchanged"


def _wait_for_file(path: Path) -> None:
    import time  # noqa: PLC0415

    deadline = time.monotonic() + 15
    while not path.exists() or path.stat().st_size == 0:
        assert time.monotonic() < deadline, f"{path} was not created"
        time.sleep(0.05)


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix == ".db"
    }
