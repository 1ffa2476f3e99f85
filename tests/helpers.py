"""Small helpers shared by tests: free ports, waiting on conditions, running the daemon."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll a condition until true; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(0.02)


async def async_wait_for(
    predicate: Callable[[], object], timeout_s: float = 10.0, what: str = ""
) -> None:
    """Like wait_for, without blocking the loop."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)
    del what


async def eventually(
    probe: Callable[[], Awaitable[object]], want: object, timeout_s: float = 10.0
) -> None:
    """Await `probe()` until it returns `want`, bounded by a timeout."""
    got = None
    try:
        async with asyncio.timeout(timeout_s):
            while (got := await probe()) != want:
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"still {got!r}, wanted {want!r}") from None


def write_yaml(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def daemon_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAYD_")}
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        env.pop(key, None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def gatewayd(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[str]:
    """Start `python -m gatewayd ARGS` as a real process (output piped unless told)."""
    options: dict[str, object] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "gatewayd", *args],
        env=env or daemon_env(),
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        **options,
    )


def run_gatewayd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args],
        env=env or daemon_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
