"""Modbus units (TCP and RTU) through the whole gateway to the reference cloud and back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.drivers.modbus.sim import (
    WRITE_REGISTERS,
    Requests,
    pty_pair,
    rtu_server,
    split_device,
    tcp_server,
)
from tests.helpers import eventually, free_port
from tests.system.harness import cloud_and_gateway, config_updates, telemetry_values

FC_READ_HOLDING = 3


def meter_points() -> dict[str, Any]:
    return {
        "voltage": {"address": 0, "type": "uint16", "scale": 0.1, "unit": "V"},
        "energy": {"address": 1, "type": "uint32", "unit": "Wh"},
        "limit": {"address": 5, "type": "uint16", "unit": "W", "writable": True},
    }


def limit_reported(cloud: Any, device: str, value: int) -> bool:
    return any(u.get("limit") == value for u in config_updates(cloud, device))


async def load_meter(server: Any) -> None:
    # voltage 230.1 V (x10), energy 70000 Wh (two registers, big-endian words), limit 4200 W
    await server.context.async_setValues(1, 16, 0, [2301, 1, 4464, 0, 0, 4200])


async def test_tcp_values_arrive_typed_scaled_and_timestamped(tmp_path):
    port, requests = free_port(), Requests()
    connections = {"meter": {"driver": "modbus-tcp", "host": "127.0.0.1", "port": port,
                             "timeout_s": 0.5, "devices": {"m1": {
                                 "product_id": "meter", "unit_id": 1, "interval_s": 0.1,
                                 "points": meter_points()}}}}  # fmt: skip
    async with tcp_server([split_device(1, requests)], port) as server:
        await load_meter(server)
        started = datetime.now(UTC)
        async with cloud_and_gateway(tmp_path, connections) as (cloud, app):
            await cloud.wait(lambda: 230.1 in telemetry_values(cloud, "meter_m1", "voltage"))
            record = next(u.body for u in cloud.of("telemetry", "meter_m1"))
            values = record["telemetries"]
            assert values["voltage"] == 230.1
            assert values["energy"] == 70000
            assert isinstance(values["energy"], int)
            stamp = datetime.fromisoformat(record["timestamp"])
            assert started - timedelta(seconds=1) <= stamp <= datetime.now(UTC)

            # a value written into the simulator arrives too
            await server.context.async_setValues(1, 16, 0, [2355])
            await cloud.wait(lambda: 235.5 in telemetry_values(cloud, "meter_m1", "voltage"))

            # desired state from the cloud lands in the register, reported after a read-back
            await cloud.push("meter_m1", "config", {"version": 2, "limit": 5000})
            await cloud.wait(lambda: limit_reported(cloud, "meter_m1", 5000))
            assert await server.context.async_getValues(1, 3, 5, 1) == [5000]

            # the unit keeps its limit at 6000 W at most: 9000 is asked, 6000 is what it
            # holds, and the cloud and the shadow hear 6000, never 9000
            requests.clamp[1, 5] = (0, 6000)
            await cloud.push("meter_m1", "config", {"version": 3, "limit": 9000})

            def answers() -> list[dict[str, Any]]:
                return [u for u in config_updates(cloud, "meter_m1") if u.get("version") == 3]

            await cloud.wait(answers)
            assert [u.get("limit") for u in answers()] == [6000], answers()
            assert await server.context.async_getValues(1, 3, 5, 1) == [6000]
            assert app.store is not None
            (shadow,) = await app.store.shadows.get("meter_m1")
            assert shadow.reported["limit"].value == 6000
            assert shadow.desired["limit"].value == 9000  # the delta stays visible
            write_at = max(i for i, r in enumerate(requests.seen) if r[1] in WRITE_REGISTERS)
            assert any(
                fc == FC_READ_HOLDING and address <= 5 < address + count
                for _, fc, address, count in requests.seen[write_at + 1 :]
            ), "no read-back after the write"

            # the registry knows the unit as a level-1 child of the gateway, and ONLINE
            assert app.store is not None
            device = await app.store.registry.get("meter_m1")
            assert device.gateway_id == app.settings.gateway.effective_device_id
            assert device.status.value == "ONLINE"


async def test_rtu_units_behind_one_port_reach_the_cloud(tmp_path):
    requests = Requests()
    with pty_pair(tmp_path) as (gateway_end, device_end):
        connections = {"bus": {"driver": "modbus-rtu", "port": gateway_end, "baudrate": 115200,
                               "timeout_s": 0.3, "devices": {
                                   f"m{unit}": {"product_id": "meter", "unit_id": unit,
                                                "interval_s": 0.1, "points": meter_points()}
                                   for unit in (1, 2)}}}  # fmt: skip
        units = [split_device(1, requests), split_device(2, requests)]
        async with rtu_server(units, device_end) as server:
            await load_meter(server)
            await server.context.async_setValues(2, 16, 0, [2299])
            async with cloud_and_gateway(tmp_path, connections) as (cloud, app):
                await cloud.wait(lambda: 230.1 in telemetry_values(cloud, "meter_m1", "voltage"))
                await cloud.wait(lambda: 229.9 in telemetry_values(cloud, "meter_m2", "voltage"))
                await cloud.push("meter_m2", "config", {"version": 1, "limit": 1234})
                await cloud.wait(lambda: limit_reported(cloud, "meter_m2", 1234))
                assert await server.context.async_getValues(2, 3, 5, 1) == [1234]
                assert app.store is not None

                async def status() -> str:
                    return (await app.store.registry.get("meter_m1")).status.value

                await eventually(status, "ONLINE")
