"""A device's own settings stay: only values someone asked for reach the field.

A real pymodbus simulator holds a meter whose CT ratio register says 6 while the product's
default says 1. Every request the simulator serves is recorded through its action callback,
so "nothing was written" is checked on the device's side of the wire, not in the daemon.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from gatewayd.api.auth import hash_token
from gatewayd.app import App
from gatewayd.settings import Settings
from gatewayd.systemd import Notifier
from tests.drivers.modbus.sim import Requests, split_device, tcp_server
from tests.helpers import async_wait_for, eventually, free_port, write_yaml
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud
from tests.system.harness import config_updates, telemetry_values

TOKEN = "admin-token-0123456789"
DEVICE = "ctmeter_m1"
WRITE_CODES = {5, 6, 15, 16}  # write coil(s), write register(s)
READ_HOLDING = 3
CT_ADDRESS = 6

PRODUCT = {
    "product_id": "ctmeter",
    "name": "Meter with a CT ratio",
    "services": [
        {
            "service_id": "Meter",
            "properties": [
                {"name": "temperature", "type": "decimal", "unit": "°C", "access": "R"},
                {"name": "ct_ratio", "type": "int", "min": 1, "max": 10000, "default": 1,
                 "access": "RW"},
            ],
        }
    ],
}  # fmt: skip


def _settings(tmp_path: Path, broker: int, modbus: int, **device: Any) -> Settings:
    write_yaml(tmp_path / "products" / "ctmeter.yaml", PRODUCT)
    points = {
        "temperature": {"address": 0, "type": "uint16", "scale": 0.1, "unit": "°C"},
        "ct_ratio": {"address": CT_ADDRESS, "type": "uint16", "writable": True},
    }
    return Settings(
        gateway={"node_id": "gw-sys"},
        state_dir=tmp_path / "state",
        products=tmp_path / "products",
        api={"port": 0, "tokens": {"ops": {"sha256": hash_token(TOKEN), "scope": "admin"}}},
        cloud={"host": "127.0.0.1", "port": broker, "reconnect_initial_s": 0.05,
               "reconnect_max_s": 0.5, "keepalive_s": 5, "connect_timeout_s": 2},
        connections={"meter": {"driver": "modbus-tcp", "host": "127.0.0.1", "port": modbus,
                               "timeout_s": 0.5, "devices": {"m1": {
                                   "product_id": "ctmeter", "unit_id": 1, "interval_s": 0.05,
                                   "points": points, **device}}}},
    )  # fmt: skip


@asynccontextmanager
async def _gateway(settings: Settings) -> AsyncIterator[App]:
    app = App(settings, notifier=Notifier({}))
    task = asyncio.create_task(app.run(), name="gateway")
    try:
        await async_wait_for(
            lambda: (app.api is not None and app.api.bound.is_set()) or task.done()
        )
        if task.done():
            task.result()
        yield app
    finally:
        app.request_stop()
        async with asyncio.timeout(10):
            await task


def _writes(requests: Requests) -> list[tuple[int, int, int, int]]:
    """Write requests the simulator served.

    pymodbus calls the action twice for one write request (to check it, then to set it), so
    adjacent equal entries are one request: the gateway reads back after every write.
    """
    seen = requests.seen
    return [r for i, r in enumerate(seen) if r[1] in WRITE_CODES and (i == 0 or seen[i - 1] != r)]


async def _reported_and_polled(app: App, requests: Requests, ct_ratio: int) -> None:
    """The device reported `ct_ratio`, then was polled five more times (writes go first)."""
    assert app.store is not None
    store = app.store

    async def reported() -> Any:
        shadow = (await store.shadows.get(DEVICE))[0]
        have = shadow.reported.get("ct_ratio")
        return None if have is None else have.value

    await eventually(reported, ct_ratio)
    polled = requests.count(1, READ_HOLDING)
    await async_wait_for(lambda: requests.count(1, READ_HOLDING) >= polled + 5)


def _confirmed(cloud: RefCloud, ct_ratio: int) -> bool:
    return any(u.get("ct_ratio") == ct_ratio for u in config_updates(cloud, DEVICE))


async def _register(server: Any) -> int:
    return int((await server.context.async_getValues(1, 3, CT_ADDRESS, 1))[0])


async def test_first_start_restart_and_a_wiped_state_dir_write_nothing(tmp_path):
    requests, port = Requests(), free_port()
    async with tcp_server([split_device(1, requests)], port) as server:
        await server.context.async_setValues(1, 16, 0, [217, 0, 0, 0, 0, 0, 6])
        requests.seen.clear()  # the setup above passes the action callback too
        with Broker(tmp_path / "broker") as broker:
            settings = _settings(tmp_path, broker.port, port)
            async with RefCloud(broker.port).running() as cloud:
                for phase in ("first start", "restart", "wiped state dir"):
                    if phase == "wiped state dir":
                        shutil.rmtree(settings.state_dir)
                    async with _gateway(settings) as app:
                        await _reported_and_polled(app, requests, 6)
                        assert app.store is not None
                        meter = (await app.store.shadows.get(DEVICE))[0]
                        # the default stands aside for the device's own value: no delta
                        assert meter.desired["ct_ratio"].value == 6, phase
                        assert not meter.desired["ct_ratio"].asked, phase
                        assert meter.delta() == {}, phase
                    assert _writes(requests) == [], phase
                    assert await _register(server) == 6, phase
                # raw 217 x 0.1 arrives as 21.7, not 21.700000000000003
                temperatures = telemetry_values(cloud, DEVICE, "temperature")
                assert temperatures
                assert {repr(t) for t in temperatures} == {"21.7"}


async def test_yaml_api_and_cloud_requests_are_written_and_read_back(tmp_path):
    requests, port = Requests(), free_port()
    async with tcp_server([split_device(1, requests)], port) as server:
        await server.context.async_setValues(1, 16, 0, [217, 0, 0, 0, 0, 0, 6])
        requests.seen.clear()  # the setup above passes the action callback too
        with Broker(tmp_path / "broker") as broker:
            settings = _settings(tmp_path, broker.port, port, desired={"ct_ratio": 8})
            async with RefCloud(broker.port).running() as cloud:
                async with _gateway(settings) as app:
                    # the YAML's desired: written once, read back, reported
                    await _reported_and_polled(app, requests, 8)
                    assert _writes(requests) == [(1, 6, CT_ADDRESS, 1)]
                    assert await _register(server) == 8

                    # a shadow change through the local API
                    assert app.api is not None
                    url = f"http://127.0.0.1:{app.api.port}/v5/iot/local/devices/{DEVICE}/shadow"
                    body = {"shadow": [{"service_id": "Meter", "desired": {"ct_ratio": 12}}]}
                    async with (
                        aiohttp.ClientSession(headers={"X-Auth-Token": TOKEN}) as http,
                        http.put(url, json=body) as resp,
                    ):
                        assert resp.status == 200, await resp.text()
                    await _reported_and_polled(app, requests, 12)
                    assert await _register(server) == 12

                    # the cloud's config; config/update echoes its version as it was sent
                    await cloud.push(DEVICE, "config", {"version": 1, "ct_ratio": 20})
                    await cloud.wait(lambda: _confirmed(cloud, 20))
                    assert await _register(server) == 20
                    answer = next(
                        u for u in config_updates(cloud, DEVICE) if u.get("ct_ratio") == 20
                    )
                    assert answer["version"] == 1
                    assert isinstance(answer["version"], int)
                    await cloud.push(DEVICE, "config", {"version": "2", "ct_ratio": 21})
                    await cloud.wait(lambda: _confirmed(cloud, 21))
                    answer = next(
                        u for u in config_updates(cloud, DEVICE) if u.get("ct_ratio") == 21
                    )
                    assert answer["version"] == "2"
                    writes = len(_writes(requests))
                    assert writes == 4

                # a restart with the same YAML writes nothing: the cloud's 21 stands
                async with _gateway(settings) as app:
                    await _reported_and_polled(app, requests, 21)
                assert len(_writes(requests)) == writes
                assert await _register(server) == 21
