"""The serial driver under the real ConnectionRunner, against a socat pty pair."""

from __future__ import annotations

import asyncio

import pytest

from drivers.serial.nmea import sentence_checksum
from gatewayd.config_load import load_settings
from gatewayd.errors import WriteRejected
from gatewayd.health import State
from tests.drivers.serial.harness import running
from tests.drivers.serial.ptys import DeviceEnd, instrument
from tests.helpers import ROOT, async_wait_for


def nmea(body: str, checksum: str | None = None) -> bytes:
    return f"${body}*{checksum or sentence_checksum(body)}\r\n".encode()


def sensor_config(port: str, **device: object) -> dict[str, object]:
    return {
        "driver": "serial",
        "port": port,
        "baudrate": 115200,
        "framing": {"type": "line", "terminator": "\n", "send_terminator": "\r\n"},
        "devices": {
            "th1": {
                "interval_s": 0.05,
                "request": "MEAS?",
                "timeout_s": 0.5,
                "retries": 1,
                "parser": {
                    "type": "regex",
                    "pattern": r"T=(?P<temperature>-?[\d.]+),H=(?P<humidity>[\d.]+)",
                    "types": {"temperature": "float", "humidity": "float"},
                },
                "points": {
                    "temperature": {"unit": "°C"},
                    "humidity": {"unit": "%", "scale": 0.01},
                },
                **device,
            }
        },
    }


class Thermometer:
    """Answers MEAS? with the current temperature; SET stores a setpoint."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.setpoint = 20.0
        self.release = asyncio.Event()
        self.release.set()
        self.log: list[bytes] = []

    def __call__(self, line: bytes) -> bytes | None:
        if line == b"MEAS?":
            return f"T={self.temperature:.2f},H=45.5\n".encode()
        if line == b"SP?":
            return f"SP={self.setpoint:.1f}\n".encode()
        if line.startswith(b"SET "):
            value = float(line[4:])
            if value > 30:
                return b"ERR range\n"
            self.setpoint = value
            return None  # the reply is sent by the test, after release
        return b"ERR unknown\n"


async def test_instrument_request_response_yields_readings(pty_pair):
    device = Thermometer(21.5)
    async with (
        instrument(pty_pair.device, device, device.log),
        running(sensor_config(str(pty_pair.gateway))) as run,
    ):
        await async_wait_for(lambda: 21.5 in run.sink.values("temperature"), 5, "a reading")
        reading = next(r for r in run.sink.batches if r.ref.point == "temperature")
        assert reading.unit == "°C"
        assert str(reading.ref) == "test/th1/temperature"
        assert run.sink.values("humidity")[0] == pytest.approx(0.455)
        assert device.log[0] == b"MEAS?\r\n"  # the template plus the send terminator
        device.temperature = -3.25
        await async_wait_for(lambda: -3.25 in run.sink.values("temperature"), 5, "new value")
        assert run.sink.device_states("th1") == [True]
        assert run.driver.counters.replies >= 2


async def test_silent_instrument_makes_the_device_unavailable(pty_pair):
    device = Thermometer(21.5)
    answering = True

    def handler(line: bytes) -> bytes | None:
        return device(line) if answering else None

    async with (
        instrument(pty_pair.device, handler, device.log),
        running(sensor_config(str(pty_pair.gateway))) as run,
    ):
        await async_wait_for(lambda: run.sink.device_states("th1") == [True], 5, "up")
        answering = False
        await async_wait_for(lambda: run.sink.device_states("th1") == [True, False], 5, "down")
        assert "no reply" in run.sink.states[-1][2]
        assert run.driver.counters.timeouts >= 2
        answering = True
        await async_wait_for(lambda: run.sink.device_states("th1") == [True, False, True], 5)
        assert run.component.state is State.UP  # one silent device never closes the port


def gps_config(port: str) -> dict[str, object]:
    return {
        "driver": "serial",
        "port": port,
        "baudrate": 4800,
        "framing": {"type": "line"},
        "devices": {
            "gps": {
                "parser": {"type": "nmea"},
                "points": {
                    "lat": {"push": True, "unit": "deg"},
                    "lon": {"push": True, "unit": "deg"},
                    "fix": {"push": True, "field": "GGA.fix"},
                    "satellites": {"push": True},
                    "speed": {"push": True, "field": "speed_kmh", "unit": "km/h"},
                    "valid": {"push": True, "field": "RMC.valid"},
                },
            }
        },
    }


GGA = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
RMC = "GPRMC,123520,A,4807.040,N,01131.010,E,022.4,084.4,230394,003.1,W"
BAD_GGA = "GPGGA,123521,1000.000,S,02000.000,W,1,08,0.9,545.4,M,46.9,M,,"


async def test_nmea_stream_yields_position_and_drops_bad_checksums(pty_pair):
    async with running(gps_config(str(pty_pair.gateway))) as run:
        end = DeviceEnd(pty_pair.device)
        try:
            await async_wait_for(lambda: run.runner.connected, 5, "port open")
            await end.write(nmea(GGA))
            await async_wait_for(lambda: run.sink.values("fix") == [1], 5, "GGA")
            assert run.sink.values("lat") == [pytest.approx(48.1173)]
            assert run.sink.values("lon") == [pytest.approx(11.516667)]
            assert run.sink.values("satellites") == [8]
            await end.write(nmea(BAD_GGA, checksum="00") + nmea(RMC))
            await async_wait_for(lambda: run.sink.values("valid") == [True], 5, "RMC")
            assert run.sink.values("speed") == [pytest.approx(22.4 * 1.852, abs=1e-3)]
            assert run.sink.values("lat")[-1] == pytest.approx(48.1173333)
            assert all(v > 0 for v in run.sink.values("lat"))  # the bad sentence never arrived
            assert run.driver.counters.bad_checksum == 1
            assert run.driver.counters.streamed == 2
        finally:
            end.close()


def stream_config(port: str) -> dict[str, object]:
    return {
        "driver": "serial",
        "port": port,
        "framing": {"type": "line", "max_frame_bytes": 256},
        "devices": {
            "meter": {
                "parser": {"type": "json"},
                "points": {"seq": {"push": True}, "power": {"push": True, "field": "p.w"}},
            }
        },
    }


async def test_garbage_partial_frames_and_a_64k_line_never_block_good_frames(pty_pair):
    async with running(stream_config(str(pty_pair.gateway))) as run:
        end = DeviceEnd(pty_pair.device)
        try:
            await async_wait_for(lambda: run.runner.connected, 5, "port open")
            await end.write(b'{"seq": 1, "p": {"w": 10.5}}\n')
            await async_wait_for(lambda: run.sink.values("seq") == [1], 5, "first frame")
            await end.write(bytes(range(256)) * 4)  # binary noise, newlines included
            await end.write(b'{"seq": 2, "p": {"w"')  # a partial frame ...
            await end.write(b"\n")  # ... cut by a terminator: undecodable, dropped
            await end.write(b"x" * 65536)  # a 64 KiB line without terminator
            await end.write(b'{"seq": 99}')  # swallowed by the overlong line
            await end.write(b'\n{"seq": 3, "p": {"w": 11}}\n')
            await async_wait_for(lambda: 3 in run.sink.values("seq"), 5, "good frame after junk")
            assert run.sink.values("seq") == [1, 3]
            assert run.sink.values("power") == [10.5, 11]
            counters = run.driver.counters
            assert counters.framing.oversize >= 1
            assert counters.framing.garbage_bytes >= 65536
            assert counters.undecodable >= 1
            assert run.component.state is State.UP
            assert run.sink.device_states("meter") == [True]
        finally:
            end.close()


async def test_junk_before_a_reply_does_not_block_request_response(pty_pair):
    device = Thermometer(18.5)
    replies = 0

    def noisy(line: bytes) -> bytes | None:
        nonlocal replies
        replies += 1
        reply = device(line)
        if replies == 1:  # junk, a partial reply and a 64 KiB line, then the reply
            return bytes(range(256)) + b"T=99" + b"\n" + b"z" * 65536 + b"\n" + (reply or b"")
        return reply

    async with (
        instrument(pty_pair.device, noisy, device.log),
        running(sensor_config(str(pty_pair.gateway))) as run,
    ):
        await async_wait_for(lambda: len(run.sink.values("temperature")) >= 3, 5, "readings")
        assert set(run.sink.values("temperature")) == {18.5}
        assert run.driver.counters.framing.oversize == 1
        assert run.sink.device_states("th1") == [True]


async def test_unplugged_port_reconnects_and_readings_resume(pty_pair):
    first = Thermometer(21.5)
    async with running(sensor_config(str(pty_pair.gateway))) as run:
        async with instrument(pty_pair.device, first, first.log):
            await async_wait_for(lambda: 21.5 in run.sink.values("temperature"), 5, "reading")
        pty_pair.kill()  # the USB adapter is pulled
        await async_wait_for(lambda: run.component.state is State.DOWN, 5, "port down")
        await async_wait_for(lambda: run.sink.device_states("th1") == [True, False], 5)
        assert not run.runner.connected
        await async_wait_for(lambda: "cannot open" in run.component.detail, 5, "a retry")
        assert run.component.state is State.DOWN  # retrying against the missing port

        await pty_pair.start()  # plugged back in, same names
        second = Thermometer(23.75)
        async with instrument(pty_pair.device, second, second.log):
            await async_wait_for(lambda: 23.75 in run.sink.values("temperature"), 5, "resumed")
            assert run.component.state is State.UP
            assert run.sink.device_states("th1") == [True, False, True]


async def test_unplug_ends_a_stream_and_it_resumes(pty_pair):
    async with running(gps_config(str(pty_pair.gateway))) as run:
        end = DeviceEnd(pty_pair.device)
        await async_wait_for(lambda: run.runner.connected, 5, "port open")
        await end.write(nmea(GGA))
        await async_wait_for(lambda: run.sink.values("fix") == [1], 5, "GGA")
        end.close()
        pty_pair.kill()
        await async_wait_for(lambda: run.component.state is State.DOWN, 5, "port down")
        await pty_pair.start()
        await async_wait_for(lambda: run.runner.connected, 5, "reopened")
        end = DeviceEnd(pty_pair.device)
        try:
            await end.write(nmea(GGA.replace(",1,08,", ",2,09,")))
            await async_wait_for(lambda: run.sink.values("fix") == [1, 2], 5, "resumed")
        finally:
            end.close()


def writable_config(port: str) -> dict[str, object]:
    config = sensor_config(port, interval_s=3600)
    device = config["devices"]["th1"]  # type: ignore[index]
    device["points"]["setpoint"] = {
        "request": "SP?",
        "writable": True,
        "write": "SET {value:.1f}",
        "write_ack": "^OK$",
    }
    device["parser"]["pattern"] = (
        r"(T=(?P<temperature>-?[\d.]+),H=(?P<humidity>[\d.]+))|(SP=(?P<setpoint>[\d.]+))"
    )
    device["parser"]["types"]["setpoint"] = "float"
    device["reply_match"] = "^(T=|SP=|OK|ERR)"
    return config


async def test_write_sends_the_command_and_completes_after_the_reply(pty_pair):
    device = Thermometer(21.5)
    async with (
        instrument(pty_pair.device, device, device.log) as end,
        running(writable_config(str(pty_pair.gateway))) as run,
    ):
        await async_wait_for(lambda: 20.0 in run.sink.values("setpoint"), 5, "initial poll")
        write = asyncio.create_task(run.runner.write("th1", "setpoint", 22.5))
        await async_wait_for(lambda: b"SET 22.5\r\n" in device.log, 5, "command on the wire")
        # a line that is no reply reaches the session after the command: the write waits on
        counters = run.driver.counters
        frames, undecodable = counters.frames, counters.undecodable
        await end.write(b"BOOT v1.2\n")
        await async_wait_for(lambda: counters.frames > frames, 5, "the stray line read")
        assert not write.done()  # waits for the device's reply
        assert counters.undecodable == undecodable + 1  # offered to the write, not its reply
        await end.write(b"OK\n")
        await asyncio.wait_for(write, 5)
        readings = await run.runner.read("th1", ["setpoint"])
        assert [r.value for r in readings] == [22.5]

        with pytest.raises(WriteRejected, match="ERR range"):
            await run.runner.write("th1", "setpoint", 99)
        assert device.setpoint == 22.5


def shipped_connection(name: str, port: str) -> dict[str, object]:
    """A shipped example's connection, moved to the test pty (a pty takes no RS-485 mode)."""
    settings = load_settings(ROOT / "config" / name)
    (connection,) = settings.connections.values()
    data = connection.model_dump()
    data.update(port=port, rs485={"enabled": False}, parity="none")
    return data


async def test_shipped_line_sensor_example_polls_and_writes(pty_pair):
    device = Thermometer(19.25)
    device_config = shipped_connection("serial-line-sensor.example.yaml", str(pty_pair.gateway))
    device_config["devices"]["climate-1"]["interval_s"] = 0.1  # type: ignore[index]
    async with (
        instrument(pty_pair.device, device, device.log) as end,
        running(device_config) as run,
    ):
        await async_wait_for(lambda: 19.25 in run.sink.values("temperature"), 5, "reading")
        await async_wait_for(lambda: 20.0 in run.sink.values("setpoint"), 5, "setpoint")
        write = asyncio.create_task(run.runner.write("climate-1", "setpoint", 21))
        await async_wait_for(lambda: b"SET 21.0\r\n" in device.log, 5, "command")
        await end.write(b"OK\n")
        await asyncio.wait_for(write, 5)


async def test_shipped_gps_example_streams_positions(pty_pair):
    config = shipped_connection("serial-nmea-gps.example.yaml", str(pty_pair.gateway))
    async with running(config) as run:
        end = DeviceEnd(pty_pair.device)
        try:
            await async_wait_for(lambda: run.runner.connected, 5, "port open")
            await end.write(nmea(GGA) + nmea("GPGSV,1,1,00") + nmea(RMC))
            await async_wait_for(lambda: run.sink.values("course") == [84.4], 5, "RMC")
            assert run.sink.values("latitude") == [
                pytest.approx(48.1173),
                pytest.approx(48.1173333),
            ]
            assert run.sink.values("altitude") == [545.4]
            assert run.driver.counters.undecodable == 1  # GSV is not selected
        finally:
            end.close()


async def test_a_port_missing_at_start_reports_devices_down_until_it_appears(pty_pair):
    pty_pair.kill()
    device = Thermometer(17.0)
    async with running(sensor_config(str(pty_pair.gateway))) as run:
        await async_wait_for(lambda: run.sink.device_states("th1") == [False], 5, "down")
        assert "cannot open" in run.sink.states[0][2]
        await pty_pair.start()
        async with instrument(pty_pair.device, device, device.log):
            await async_wait_for(lambda: 17.0 in run.sink.values("temperature"), 5, "reading")
            assert run.sink.device_states("th1") == [False, True]
