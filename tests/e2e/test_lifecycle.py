"""The daemon as a black box: a real process, a real notify socket, real signals."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import daemon_env, free_port, gatewayd, run_gatewayd, write_yaml


def _config(tmp_path: Path, port: int) -> Path:
    return write_yaml(
        tmp_path / "gw.yaml",
        {
            "gateway": {"node_id": "gw-e2e"},
            "state_dir": str(tmp_path / "state"),
            "api": {"port": port},
            "connections": {
                "sim": {
                    "driver": "memory",
                    "devices": {
                        "d1": {"interval_s": 0.1, "points": {"t": {"initial": 1.0, "step": 1}}}
                    },
                }
            },
        },
    )


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def expect(self, text: str, timeout_s: float = 10.0) -> None:
        self.expect_count(text, 1, timeout_s)

    def expect_count(self, text: str, count: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(text in m.split("\n") for m in self.messages) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"fewer than {count} {text!r}: {self.messages}")
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_ready_watchdog_stopping_and_clean_exit(tmp_path, notify):
    port = free_port()
    env = daemon_env(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="200000")
    proc = gatewayd("run", "-c", str(_config(tmp_path, port)), env=env)
    try:
        notify.expect("READY=1")
        # READY means the API listens: it must answer at once.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            body = json.load(resp)
        assert body["live"] is True
        assert body["components"]["api"]["state"] == "up"
        assert body["components"]["connection[sim]"]["state"] == "up"
        notify.expect_count("WATCHDOG=1", 3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        notify.expect("STOPPING=1")
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - sent < 5
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_sigint_also_stops_cleanly(tmp_path, notify):
    env = daemon_env(NOTIFY_SOCKET=str(notify.path))
    proc = gatewayd("run", "-c", str(_config(tmp_path, free_port())), env=env)
    try:
        notify.expect("READY=1")
        proc.send_signal(signal.SIGHUP)  # acknowledged, does not stop
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
        _, err = proc.communicate()
        assert "SIGHUP" in err
    finally:
        if proc.poll() is None:
            proc.kill()


BAD = {
    "gateway": {"product_id": "p"},  # missing required node_id
    "api": {"port": "http"},  # wrong type
    "cloud": {"keepalive": 30},  # unknown key
}


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_exits_78_listing_every_error(tmp_path, command):
    path = write_yaml(tmp_path / "gw.yaml", BAD)
    result = run_gatewayd(command, "-c", str(path))
    assert result.returncode == 78, result.stderr
    assert f"{path}: gateway.node_id: Field required" in result.stderr
    assert f"{path}: api.port: Input should be a valid integer" in result.stderr
    assert f"{path}: cloud.keepalive: Extra inputs are not permitted" in result.stderr
    assert "ready" not in result.stderr


def test_check_config_accepts_good_config(tmp_path):
    result = run_gatewayd("check-config", "-c", str(_config(tmp_path, 8080)))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_environment_overrides_port_of_running_daemon(tmp_path, notify):
    yaml_port, env_port = free_port(), free_port()
    env = daemon_env(NOTIFY_SOCKET=str(notify.path), GATEWAYD_API__PORT=str(env_port))
    proc = gatewayd("run", "-c", str(_config(tmp_path, yaml_port)), env=env)
    try:
        notify.expect("READY=1")
        with urllib.request.urlopen(f"http://127.0.0.1:{env_port}/healthz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        proc.communicate()


def test_version_and_schema():
    result = run_gatewayd("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("gatewayd ")
    schema = json.loads(run_gatewayd("print-schema").stdout)
    assert set(schema["properties"]) >= {"gateway", "cloud", "outbox", "api", "connections"}


def test_check_config_also_validates_product_files(tmp_path):
    products = tmp_path / "products"
    products.mkdir()
    (products / "bad.yaml").write_text(
        "product_id: p\nservices: [{service_id: S, properties: [{name: x, type: float}]}]\n"
    )
    path = write_yaml(tmp_path / "gw.yaml", {"gateway": {"node_id": "g"}, "products": "products"})
    result = run_gatewayd("check-config", "-c", str(path))
    assert result.returncode == 78, result.stderr
    assert f"{products / 'bad.yaml'}: services.0.properties.0.type" in result.stderr
