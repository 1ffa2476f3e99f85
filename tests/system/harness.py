"""The whole gateway in this loop: field peer -> App -> real mosquitto -> reference cloud."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gatewayd.app import App, default_build_driver
from gatewayd.driver import ConnectionConfig, Driver
from gatewayd.settings import Settings
from gatewayd.systemd import Notifier
from tests.helpers import async_wait_for, write_yaml
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud

CLIMATE_PRODUCT = {
    "product_id": "climate",
    "name": "Climate sensor with a setpoint",
    "services": [
        {
            "service_id": "Climate",
            "properties": [
                {"name": "temperature", "type": "decimal", "unit": "°C", "access": "R"},
                {"name": "humidity", "type": "decimal", "unit": "%", "access": "R"},
                {"name": "setpoint", "type": "decimal", "min": 5, "max": 40, "access": "RW"},
            ],
        }
    ],
}


METER_PRODUCT = {
    "product_id": "meter",
    "name": "Energy meter with a power limit",
    "services": [
        {
            "service_id": "Energy",
            "properties": [
                {"name": "voltage", "type": "decimal", "unit": "V", "min": 0, "max": 500,
                 "access": "R"},
                {"name": "energy", "type": "int", "unit": "Wh", "access": "R"},
                {"name": "limit", "type": "int", "unit": "W", "min": 0, "max": 60000,
                 "access": "RW"},
            ],
        }
    ],
}  # fmt: skip


def gateway_settings(tmp_path: Path, broker_port: int, connections: dict[str, Any]) -> Settings:
    products = tmp_path / "products"
    write_yaml(products / "climate.yaml", CLIMATE_PRODUCT)
    write_yaml(products / "meter.yaml", METER_PRODUCT)
    return Settings(
        gateway={"node_id": "gw-sys"},
        state_dir=tmp_path / "state",
        products=products,
        api={"port": 0},
        cloud={
            "host": "127.0.0.1",
            "port": broker_port,
            "rate_limit_msg_s": 10000,
            "reconnect_initial_s": 0.05,
            "reconnect_max_s": 0.5,
            "keepalive_s": 5,
            "connect_timeout_s": 2,
        },
        connections=connections,
    )


@asynccontextmanager
async def cloud_and_gateway(
    tmp_path: Path,
    connections: dict[str, Any],
    build_driver: Callable[[ConnectionConfig], Driver[Any, Any]] = default_build_driver,
) -> AsyncIterator[tuple[RefCloud, App]]:
    """A broker, the reference cloud, and the real App connected to both."""
    with Broker(tmp_path / "broker") as broker:
        settings = gateway_settings(tmp_path, broker.port, connections)
        async with RefCloud(broker.port).running() as cloud:
            app = App(settings, notifier=Notifier({}), build_driver=build_driver)
            async with _running(app):
                gateway = settings.gateway.effective_device_id
                await cloud.wait(lambda: cloud.of("get", gateway), what="the gateway's resync")
                yield cloud, app


@asynccontextmanager
async def _running(app: App) -> AsyncIterator[None]:
    task = asyncio.create_task(app.run(), name="system.app")
    try:
        await async_wait_for(lambda: app.uplink is not None or task.done(), 10)
        if task.done():
            task.result()
        yield
    finally:
        app.request_stop()
        async with asyncio.timeout(10):
            await task


def telemetry_values(cloud: RefCloud, device: str, key: str) -> list[Any]:
    """Values of one telemetry key the cloud received from a device, in arrival order."""
    return [u.body["telemetries"][key] for u in cloud.of("telemetry", device)
            if key in u.body.get("telemetries", {})]  # fmt: skip


def config_updates(cloud: RefCloud, device: str) -> list[dict[str, Any]]:
    return [u.body for u in cloud.of("config/update", device)]
