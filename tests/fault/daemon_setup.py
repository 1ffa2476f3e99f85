"""Running the real daemon against a real broker for fault tests."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from gatewayd.api.auth import hash_token
from tests.helpers import daemon_env, free_port, write_yaml

DEVICES = [f"d{i}" for i in range(10)]


TOKEN = "fault-test-token-0123"


def daemon_config(
    tmp_path: Path, broker_port: int, api_port: int, *, producing: bool = True, name: str = "gw"
) -> Path:
    return write_yaml(
        tmp_path / f"{name}.yaml",
        {
            "gateway": {"node_id": "gw-fault"},
            "state_dir": str(tmp_path / "state"),
            "api": {"port": api_port, "tokens": {"tests": {"sha256": hash_token(TOKEN)}}},
            "cloud": {
                "host": "127.0.0.1",
                "port": broker_port,
                "rate_limit_msg_s": 100000,
                "keepalive_s": 5,
                "connect_timeout_s": 2,
            },
            "connections": {
                "sim": {
                    "driver": "memory",
                    "enabled": producing,
                    "devices": {
                        d: {"interval_s": 0.01, "points": {"seq": {"initial": 0, "step": 1}}}
                        for d in DEVICES
                    },
                }
            },
        },
    )


class Daemon:
    def __init__(self, config: Path, api_port: int, log: Path) -> None:
        self.config = config
        self.api_port = api_port
        self.log = log
        self.proc: subprocess.Popen[str] | None = None

    def command(self) -> list[str]:
        """The daemon's command line; subclasses put a prefix before it (a user, a namespace)."""
        return [*gatewayd_cmd(), "run", "-c", str(self.config)]

    def env(self) -> dict[str, str]:
        return daemon_env()

    def start(self) -> None:
        """Start the process and wait until /healthz answers (its log ends the error if not)."""
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                text=True,
                cwd=Path(__file__).resolve().parents[2],
            )
        deadline = time.monotonic() + 15
        while True:
            try:
                self.get("/healthz")
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self.log.read_text()[-3000:]) from None
                time.sleep(0.05)
            else:
                return

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.api_port}{path}"
        request = urllib.request.Request(url, headers={"X-Auth-Token": TOKEN})
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.load(resp)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise


def gatewayd_cmd() -> list[str]:
    return [sys.executable, "-m", "gatewayd"]


def check_no_loss(telemetry: list[Any]) -> dict[tuple[str, str], int]:
    """Every (boot, device) sequence is complete from 0 with no gap, in order; duplicates
    carry the same record id and the same value. Returns the highest value per (boot, device).
    """
    seen: dict[str, Any] = {}
    lanes: dict[tuple[str, str], list[int]] = defaultdict(list)
    for up in telemetry:
        rid = up.body["record_id"]
        value = up.body["telemetries"]["seq"]
        if rid in seen:
            assert seen[rid] == (up.device, value), f"duplicate {rid} differs"
            continue
        seen[rid] = (up.device, value)
        boot = rid.split("-")[0]
        lanes[(boot, up.device)].append(int(value))
    for key, values in lanes.items():
        assert values == list(range(len(values))), (
            f"{key}: not the complete sequence in order: first gap near "
            f"{next((i for i, v in enumerate(values) if v != i), None)}"
        )
    return {k: len(v) - 1 for k, v in lanes.items()}


__all__ = ["DEVICES", "Daemon", "check_no_loss", "daemon_config", "free_port"]


class Spawned:
    """`gatewayd run` as an asyncio subprocess whose log lines are read as they come.

    For the lifecycle tests: wait for a line, send a signal at that moment, and time the exit.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.times: list[float] = []  # time.monotonic() each line arrived at
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="spawned.stderr")
        self.exited_at = 0.0

    @classmethod
    async def start(cls, config: Path, prefix: list[str] | None = None) -> Spawned:
        """Start it; `prefix` runs it behind a command (as another user, e.g.)."""
        proc = await asyncio.create_subprocess_exec(
            *(prefix or []),
            *gatewayd_cmd(),
            "run",
            "-c",
            str(config),
            env=daemon_env(PYTHONDONTWRITEBYTECODE="1") if prefix else daemon_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self.times.append(time.monotonic())
            self._new.set()
        self._new.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    async def wait_line(self, text: str, timeout_s: float = 15.0) -> str:
        """The first log line containing `text`; fails if the daemon exits or time runs out."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    for line in self.lines:
                        if text in line:
                            return line
                    if self._reader.done():
                        raise AssertionError(f"exited without {text!r}:\n{self.log[-3000:]}")
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:
            raise AssertionError(f"no {text!r} in {timeout_s} s:\n{self.log[-3000:]}") from None

    async def exit(self, timeout_s: float) -> tuple[int, float]:
        """(exit status, seconds waited); kills it and fails after `timeout_s`."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                status = await self.proc.wait()
                self.exited_at = time.monotonic()
                await self._reader
        except TimeoutError:
            await self.kill()
            tail = self.log[-3000:]
            raise AssertionError(f"still running after {timeout_s} s:\n{tail}") from None
        return status, self.exited_at - started

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 5.0) -> tuple[int, float]:
        """Send `sig`; (exit status, seconds from the signal to the exit)."""
        self.proc.send_signal(sig)
        return await self.exit(timeout_s)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self._reader
