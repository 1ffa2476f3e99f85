"""The cloud loop end to end: the real daemon, a real mosquitto and the reference cloud.

Refused desired config is answered by name and never stored as applied; a device registered,
renamed or deleted through the local API reaches the cloud like one declared in the YAML; a
device declared in the YAML cannot be deleted through the API.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gatewayd.api.auth import hash_token
from tests.fault.daemon_setup import TOKEN, Daemon
from tests.helpers import ROOT, free_port, write_yaml
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud

GW = "gatewayd_gw-loop"
DEV = "thermostat_t1"  # declared in the YAML
SPARE = "thermostat_r1"  # registered through the API
DEVICES = "/v5/iot/local/devices"


def loop_config(tmp_path: Path, broker_port: int, api_port: int) -> Path:
    products = tmp_path / "products"
    products.mkdir()
    shutil.copy(ROOT / "config/products/gatewayd.yaml", products)
    shutil.copy(ROOT / "tests/data/products/thermostat.yaml", products)
    return write_yaml(
        tmp_path / "gw.yaml",
        {
            "gateway": {"node_id": "gw-loop"},
            "state_dir": str(tmp_path / "state"),
            "products": str(products),
            "api": {
                "port": api_port,
                "tokens": {"tests": {"sha256": hash_token(TOKEN), "scope": "admin"}},
            },
            "cloud": {
                "host": "127.0.0.1",
                "port": broker_port,
                "reconnect_initial_s": 0.05,
                "reconnect_max_s": 0.5,
                "keepalive_s": 5,
                "connect_timeout_s": 2,
            },
            "connections": {
                "sim": {
                    "driver": "memory",
                    "devices": {
                        "t1": {
                            "product_id": "thermostat",
                            "interval_s": 0.2,
                            "points": {
                                "temperature": {"initial": 21.5},
                                "setpoint": {"initial": 20.0, "writable": True},
                                "mode": {"initial": "auto", "writable": True},
                            },
                        }
                    },
                }
            },
        },
    )


def call(daemon: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One API request; the status and the JSON reply (None without one), whatever the status."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.api_port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"X-Auth-Token": TOKEN, "Content-Type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


async def api(daemon: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return await asyncio.to_thread(call, daemon, method, path, body)


async def until_api(daemon: Daemon, path: str, check, timeout_s: float = 10.0) -> Any:
    """GET `path` until `check(body)` holds; the body."""
    body = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                status, body = await api(daemon, "GET", path)
                if status == 200 and check(body):
                    return body
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"GET {path}: still {body!r}") from None


def updates(cloud: RefCloud, device: str) -> list[dict[str, Any]]:
    return [u.body for u in cloud.of("config/update", device)]


def answer(cloud: RefCloud, device: str, check) -> dict[str, Any] | None:
    return next((b for b in updates(cloud, device) if check(b)), None)


def added(cloud: RefCloud) -> list[dict[str, Any]]:
    return [d for u in cloud.of("children/add") for d in u.body["devices"]]


def desired(shadow: dict[str, Any]) -> dict[str, Any]:
    return shadow["shadow"][0]["desired"]["properties"]


async def test_refused_config_is_answered_by_name_and_never_stored_as_applied(tmp_path):
    with Broker(tmp_path / "broker") as broker:
        port = free_port()
        daemon = Daemon(loop_config(tmp_path, broker.port, port), port, tmp_path / "daemon.log")
        try:
            async with RefCloud(broker.port).running() as cloud:
                await asyncio.to_thread(daemon.start)
                await cloud.wait(lambda: cloud.of("get", DEV) and cloud.of("get", GW))
                # One valid field, one out of range, one read-only, one unknown.
                await cloud.push(
                    DEV,
                    "config",
                    {"version": 7, "mode": "eco", "setpoint": 99, "temperature": 30, "fan": 1},
                )
                await cloud.wait(lambda: answer(cloud, DEV, lambda b: "refused" in b))
                refusal = answer(cloud, DEV, lambda b: "refused" in b)
                assert refusal is not None
                assert refusal["version"] == 7
                assert set(refusal["refused"]) == {"setpoint", "temperature", "fan"}
                assert "is above the maximum 30" in refusal["refused"]["setpoint"]
                assert refusal["refused"]["temperature"] == "the property is read-only"
                assert "no property 'fan'" in refusal["refused"]["fan"]
                # The valid field is written, read back and confirmed under the version.
                await cloud.wait(lambda: answer(cloud, DEV, lambda b: b.get("mode") == "eco"))
                assert answer(cloud, DEV, lambda b: b.get("mode") == "eco")["version"] == 7

                # Every field refused (the wrong type): answered, and not applied.
                await cloud.push(DEV, "config", {"version": 8, "setpoint": "warm"})
                await cloud.wait(lambda: answer(cloud, DEV, lambda b: b["version"] == 8))
                assert answer(cloud, DEV, lambda b: b["version"] == 8)["refused"] == {
                    "setpoint": "expected a number, got 'warm'"
                }
                stored = await until_api(daemon, f"/v1/devices/{DEV}/cloud/config", bool)
                assert (stored["version"], stored["fields"]) == ("7", {"mode": "eco"})
                shadow = await until_api(daemon, f"{DEVICES}/{DEV}/shadow", bool)
                assert desired(shadow).get("setpoint") != "warm"
                assert desired(shadow)["mode"] == "eco"

                # A later local change is confirmed under the version applied (7), not 8.
                status, _ = await api(
                    daemon,
                    "PUT",
                    f"{DEVICES}/{DEV}/shadow",
                    {"shadow": [{"service_id": "Climate", "desired": {"setpoint": 22}}]},
                )
                assert status == 200
                await cloud.wait(lambda: answer(cloud, DEV, lambda b: b.get("setpoint") == 22))
                assert answer(cloud, DEV, lambda b: b.get("setpoint") == 22)["version"] == 7

                # The gateway's own setting is taken and confirmed; its read-only one refused.
                await cloud.push(GW, "config", {"version": 3, "heartbeat_s": 60, "uptime_s": 5})
                await cloud.wait(lambda: answer(cloud, GW, lambda b: "heartbeat_s" in b))
                await cloud.wait(lambda: answer(cloud, GW, lambda b: "refused" in b))
                assert answer(cloud, GW, lambda b: "heartbeat_s" in b) == {
                    "version": 3,
                    "last_updated": answer(cloud, GW, lambda b: "heartbeat_s" in b)["last_updated"],
                    "heartbeat_s": 60,
                }
                assert answer(cloud, GW, lambda b: "refused" in b)["refused"] == {
                    "uptime_s": "the property is read-only"
                }
                await cloud.push(GW, "config", {"version": 4, "heartbeat_s": 0})
                await cloud.wait(
                    lambda: answer(cloud, GW, lambda b: "refused" in b and b["version"] == 4)
                )
                assert answer(cloud, GW, lambda b: "refused" in b and b["version"] == 4)[
                    "refused"
                ] == {"heartbeat_s": "0 is below the minimum 1"}
                stored = await until_api(daemon, f"/v1/devices/{GW}/cloud/config", bool)
                assert (stored["version"], stored["fields"]) == ("3", {"heartbeat_s": 60})
                shadow = await until_api(daemon, f"{DEVICES}/{GW}/shadow", bool)
                assert shadow["shadow"][0]["reported"]["properties"]["heartbeat_s"] == 60
        finally:
            await asyncio.to_thread(daemon.stop)
    log = daemon.log.read_text()
    assert "Traceback" not in log


async def test_api_devices_reach_the_cloud_and_yaml_devices_cannot_be_deleted(tmp_path):
    with Broker(tmp_path / "broker") as broker:
        port = free_port()
        daemon = Daemon(loop_config(tmp_path, broker.port, port), port, tmp_path / "daemon.log")
        try:
            async with RefCloud(broker.port).running() as cloud:
                await asyncio.to_thread(daemon.start)
                await cloud.wait(lambda: cloud.of("get", DEV))
                status, body = await api(
                    daemon,
                    "POST",
                    DEVICES,
                    {"node_id": "r1", "product_id": "thermostat", "device_name": "Spare"},
                )
                assert (status, body["device_id"]) == (201, SPARE)
                # At once while connected: children/add, then its get.
                await cloud.wait(lambda: any(d["device_id"] == SPARE for d in added(cloud)))
                assert next(d for d in added(cloud) if d["device_id"] == SPARE) == {
                    "node_id": "r1",
                    "product_id": "thermostat",
                    "device_id": SPARE,
                    "device_name": "Spare",
                    "parent_device_id": GW,
                }
                await cloud.wait(lambda: cloud.of("get", SPARE))
                await until_api(
                    daemon,
                    "/v1/cloud/children",
                    lambda b: b["children"].get(SPARE, {}).get("state") == "registered",
                )
                # The cloud's config for it arrives (subscribed) and becomes its desired state.
                await cloud.push(SPARE, "config", {"version": 1, "setpoint": 25, "fan": 2})
                shadow = await until_api(
                    daemon,
                    f"{DEVICES}/{SPARE}/shadow",
                    lambda b: desired(b).get("setpoint") == 25,
                )
                assert desired(shadow)["setpoint"] == 25
                await cloud.wait(lambda: answer(cloud, SPARE, lambda b: "refused" in b))
                assert set(answer(cloud, SPARE, lambda b: "refused" in b)["refused"]) == {"fan"}

                # A new name is told to the cloud again.
                status, _ = await api(
                    daemon, "PUT", f"{DEVICES}/{SPARE}", {"device_name": "Spare two"}
                )
                assert status == 200
                await cloud.wait(
                    lambda: any(d.get("device_name") == "Spare two" for d in added(cloud))
                )

                # Deleted: children/delete, at once.
                status, _ = await api(daemon, "DELETE", f"{DEVICES}/{SPARE}")
                assert status == 204
                await cloud.wait(lambda: cloud.of("children/delete"))
                assert cloud.of("children/delete")[0].body["devices"] == [SPARE]
                await until_api(
                    daemon,
                    "/v1/cloud/children",
                    lambda b: b["children"][SPARE]["state"] == "deleted",
                )

                # A device of the YAML stays: refused with its key, still polled, still known.
                status, body = await api(daemon, "DELETE", f"{DEVICES}/{DEV}")
                assert status == 409
                assert body["error_code"] == "PROTECTED_DEVICE"
                assert "connections.sim.devices.t1" in body["error_msg"]
                status, _ = await api(daemon, "GET", f"{DEVICES}/{DEV}")
                assert status == 200
                seen = len(cloud.of("telemetry", DEV))
                await cloud.wait(lambda: len(cloud.of("telemetry", DEV)) > seen)
                assert [u.body["devices"] for u in cloud.of("children/delete")] == [[SPARE]]
        finally:
            await asyncio.to_thread(daemon.stop)
    assert "Traceback" not in daemon.log.read_text()


async def test_api_devices_changed_while_offline_reach_the_cloud_at_the_next_connect(tmp_path):
    broker = Broker(tmp_path / "broker")
    port = free_port()
    daemon = Daemon(loop_config(tmp_path, broker.port, port), port, tmp_path / "daemon.log")
    try:
        await asyncio.to_thread(daemon.start)  # no broker yet: an offline boot
        status, _ = await api(
            daemon, "POST", DEVICES, {"node_id": "r1", "product_id": "thermostat"}
        )
        assert status == 201
        with broker:
            async with RefCloud(broker.port).running() as cloud:
                await cloud.wait(lambda: cloud.of("get", SPARE))
                assert {d["device_id"] for d in added(cloud)} == {DEV, SPARE}
                await until_api(
                    daemon,
                    "/v1/cloud/children",
                    lambda b: b["children"].get(SPARE, {}).get("state") == "registered",
                )
        status, _ = await api(daemon, "DELETE", f"{DEVICES}/{SPARE}")  # the broker is gone
        assert status == 204
        with broker:
            async with RefCloud(broker.port, client_id="refcloud-2").running() as cloud:
                await cloud.wait(lambda: cloud.of("children/delete"))
                assert cloud.of("children/delete")[0].body["devices"] == [SPARE]
                # The drain starts once the resync is done: every get was sent by then.
                await cloud.wait(lambda: cloud.of("telemetry", DEV))
                assert cloud.of("get", DEV)
                assert not cloud.of("get", SPARE)
    finally:
        await asyncio.to_thread(daemon.stop)
    assert "Traceback" not in daemon.log.read_text()
