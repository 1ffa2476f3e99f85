"""The session directly over a pty: binary frames, shared ports, stream timeouts, commands."""

from __future__ import annotations

import asyncio

import pytest

from drivers.serial import SerialConnection, SerialDriver
from drivers.serial.framing import DelimitedFraming, make_framer
from drivers.serial.parsers import checksum
from gatewayd.errors import DeviceUnavailable, WriteRejected
from tests.drivers.serial.ptys import DeviceEnd
from tests.helpers import async_wait_for

DELIMITED = {"type": "delimited", "start": "\x02", "end": "\x03", "escape": "\x10"}


def binary_config(port: str) -> SerialConnection:
    return SerialConnection.model_validate(
        {
            "driver": "serial",
            "port": port,
            "framing": DELIMITED,
            "devices": {
                "meter": {
                    "address": "\x07",
                    "request": "{address}R",
                    "timeout_s": 0.3,
                    "retries": 0,
                    "parser": {
                        "type": "struct",
                        "checksum": "xor8",
                        "fields": {
                            "addr": {"offset": 0, "format": "B"},
                            "energy": {"offset": 1, "format": ">I"},
                            "power": {"offset": 5, "format": "<h"},
                        },
                    },
                    "points": {"energy": {}, "power": {}, "addr": {}},
                }
            },
        }
    )


async def test_binary_request_response_with_escaping_and_checksum(pty_pair):
    config = binary_config(str(pty_pair.gateway))
    driver = SerialDriver(config)
    device = config.devices["meter"]
    wire = make_framer(DelimitedFraming.model_validate(DELIMITED))
    end = DeviceEnd(pty_pair.device)
    try:
        async with driver.connect() as session:
            read = asyncio.create_task(session.read(device, list(device.points.values())))
            request = await end.read_until(b"\x03")
            assert request == b"\x02\x07R\x03"
            body = (
                b"\x07" + (0x02030410).to_bytes(4, "big") + (-5).to_bytes(2, "little", signed=True)
            )
            bad = body[:-1] + b"\x00"
            await end.write(wire.encode(bad + checksum("xor8", body)))  # wrong checksum first
            await end.write(wire.encode(body + checksum("xor8", body)))
            samples = await asyncio.wait_for(read, 5)
            assert {s.point: s.value for s in samples} == {
                "addr": 7,
                "energy": 0x02030410,
                "power": -5,
            }
            assert driver.counters.bad_checksum == 1
            assert driver.counters.replies == 1

            with pytest.raises(DeviceUnavailable, match="no reply"):
                await session.read(device, [device.points["power"]])
            assert driver.counters.timeouts == 1
    finally:
        end.close()


def shared_config(port: str) -> SerialConnection:
    return SerialConnection.model_validate(
        {
            "driver": "serial",
            "port": port,
            "devices": {
                "a": {
                    "match": "^A:",
                    "stream_timeout_s": 0.3,
                    "parser": {"type": "regex", "pattern": r"A:(?P<v>\d+)", "types": {"v": "int"}},
                    "points": {"v": {"push": True}},
                },
                "b": {
                    "match": "^B:",
                    "parser": {"type": "regex", "pattern": r"B:(?P<v>\d+)", "types": {"v": "int"}},
                    "points": {
                        "v": {"push": True},
                        "reset": {
                            "push": True,
                            "writable": True,
                            "write": "B:RESET {value:d}",
                        },
                        "mode": {
                            "push": True,
                            "writable": True,
                            "write": "B:MODE {value}",
                            "write_ack": "^B:ACK",
                        },
                    },
                },
            },
        }
    )


async def test_shared_port_routes_frames_and_a_silent_stream_times_out(pty_pair):
    config = shared_config(str(pty_pair.gateway))
    driver = SerialDriver(config)
    a, b = config.devices["a"], config.devices["b"]
    end = DeviceEnd(pty_pair.device)
    try:
        async with driver.connect() as session:
            stream_a = session.watch(a, [a.points["v"]])
            stream_b = session.watch(b, [b.points["v"]])
            next_a = asyncio.ensure_future(anext(stream_a))
            next_b = asyncio.ensure_future(anext(stream_b))
            await end.write(b"B:2\nC:9\nA:1\n")
            assert (await asyncio.wait_for(next_a, 5)).value == 1
            assert (await asyncio.wait_for(next_b, 5)).value == 2
            assert driver.counters.streamed == 2
            assert driver.counters.unsolicited == 1  # C:9 belongs to nobody
            with pytest.raises(DeviceUnavailable, match=r"a: no frame for 0\.3 s"):
                await asyncio.wait_for(anext(stream_a), 5)
            await stream_a.aclose()
            await stream_b.aclose()
    finally:
        end.close()


async def test_commands_with_and_without_an_expected_reply(pty_pair):
    config = shared_config(str(pty_pair.gateway))
    driver = SerialDriver(config)
    b = config.devices["b"]
    end = DeviceEnd(pty_pair.device)
    try:
        async with driver.connect() as session:
            await session.write(b, b.points["reset"], 3)
            assert await end.read_until(b"\n") == b"B:RESET 3\n"

            with pytest.raises(WriteRejected, match="b/reset: template"):
                await session.write(b, b.points["reset"], 1.5)
            with pytest.raises(WriteRejected, match="no write command"):
                await session.write(b, b.points["v"], 1)

            write = asyncio.create_task(session.write(b, b.points["mode"], "eco"))
            assert await end.read_until(b"\n") == b"B:MODE eco\n"
            await end.write(b"B:ACK\n")
            await asyncio.wait_for(write, 5)

            write = asyncio.create_task(session.write(b, b.points["mode"], "turbo"))
            await end.read_until(b"\n")
            await end.write(b"B:NAK unknown mode\n")
            with pytest.raises(WriteRejected, match="replied 'B:NAK unknown mode'"):
                await asyncio.wait_for(write, 5)
    finally:
        end.close()


async def test_counters_snapshot_is_flat(pty_pair):
    driver = SerialDriver(shared_config(str(pty_pair.gateway)))
    end = DeviceEnd(pty_pair.device)
    try:
        async with driver.connect():
            await end.write(b"junk\n")
            await async_wait_for(lambda: driver.counters.frames == 1, 5, "a frame")
    finally:
        end.close()
    snapshot = driver.counters.snapshot()
    assert snapshot["frames"] == 1
    assert snapshot["unsolicited"] == 1
    assert snapshot["framing.garbage_bytes"] == 0
