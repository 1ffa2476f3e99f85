"""The real daemon's command engine against a real broker, as the cloud would use it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gatewayd.api.auth import hash_token
from tests.fault.daemon_setup import TOKEN, Daemon
from tests.helpers import free_port, write_yaml
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud

PRODUCTS = Path(__file__).resolve().parents[2] / "config" / "products"
RELAY = {"initial": True, "writable": True, "property": "relay_on"}


def pulse(timeout_s: float | None = None) -> dict[str, Any]:
    """`pulse` bound as the product describes it: relay off, wait `duration_s`, relay on."""
    binding: dict[str, Any] = {
        "steps": [
            {"write": "relay_on", "value": False},
            {"wait_parameter": "duration_s"},
            {"write": "relay_on", "value": True},
        ],
        "responses": {"result": "relay_on"},
    }
    if timeout_s is not None:
        binding["timeout_s"] = timeout_s
    return binding


def config(tmp_path: Path, broker_port: int, api_port: int) -> Path:
    devices = {
        key: {
            "product_id": "energy-meter",
            "interval_s": 0.02,
            "points": {"relay_on": RELAY},
            "commands": {"pulse": pulse(timeout_s)},
        }
        for key, timeout_s in (("r1", None), ("slow", 0.3))
    }
    return write_yaml(
        tmp_path / "gw.yaml",
        {
            "gateway": {"node_id": "gw-cmd"},
            "state_dir": str(tmp_path / "state"),
            "products": str(PRODUCTS),
            "api": {"port": api_port, "tokens": {"tests": {"sha256": hash_token(TOKEN)}}},
            "cloud": {"host": "127.0.0.1", "port": broker_port, "keepalive_s": 5},
            "connections": {"sim": {"driver": "memory", "devices": devices}},
        },
    )


def updates(cloud: RefCloud, command_id: str) -> list[dict[str, Any]]:
    return [u.body for u in cloud.of("commands/update") if u.body["id"] == command_id]


def ended(cloud: RefCloud, command_id: str) -> bool:
    return any(b["status"] in {"done", "error"} for b in updates(cloud, command_id))


def relay_values(cloud: RefCloud, device: str) -> list[bool]:
    """The relay's telemetry values in order, consecutive repeats folded."""
    seen: list[bool] = []
    for u in cloud.of("telemetry", device):
        value = u.body.get("telemetries", {}).get("relay_on")
        if value is not None and (not seen or seen[-1] != value):
            seen.append(value)
    return seen


@pytest.fixture
async def running(tmp_path):
    with Broker(tmp_path / "broker") as broker:
        api_port = free_port()
        daemon = Daemon(config(tmp_path, broker.port, api_port), api_port, tmp_path / "d.log")
        try:
            async with RefCloud(broker.port).running() as cloud:
                await asyncio.to_thread(daemon.start)
                await cloud.wait(lambda: len(cloud.of("get", "gatewayd_gw-cmd")) > 0)
                yield daemon, cloud
        finally:
            daemon.stop()
        assert "Traceback" not in daemon.log.read_text()


async def test_bound_pulse_checked_ordered_once_and_timed_out(running):
    _daemon, cloud = running
    r1 = "energy-meter_r1"
    pushed = [
        ("p1", "pulse", {"duration_s": 1}),
        ("p1", "pulse", {"duration_s": 1}),  # redelivered: never run twice
        ("ping-after", "ping", {}),  # arrives behind p1: runs after it
        ("bad", "pulse", {"duration_s": 0}),
        ("missing", "pulse", {}),
        ("undeclared", "reboot", {}),
    ]
    for command_id, name, parameters in pushed:
        await cloud.push(r1, "commands", {"id": command_id, "name": name, "parameters": parameters})
    slow = {"id": "t1", "name": "pulse", "parameters": {"duration_s": 5}}
    await cloud.push("energy-meter_slow", "commands", slow)
    await cloud.wait(lambda: all(ended(cloud, c) for c, _n, _p in pushed) and ended(cloud, "t1"))

    assert [b["status"] for b in updates(cloud, "p1")] == ["in_progress", "done"]
    assert updates(cloud, "p1")[-1]["response"] == {"result": True}
    # The poll after the last write may reach the cloud after the command's answer.
    await cloud.wait(lambda: relay_values(cloud, r1)[-3:] == [True, False, True])
    order = [(u.body["id"], u.body["status"]) for u in cloud.of("commands/update", r1)]
    assert order.index(("p1", "done")) < order.index(("ping-after", "in_progress"))
    assert updates(cloud, "ping-after")[-1]["message"] == "pong"
    assert updates(cloud, "bad")[-1]["status"] == "error"
    assert "'duration_s'" in updates(cloud, "bad")[-1]["message"]
    assert "below the minimum 1" in updates(cloud, "bad")[-1]["message"]
    assert updates(cloud, "missing")[-1]["message"] == "parameter 'duration_s' is required"
    assert "'reboot' is not supported" in updates(cloud, "undeclared")[-1]["message"]
    assert updates(cloud, "t1")[-1] == {"id": "t1", "status": "error", "message": "timeout"}


@pytest.mark.timeout(60)
async def test_a_command_killed_in_progress_is_answered_interrupted_after_restart(running):
    daemon, cloud = running
    command = {"id": "k1", "name": "pulse", "parameters": {"duration_s": 600}}
    await cloud.push("energy-meter_r1", "commands", command)
    await cloud.wait(lambda: any(b["status"] == "in_progress" for b in updates(cloud, "k1")))
    await asyncio.to_thread(daemon.kill)
    await asyncio.to_thread(daemon.start)
    await cloud.wait(lambda: ended(cloud, "k1"), timeout_s=20)
    await cloud.push("energy-meter_r1", "commands", command)  # redelivered after the restart
    await cloud.push("energy-meter_r1", "commands", {"id": "marker", "name": "ping"})
    await cloud.wait(lambda: ended(cloud, "marker"))
    # The outbox delivers at least once: the in_progress acknowledged just before the kill
    # may come again; what matters is that it ends interrupted and never ran again.
    answers = list(dict.fromkeys((b["status"], b["message"]) for b in updates(cloud, "k1")))
    assert answers == [("in_progress", ""), ("error", "interrupted")]
    history = await asyncio.to_thread(daemon.get, "/v1/devices/energy-meter_r1/commands")
    listed = {c["id"]: c for c in history["commands"]}
    assert listed["k1"]["status"] == "error"
    assert [h["status"] for h in listed["k1"]["history"]] == ["pending", "in_progress", "error"]


async def test_resync_reports_every_childs_status_and_shadow_again(running):
    _daemon, cloud = running
    gw = "gatewayd_gw-cmd"
    # Each child's relay was read, so its reported shadow holds relay_on.
    await cloud.wait(lambda: all(relay_values(cloud, f"energy-meter_{k}") for k in ("r1", "slow")))
    statuses, reports = len(cloud.of("children/status", gw)), len(cloud.of("config/update"))
    await cloud.push(gw, "commands", {"id": "rs", "name": "resync"})
    await cloud.wait(lambda: ended(cloud, "rs"))
    assert updates(cloud, "rs")[-1]["status"] == "done", updates(cloud, "rs")
    await cloud.wait(lambda: len(cloud.of("children/status", gw)) > statuses)
    status = cloud.of("children/status", gw)[-1].body
    assert {d["device_id"] for d in status["devices"]} == {"energy-meter_r1", "energy-meter_slow"}
    await cloud.wait(lambda: len(cloud.of("config/update")) >= reports + 2)
    again = {u.device: u.body for u in cloud.of("config/update")[reports:]}
    assert again["energy-meter_r1"]["Relay"]["relay_on"] is True
