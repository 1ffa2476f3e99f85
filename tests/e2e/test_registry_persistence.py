"""The registry survives a SIGKILL of the real daemon process."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gatewayd.api.auth import hash_token
from tests.helpers import free_port, gatewayd, run_gatewayd, wait_for, write_yaml
from tests.store_fixtures import ADMIN, PRODUCTS, WATER

GW = "gatewayd_gw-e2e"


def _config(tmp_path: Path, port: int) -> Path:
    return write_yaml(
        tmp_path / "gw.yaml",
        {
            "gateway": {"node_id": "gw-e2e"},
            "state_dir": str(tmp_path / "state"),
            "products": str(PRODUCTS),
            "api": {
                "port": port,
                "project_id": "site",
                "tokens": {"ops": {"sha256": hash_token(ADMIN), "scope": "admin"}},
            },
            "connections": {
                "bus": {
                    "driver": "memory",
                    "devices": {
                        "conv": {"product_id": WATER, "points": {"t": {}}},
                        "meter": {"product_id": WATER, "parent": "conv", "points": {"t": {}}},
                    },
                }
            },
        },
    )


def _call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v5/iot/site{path}",
        data=data,
        method=method,
        headers={"X-Auth-Token": ADMIN, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return bool(json.load(resp)["ready"])
    except OSError:
        return False


def _start(config: Path, port: int):
    proc = gatewayd("run", "-c", str(config))
    try:
        wait_for(lambda: _ready(port) or proc.poll() is not None, 15, "daemon ready")
    except BaseException:
        proc.kill()
        raise
    assert proc.poll() is None, proc.communicate()
    return proc


def test_registry_survives_sigkill(tmp_path):
    port = free_port()
    config = _config(tmp_path, port)
    proc = _start(config, port)
    try:
        status, listed = _call(port, "GET", "/devices?limit=50")
        assert status == 200
        before = {d["device_id"] for d in listed["devices"]}
        assert before == {GW, f"{WATER}_conv", f"{WATER}_meter"}
        status, created = _call(
            port,
            "POST",
            "/devices",
            {"node_id": "api-1", "product_id": WATER, "gateway_id": f"{WATER}_conv"},
        )
        assert status == 201, created
        status, shadow = _call(
            port,
            "PUT",
            f"/devices/{created['device_id']}/shadow",
            {"shadow": [{"service_id": "WaterMeter", "desired": {"temperature": 42}}]},
        )
        assert status == 200, shadow
        proc.send_signal(signal.SIGKILL)  # right after the last acknowledged write
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

    proc = _start(config, port)
    try:
        status, listed = _call(port, "GET", "/devices?limit=50")
        ids = [d["device_id"] for d in listed["devices"]]
        assert sorted(ids) == sorted([*before, created["device_id"]])  # nothing twice
        status, device = _call(port, "GET", f"/devices/{created['device_id']}")
        assert (status, device["gateway_id"]) == (200, f"{WATER}_conv")
        status, shadow = _call(port, "GET", f"/devices/{created['device_id']}/shadow")
        water = shadow["shadow"][0]
        assert (water["version"], water["desired"]["properties"]["temperature"]) == (1, 42)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_bad_product_file_exits_78_naming_file_and_field(tmp_path):
    products = tmp_path / "products"
    bad = write_yaml(
        products / "meter.yaml",
        {"product_id": "m", "name": "M", "services": [{"service_id": "S", "properties": [{}]}]},
    )
    config = write_yaml(
        tmp_path / "gw.yaml",
        {
            "gateway": {"node_id": "gw"},
            "state_dir": str(tmp_path / "state"),
            "products": str(products),
            "api": {"port": free_port()},
        },
    )
    result = run_gatewayd("run", "-c", str(config))
    assert result.returncode == 78, result.stderr
    assert f"{bad}: services.0.properties.0.name: Field required" in result.stderr
