"""The Modbus driver through the real ConnectionRunner against a pymodbus TCP server."""

from __future__ import annotations

import asyncio
import contextlib
import math
from datetime import UTC, datetime, timedelta

import pytest
from pymodbus.constants import ExcCodes

from drivers.modbus import ModbusDriver
from drivers.modbus.codec import encode
from drivers.modbus.config import ModbusPoint
from gatewayd.backoff import Backoff
from gatewayd.bridge.runner import ConnectionRunner
from gatewayd.errors import WriteRejected
from gatewayd.health import Health
from gatewayd.model import Availability, Quality
from tests.drivers.modbus.harness import CountingSink, connection, running
from tests.drivers.modbus.sim import Requests, split_device, tcp_server
from tests.helpers import async_wait_for, free_port

POINTS = {
    "voltage": {"address": 0, "type": "uint16", "scale": 0.1, "unit": "V"},
    "temp": {"address": 1, "type": "int16", "scale": 0.01, "offset": -1.0},
    "energy": {"address": 2, "type": "uint32", "word_order": "little"},
    "power": {"address": 4, "type": "float32", "byte_order": "little", "writable": True},
    "big": {"address": 6, "type": "int64"},
    "precise": {"address": 10, "type": "float64", "writable": True},
    "name": {"address": 14, "type": "string", "length": 4},
    "running": {"address": 18, "type": "bool"},
    "alarm": {"address": 19, "type": "bit", "bit": 3, "writable": True},
    "counter": {"address": 20, "type": "int32", "writable": True},
    "setpoint": {"address": 22, "type": "uint16", "scale": 0.5, "writable": True},
    "flow": {"table": "input", "address": 0, "type": "uint16"},
    "relay": {"table": "coil", "address": 5, "writable": True},
    "door": {"table": "discrete", "address": 2},
}


def _regs(point: dict[str, object], value: object) -> list[int]:
    return encode(ModbusPoint.model_validate({"id": "x", **point}), value)  # type: ignore[arg-type]


def _config(port: int, **device: object) -> object:
    return connection(
        {
            "driver": "modbus-tcp",
            "host": "127.0.0.1",
            "port": port,
            "timeout_s": 0.5,
            "devices": {"meter": {"unit_id": 1, "interval_s": 0.05, "points": POINTS, **device}},
        }
    )


async def _load(server: object) -> None:
    ctx = server.context  # type: ignore[attr-defined]
    writes = {
        0: [2301],
        1: _regs(POINTS["temp"], -150),
        2: _regs(POINTS["energy"], 70000),
        4: _regs(POINTS["power"], 1.5),
        6: _regs(POINTS["big"], -(2**40)),
        10: _regs(POINTS["precise"], math.pi),
        14: _regs(POINTS["name"], "EM24"),
        18: [1],
        19: [0b1000],
        20: _regs(POINTS["counter"], -7),
        22: [84],
    }
    for address, values in writes.items():
        await ctx.async_setValues(1, 16, address, values)
    await ctx.async_setValues(1, 4, 0, [512])  # input register
    await ctx.async_setValues(1, 15, 5, [True])
    await ctx.async_setValues(1, 2, 2, [True])


async def test_values_arrive_typed_scaled_and_timestamped():
    port, req = free_port(), Requests()
    sink = CountingSink()
    async with tcp_server([split_device(1, req)], port) as server:
        await _load(server)
        before = datetime.now(UTC)
        async with running(_config(port), sink):
            await async_wait_for(lambda: len(sink.values) == len(POINTS), 5, "all points")
    v = sink.values
    assert v["c/meter/voltage"].value == pytest.approx(230.1)
    assert v["c/meter/voltage"].unit == "V"
    assert v["c/meter/temp"].value == pytest.approx(-2.5)  # -150 * 0.01 - 1
    assert v["c/meter/energy"].value == 70000
    assert v["c/meter/power"].value == pytest.approx(1.5)
    assert v["c/meter/big"].value == -(2**40)
    assert v["c/meter/precise"].value == math.pi
    assert v["c/meter/name"].value == "EM24"
    assert v["c/meter/running"].value is True
    assert v["c/meter/alarm"].value is True
    assert v["c/meter/counter"].value == -7
    assert v["c/meter/setpoint"].value == 42.0
    assert v["c/meter/flow"].value == 512
    assert v["c/meter/relay"].value is True
    assert v["c/meter/door"].value is True
    assert isinstance(v["c/meter/energy"].value, int)
    assert all(r.quality is Quality.GOOD for r in v.values())
    for reading in v.values():
        assert before <= reading.at <= datetime.now(UTC) + timedelta(seconds=1)
        assert reading.at.tzinfo is not None


async def test_fifty_contiguous_registers_are_one_request():
    port, req = free_port(), Requests()
    points = {f"r{i}": {"address": 100 + i} for i in range(50)}
    config = connection(
        {
            "driver": "modbus-tcp",
            "host": "127.0.0.1",
            "port": port,
            "devices": {"m": {"unit_id": 1, "interval_s": 30, "points": points}},
        }
    )
    sink = CountingSink()
    async with tcp_server([split_device(1, req)], port) as server:
        await server.context.async_setValues(1, 16, 100, list(range(1000, 1050)))
        req.seen.clear()
        async with running(config, sink) as runner:
            await async_wait_for(lambda: sink.batches.get("m") == 1, 5, "first poll")
            readings = await runner.read("m", list(points))
    assert req.seen == [(1, 3, 100, 50), (1, 3, 100, 50)]  # one poll, one read: one request each
    assert [r.value for r in readings] == list(range(1000, 1050))


async def test_any_request_order_gets_each_point_its_own_value():
    """Plain registers copied as slices must still land under the right point names."""
    port, req = free_port(), Requests()
    points: dict[str, dict[str, object]] = {f"r{i}": {"address": 100 + i} for i in range(10)}
    points["f"] = {"address": 110, "type": "float32"}
    points.update({f"s{i}": {"address": 112 + i} for i in range(5)})
    points["le"] = {"address": 117, "type": "uint16", "byte_order": "little"}
    config = connection(
        {
            "driver": "modbus-tcp",
            "host": "127.0.0.1",
            "port": port,
            "devices": {"m": {"unit_id": 1, "interval_s": 30, "points": points}},
        }
    )
    registers = [1000 + i for i in range(10)] + _regs(points["f"], 2.5)
    registers += [2000 + i for i in range(5)] + [0x0102]
    order = ["r5", "r6", "r7", "f", "r0", "r1", "s3", "s4", "le", "r2", "r9", "r8", "s0", "r3"]
    order += ["s1", "s2", "r4"]
    sink = CountingSink()
    async with tcp_server([split_device(1, req)], port) as server:
        await server.context.async_setValues(1, 16, 100, registers)
        async with running(config, sink) as runner:
            readings = await runner.read("m", order)
            again = await runner.read("m", order)  # the cached plan gives the same answer
    expected = {f"r{i}": 1000 + i for i in range(10)} | {f"s{i}": 2000 + i for i in range(5)}
    expected |= {"f": 2.5, "le": 0x0201}
    assert [r.ref.point for r in readings] == order
    assert {r.ref.point: r.value for r in readings} == expected
    assert [r.value for r in again] == [r.value for r in readings]


async def test_writes_single_and_multiple_with_read_back():
    port, req = free_port(), Requests()
    async with tcp_server([split_device(1, req)], port) as server:
        await _load(server)
        req.seen.clear()
        async with running(_config(port, interval_s=30)) as runner:
            await runner.write("meter", "setpoint", 21.5)  # FC 6, scale 0.5 -> raw 43
            await runner.write("meter", "counter", -123456)  # FC 16, 2 registers
            await runner.write("meter", "precise", 2.5)  # FC 16, 4 registers
            await runner.write("meter", "power", -0.25)  # byte-swapped float32
            await runner.write("meter", "relay", False)  # FC 5
            await runner.write("meter", "alarm", False)  # read-modify-write of bit 3
            back = await runner.read(
                "meter", ["setpoint", "counter", "precise", "power", "relay", "alarm"]
            )
            assert [r.value for r in back] == [21.5, -123456, 2.5, -0.25, False, False]
            assert await server.context.async_getValues(1, 3, 22, 1) == [43]
            assert await server.context.async_getValues(1, 3, 19, 1) == [0]
    writes = {(fc, address, count) for _, fc, address, count in req.seen if fc in {5, 6, 16}}
    # FC 6 for one register, FC 16 for two and four, FC 5 for the coil; the bit point is a
    # read (FC 3) then a write (FC 6) of its register.
    assert writes == {(6, 22, 1), (16, 20, 2), (16, 10, 4), (16, 4, 2), (5, 5, 1), (6, 19, 1)}
    assert (1, 3, 19, 1) in req.seen


async def test_refused_write_is_write_rejected_and_not_retried():
    port, req = free_port(), Requests()
    req.refuse[(1, 6)] = ExcCodes.ILLEGAL_VALUE
    async with tcp_server([split_device(1, req)], port) as server:
        await _load(server)
        req.seen.clear()
        async with running(_config(port, interval_s=30, retries=3)) as runner:
            with pytest.raises(WriteRejected, match=r"exception 3 \(illegal data value\)"):
                await runner.write("meter", "setpoint", 30)
            with pytest.raises(WriteRejected, match="outside uint16"):
                await runner.write("meter", "setpoint", 1e6)
            with pytest.raises(WriteRejected, match="expected a number"):
                await runner.write("meter", "counter", "ten")
    assert req.count(1, 6) == 1  # refused once, never retried


async def test_read_of_unmapped_register_makes_device_unavailable():
    port, req = free_port(), Requests()
    sink = CountingSink()
    config = connection(
        {
            "driver": "modbus-tcp",
            "host": "127.0.0.1",
            "port": port,
            "retries": 0,
            "devices": {"m": {"interval_s": 0.05, "points": {"x": {"address": 5000}}}},
        }
    )
    async with tcp_server([split_device(1, req)], port), running(config, sink):
        await async_wait_for(lambda: ("c", "m") in sink.devices, 5, "availability")
    state, reason = sink.devices[("c", "m")]
    assert state is Availability.OFFLINE
    assert "exception 2 (illegal data address)" in reason


async def test_unit_scan_finds_the_units_that_answer():
    port, req = free_port(), Requests()
    req.silent.add(3)
    devices = [split_device(1, req), split_device(2, req), split_device(3, req)]
    async with tcp_server(devices, port, req), running(_config(port, interval_s=30)) as runner:
        found = await runner.exclusive(
            "meter", lambda session: session.scan(range(1, 4), timeout_s=0.1)
        )
    assert found == [1, 2]


async def test_connection_refused_then_server_appears():
    """And a device with no points (a converter) is up exactly while the link is."""
    port, req = free_port(), Requests()
    config = connection(
        {
            "driver": "modbus-tcp",
            "host": "127.0.0.1",
            "port": port,
            "devices": {
                "gw": {"name": "converter"},
                "meter": {"parent": "gw", "interval_s": 0.05, "points": POINTS},
            },
        }
    )
    sink = CountingSink()
    runner = ConnectionRunner(
        "c", config, ModbusDriver(config), sink, Health().component("c"),
        backoff=Backoff(initial_s=0.05, max_s=0.1),
    )  # fmt: skip
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.sleep(0)
        assert not runner.connected
        async with tcp_server([split_device(1, req)], port) as server:
            await _load(server)
            await async_wait_for(lambda: "c/meter/voltage" in sink.values, 5, "values")
            assert sink.devices[("c", "gw")] == (Availability.ONLINE, "")
        await async_wait_for(lambda: not runner.connected, 5, "connection lost noticed")
        await async_wait_for(
            lambda: sink.devices[("c", "gw")][0] is Availability.ABNORMAL, 5, "converter down"
        )
        assert sink.devices[("c", "meter")][0] is Availability.ABNORMAL
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_write_confirmed_returns_the_read_back():
    port, req = free_port(), Requests()
    async with tcp_server([split_device(1, req)], port) as server:
        await _load(server)
        req.seen.clear()
        async with running(_config(port, interval_s=30)) as runner:
            reading = await runner.write_confirmed("meter", "counter", 99)
    assert reading.value == 99
    assert reading.ref.point == "counter"
    write_at = req.seen.index((1, 16, 20, 2))
    assert (1, 3, 20, 2) in req.seen[write_at + 1 :]  # the read-back came after the write


async def test_write_confirmed_returns_what_a_clamping_register_holds():
    port, req = free_port(), Requests()
    req.clamp[1, 22] = (0, 100)  # the unit keeps its setpoint register within 0..100 (0..50)
    async with tcp_server([split_device(1, req)], port) as server:
        await _load(server)
        async with running(_config(port, interval_s=30)) as runner:
            reading = await runner.write_confirmed("meter", "setpoint", 80.0)  # raw 160
            assert await server.context.async_getValues(1, 3, 22, 1) == [100]
    assert reading.value == 50.0


async def test_a_slow_device_is_polled_one_request_at_a_time_and_not_backlogged():
    """Replies slower than the interval: polls go on, one at a time, missed ticks skipped.

    That the one owed poll runs at once is the agenda's (tests/unit/test_agenda.py, on given
    times); how fast a slow device is polled is measured by `benchmarks modbus_poll --faults`.
    """
    port, req = free_port(), Requests()
    in_flight = most = 0

    async def slow(*args: object) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.2)
        finally:
            in_flight -= 1

    device = split_device(1, req)
    device.action = slow  # type: ignore[assignment]
    sink = CountingSink()
    config = connection(
        {
            "driver": "modbus-tcp",
            "host": "127.0.0.1",
            "port": port,
            "devices": {"m": {"interval_s": 0.1, "points": {"v": {"address": 0}}}},
        }
    )
    async with tcp_server([device], port):
        async with running(config, sink) as runner:
            await async_wait_for(lambda: sink.batches.get("m") == 9, 20, "nine polls")
        await async_wait_for(lambda: in_flight == 0, 5, "simulator idle")
    assert most == 1  # never a second request while one is unanswered
    assert runner.polls_skipped > 0  # ticks beyond the one owed poll were dropped
