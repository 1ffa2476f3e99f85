"""A serial instrument on a pty, through the whole gateway, to the reference cloud and back."""

from __future__ import annotations

import pytest

from tests.drivers.serial.ptys import PtyPair, instrument
from tests.helpers import eventually
from tests.system.harness import cloud_and_gateway, config_updates, telemetry_values

DEVICE = "climate_th1"


class Instrument:
    """MEAS? -> T=..,H=..; SP? -> SP=..; SET x -> OK (ERR above 30)."""

    def __init__(self) -> None:
        self.temperature = 21.5
        self.setpoint = 20.0
        self.log: list[bytes] = []

    def __call__(self, line: bytes) -> bytes:
        if line == b"MEAS?":
            return f"T={self.temperature:.2f},H=45.5\n".encode()
        if line == b"SP?":
            return f"SP={self.setpoint:.1f}\n".encode()
        if line.startswith(b"SET "):
            value = float(line[4:])
            if value > 30:
                return b"ERR range\n"
            self.setpoint = value
            return b"OK\n"
        return b"ERR unknown\n"


def serial_connection(port: str) -> dict[str, object]:
    return {"rs485-1": {
        "driver": "serial",
        "port": port,
        "framing": {"type": "line", "terminator": "\n", "send_terminator": "\r\n"},
        "devices": {"th1": {
            "product_id": "climate",
            "interval_s": 0.1,
            "timeout_s": 0.5,
            "reply_match": "^(T=|SP=|OK|ERR)",
            "request": "MEAS?",
            "parser": {
                "type": "regex",
                "pattern": r"(T=(?P<temperature>-?[\d.]+),H=(?P<humidity>[\d.]+))"
                           r"|(SP=(?P<setpoint>-?[\d.]+))",
                "types": {"temperature": "float", "humidity": "float", "setpoint": "float"},
            },
            "points": {
                "temperature": {"unit": "°C"},
                "humidity": {"unit": "%"},
                "setpoint": {"request": "SP?", "writable": True, "write": "SET {value:.1f}",
                             "write_ack": "^OK$"},
            },
        }},
    }}  # fmt: skip


@pytest.fixture
async def pty_pair(tmp_path):
    pair = PtyPair(tmp_path)
    await pair.start()
    try:
        yield pair
    finally:
        pair.kill()


async def test_instrument_values_reach_the_cloud_and_desired_comes_back(tmp_path, pty_pair):
    device = Instrument()
    async with (
        instrument(pty_pair.device, device, device.log),
        cloud_and_gateway(tmp_path, serial_connection(str(pty_pair.gateway))) as (cloud, _app),
    ):
        await cloud.wait(lambda: 21.5 in telemetry_values(cloud, DEVICE, "temperature"))
        assert 45.5 in telemetry_values(cloud, DEVICE, "humidity")
        device.temperature = -3.25
        await cloud.wait(lambda: -3.25 in telemetry_values(cloud, DEVICE, "temperature"))

        await cloud.push(DEVICE, "config", {"version": 7, "setpoint": 22.5})
        await cloud.wait(
            lambda: any(u.get("setpoint") == 22.5 for u in config_updates(cloud, DEVICE))
        )
        assert b"SET 22.5\r\n" in device.log  # the configured command frame
        assert device.setpoint == 22.5
        (answer,) = [u for u in config_updates(cloud, DEVICE) if "setpoint" in u]
        assert answer["version"] == 7  # echoed as the cloud sent it

        # a value the device refuses (the product allows it) is answered as refused
        await cloud.push(DEVICE, "config", {"version": 8, "setpoint": 35.0})
        await cloud.wait(lambda: any("refused" in u for u in config_updates(cloud, DEVICE)))
        refusal = next(u for u in config_updates(cloud, DEVICE) if "refused" in u)
        assert refusal["version"] == 8
        assert "ERR range" in refusal["refused"]["setpoint"]
        assert device.setpoint == 22.5
        sets = [line for line in device.log if line.startswith(b"SET ")]
        assert sets == [b"SET 22.5\r\n", b"SET 35.0\r\n"]  # sent once, not retried


async def test_unplugged_port_makes_the_device_abnormal_then_online(tmp_path, pty_pair):
    first = Instrument()
    async with cloud_and_gateway(tmp_path, serial_connection(str(pty_pair.gateway))) as (
        cloud,
        app,
    ):
        assert app.store is not None
        registry = app.store.registry

        async def status() -> str:
            return (await registry.get(DEVICE)).status.value

        async with instrument(pty_pair.device, first, first.log):
            await eventually(status, "ONLINE")
        pty_pair.kill()  # the USB adapter is pulled
        await eventually(status, "ABNORMAL")
        await cloud.wait(
            lambda: {"device_id": DEVICE, "status": "ABNORMAL"} in child_statuses(cloud)
        )
        await pty_pair.start()  # and plugged back in
        second = Instrument()
        second.temperature = 23.75
        async with instrument(pty_pair.device, second, second.log):
            await cloud.wait(lambda: 23.75 in telemetry_values(cloud, DEVICE, "temperature"))
            await eventually(status, "ONLINE")


def child_statuses(cloud) -> list[dict[str, str]]:
    return [d for u in cloud.of("children/status") for d in u.body.get("devices", [])]
