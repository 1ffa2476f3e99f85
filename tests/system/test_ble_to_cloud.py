"""BLE peripherals on an emulated radio, through the whole gateway, to the reference cloud."""

from __future__ import annotations

import struct
from typing import Any

from drivers.ble import BleConnection, BleDriver
from gatewayd.app import default_build_driver
from gatewayd.driver import ConnectionConfig, Driver
from tests.drivers.ble.radio import Peripheral, World
from tests.drivers.ble.test_runner import (
    SETPOINT,
    bthome,
    bthome_device,
    gatt_device,
    gatt_sensor,
    notify_until,
)
from tests.system.harness import cloud_and_gateway, config_updates, telemetry_values


def ble_connection(devices: dict[str, Any]) -> dict[str, Any]:
    return {"ble0": {
        "driver": "ble",
        "scan_timeout_s": 1.0,
        "connect_timeout_s": 1.0,
        "io_timeout_s": 1.0,
        "retry_initial_s": 0.2,
        "retry_max_s": 1.0,
        "devices": devices,
    }}  # fmt: skip


def on_emulated_radio(adapter: tuple[Any, Any]):
    scanner, client = adapter

    def build(config: ConnectionConfig) -> Driver[Any, Any]:
        if isinstance(config, BleConnection):
            return BleDriver(config, scanner_backend=scanner, client_backend=client)
        return default_build_driver(config)

    return build


async def test_bthome_advertiser_yields_telemetry_at_the_cloud(tmp_path):
    world = World()
    sensor = Peripheral(world, "F0:00:00:00:00:01", "TH")
    await sensor.start(bthome(1, 21.5, 45.67))
    device = {**bthome_device("F0:00:00:00:00:01"), "product_id": "climate"}
    device["points"] = {k: v for k, v in device["points"].items() if k != "rssi"}
    build = on_emulated_radio(await world.adapter())
    async with cloud_and_gateway(tmp_path, ble_connection({"th": device}), build) as (cloud, _):
        await cloud.wait(lambda: 21.5 in telemetry_values(cloud, "climate_th", "temperature"))
        assert 45.67 in telemetry_values(cloud, "climate_th", "humidity")
        await sensor.set_advertising_data(bthome(2, -3.25, 80.0))
        await cloud.wait(lambda: -3.25 in telemetry_values(cloud, "climate_th", "temperature"))
    await sensor.stop()


async def test_gatt_notify_telemetry_and_desired_setpoint_written(tmp_path):
    world = World()
    sensor = await gatt_sensor(world, "F0:00:00:00:00:02")
    device = {**gatt_device("F0:00:00:00:00:02"), "product_id": "climate"}
    build = on_emulated_radio(await world.adapter())
    async with cloud_and_gateway(tmp_path, ble_connection({"thermo": device}), build) as (
        cloud,
        _,
    ):

        def seen() -> bool:
            return 21.25 in telemetry_values(cloud, "climate_thermo", "temperature")

        await notify_until(sensor, 21.25, seen)
        await cloud.push("climate_thermo", "config", {"version": 3, "setpoint": 23.5})
        await cloud.wait(
            lambda: any(u.get("setpoint") == 23.5 for u in config_updates(cloud, "climate_thermo"))
        )
        assert struct.unpack("<h", sensor.values[SETPOINT])[0] == 235  # the field holds it
    await sensor.stop()
