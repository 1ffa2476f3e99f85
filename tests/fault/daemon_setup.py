"""Running the real daemon against a real broker for fault tests."""

from __future__ import annotations

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

    def start(self) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [*gatewayd_cmd(), "run", "-c", str(self.config)],
                env=daemon_env(),
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
