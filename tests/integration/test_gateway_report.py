"""The real daemon tells the cloud about itself: `update` at connect, its heartbeat telemetry,
and `cloud_settings/update` for the heartbeat it applies, over a real mosquitto."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime
from pathlib import Path

import pytest

from gatewayd import __version__
from gatewayd.api.auth import hash_token
from gatewayd.products import load_products
from tests.fault.daemon_setup import TOKEN, Daemon
from tests.helpers import free_port, write_yaml
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud

ROOT = Path(__file__).resolve().parents[2]
GW = "gatewayd_gw-report"
PRODUCT = load_products(ROOT / "config" / "products")["gatewayd"].services[0]
REPORTED = {p.name for p in PRODUCT.properties if p.access == "R"}


def config(tmp_path: Path, broker_port: int, api_port: int, fw_version: str) -> Path:
    return write_yaml(
        tmp_path / "gw.yaml",
        {
            "gateway": {"node_id": "gw-report", "name": "Roof gateway"},
            "state_dir": str(tmp_path / "state"),
            "products": str(ROOT / "config" / "products"),
            "api": {"port": api_port, "tokens": {"tests": {"sha256": hash_token(TOKEN)}}},
            "cloud": {"host": "127.0.0.1", "port": broker_port, "connect_timeout_s": 2},
            "connections": {
                "sim": {
                    "driver": "memory",
                    "devices": {
                        "meter": {
                            "name": "Main meter",
                            "fw_version": fw_version,
                            "interval_s": 5,
                            "points": {"seq": {"initial": 0}},
                        },
                        "plain": {"interval_s": 5, "points": {"seq": {"initial": 0}}},
                    },
                }
            },
        },
    )


def at(uplink) -> float:
    return datetime.fromisoformat(uplink.body["timestamp"]).timestamp()


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "broker") as b:
        yield b


async def test_update_at_connect_and_again_with_a_new_yaml_version(tmp_path, broker):
    port = free_port()
    daemon = Daemon(config(tmp_path, broker.port, port, "1.2.3"), port, tmp_path / "daemon.log")
    try:
        async with RefCloud(broker.port).running() as cloud:
            await asyncio.to_thread(daemon.start)
            await cloud.wait(lambda: len(cloud.of("get", "memory_meter")) == 1)
            await asyncio.to_thread(daemon.stop)
            config(tmp_path, broker.port, port, "1.3.0")
            await asyncio.to_thread(daemon.start)
            await cloud.wait(lambda: len(cloud.of("get", "memory_meter")) == 2)
    finally:
        daemon.stop()
    assert [u.body for u in cloud.of("update", GW)] == [
        {"firmware_version": __version__, "name": "Roof gateway"}
    ] * 2
    assert [u.body for u in cloud.of("update", "memory_meter")] == [
        {"firmware_version": "1.2.3", "name": "Main meter"},
        {"firmware_version": "1.3.0", "name": "Main meter"},
    ]
    assert cloud.of("update", "memory_plain") == []  # no version known: no update
    # At connect, before the snapshot is asked for.
    kinds = [u.kind for u in cloud.uplinks if u.kind in {"update", "get"}]
    assert kinds[: kinds.index("get")] == ["update", "update"]
    assert "Traceback" not in daemon.log.read_text()


@pytest.mark.timeout(60)
async def test_heartbeat_telemetry_follows_the_clouds_heartbeat_s(tmp_path, broker):
    port = free_port()
    daemon = Daemon(config(tmp_path, broker.port, port, "1.0"), port, tmp_path / "daemon.log")

    def beats():
        return cloud.of("telemetry", GW)

    def settings():
        return [u.body for u in cloud.of("cloud_settings/update", GW)]

    try:
        async with RefCloud(broker.port).running() as cloud:
            await asyncio.to_thread(daemon.start)
            # One report at start, and the product's default period as applied.
            await cloud.wait(lambda: beats() and settings())
            assert settings() == [{"property": "heartbeat_s", "value": 300}]
            first = beats()[0].body["telemetries"]
            await cloud.push(GW, "config", {"version": 1, "heartbeat_s": 1})
            await cloud.wait(lambda: len(settings()) == 2)
            fast_from = len(beats())
            await cloud.wait(lambda: len(beats()) >= fast_from + 3, timeout_s=15)
            fast = beats()[fast_from:]
            await cloud.push(GW, "config", {"version": 2, "heartbeat_s": 2})
            await cloud.wait(lambda: len(settings()) == 3)
            slow_from = len(beats())
            await cloud.wait(lambda: len(beats()) >= slow_from + 2, timeout_s=15)
            slow = beats()[slow_from:]
            shadow = await asyncio.to_thread(daemon.get, f"/v5/iot/local/devices/{GW}/shadow")
    finally:
        daemon.stop()
    assert settings()[1:] == [
        {"property": "heartbeat_s", "value": 1},
        {"property": "heartbeat_s", "value": 2},
    ]
    # Every field the product declares as reported, each one the product's check takes.
    assert set(first) == REPORTED
    for name, value in first.items():
        assert PRODUCT.property(name).check(value) == value, name
    assert first["uptime_s"] < 10
    assert first["link_reconnects"] == 0
    assert first["connections_down"] == 0
    gaps_fast = [at(b) - at(a) for a, b in itertools.pairwise(fast)]
    gaps_slow = [at(b) - at(a) for a, b in itertools.pairwise(slow)]
    assert all(0.3 < g < 1.7 for g in gaps_fast), gaps_fast
    assert all(1.5 < g < 3.5 for g in gaps_slow), gaps_slow
    # The period in force is the gateway's reported heartbeat_s.
    reported = shadow["shadow"][0]["reported"]["properties"]
    assert reported["heartbeat_s"] == 2
    assert "Traceback" not in daemon.log.read_text()
