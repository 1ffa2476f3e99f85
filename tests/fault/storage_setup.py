"""The storage fault tests' peers: a small tmpfs, a disk filled to the last byte, the daemon
as an unprivileged user, and the daemon's outbox on a given state directory."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gatewayd.api.auth import hash_token
from tests.fault.daemon_setup import DEVICES, TOKEN, Daemon
from tests.helpers import ROOT, daemon_env, write_yaml

__all__ = ["UserDaemon", "as_user", "fill", "storage_config", "tmpfs", "wait_for"]


def storage_config(
    path: Path,
    state_dir: Path,
    api_port: int,
    broker_port: int | None,
    *,
    producing: bool = True,
    interval_s: float = 0.01,
    outbox: dict[str, Any] | None = None,
) -> Path:
    """A daemon config: 10 memory devices counting 0, 1, 2, ... (see check_no_loss)."""
    cloud: dict[str, Any] = {}
    if broker_port is not None:
        cloud = {
            "host": "127.0.0.1",
            "port": broker_port,
            "rate_limit_msg_s": 100000,
            "keepalive_s": 5,
            "connect_timeout_s": 2,
        }
    return write_yaml(
        path,
        {
            "gateway": {"node_id": "gw-fault"},
            "state_dir": str(state_dir),
            "api": {"port": api_port, "tokens": {"tests": {"sha256": hash_token(TOKEN)}}},
            "cloud": cloud,
            "outbox": outbox or {},
            "connections": {
                "sim": {
                    "driver": "memory",
                    "enabled": producing,
                    "devices": {
                        d: {"interval_s": interval_s, "points": {"seq": {"initial": 0, "step": 1}}}
                        for d in DEVICES
                    },
                }
            },
        },
    )


class UserDaemon(Daemon):
    """The daemon process started behind a command prefix (another user, e.g.)."""

    def __init__(self, config: Path, api_port: int, log: Path, prefix: list[str]) -> None:
        super().__init__(config, api_port, log)
        self.prefix = prefix

    def command(self) -> list[str]:
        return [*self.prefix, *super().command()]

    def env(self) -> dict[str, str]:
        return daemon_env(PYTHONDONTWRITEBYTECODE="1")


def as_user(name: str = "nobody") -> tuple[list[str], str]:
    """A command prefix that runs the daemon as `name`, or ([], why it cannot run).

    Tests run as root, and root passes every permission check. The interpreter may live
    where `name` cannot read (pyenv under /root): then the process keeps one capability,
    reading and searching any directory (CAP_DAC_READ_SEARCH), which is enough to import
    the code and never lets it write a file it does not own. `access()` ignores it (it
    checks the real user), and so does every write.
    """
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        return [], f"no user {name!r} on this machine"
    base = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    probe = [sys.executable, "-c", "import gatewayd.cli"]
    env = daemon_env(PYTHONDONTWRITEBYTECODE="1")
    for prefix in ([*base, "--"], [*base, *caps, "--"]):
        try:
            done = subprocess.run(
                [*prefix, *probe], env=env, cwd=ROOT, capture_output=True, timeout=30, check=False
            )
        except FileNotFoundError:
            return [], "setpriv (util-linux) is not installed"
        if done.returncode == 0:
            return prefix, ""
    why = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
    return [], f"{name} cannot run {sys.executable} from {ROOT}: {why}"


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (root only), unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of `folder` until at most `leave` bytes are free; returns the file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        chunk = b"\0" * 65536
        while True:
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            if free <= leave:
                break
            try:
                os.write(fd, chunk[: max(4096, min(len(chunk), free - leave))])
            except OSError:
                if leave:
                    raise
                break
        if not leave:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 512)
    finally:
        os.close(fd)
    return filler


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    """Poll `check()` every 50 ms until it returns something true; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            last = check()
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")
