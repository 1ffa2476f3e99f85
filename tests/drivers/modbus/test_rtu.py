"""The Modbus driver over RTU: a pymodbus serial server on one end of a socat pty pair."""

from __future__ import annotations

import asyncio
import math

import pytest

from gatewayd.model import Availability
from tests.drivers.modbus.harness import CountingSink, connection, running
from tests.drivers.modbus.sim import Requests, pty_pair, rtu_server, split_device, tcp_server
from tests.helpers import async_wait_for, free_port

pytestmark = pytest.mark.timeout(60)


def _rtu(port: str, devices: dict[str, object], **extra: object) -> object:
    return connection(
        {"driver": "modbus-rtu", "port": port, "baudrate": 115200, "devices": devices, **extra}
    )


async def test_values_and_write_read_back_over_rtu(tmp_path):
    req = Requests()
    points = {
        "voltage": {"address": 0, "scale": 0.1, "unit": "V"},
        "energy": {"address": 1, "type": "float32", "word_order": "little"},
        "setpoint": {"address": 10, "type": "int16", "writable": True},
        "relay": {"table": "coil", "address": 3, "writable": True},
    }
    sink = CountingSink()
    with pty_pair(tmp_path) as (client_end, server_end):
        async with rtu_server([split_device(7, req)], server_end, req) as server:
            await server.context.async_setValues(7, 16, 0, [2305, 0x0000, 0x4148])  # 12.5 CDAB
            config = _rtu(client_end, {"m": {"unit_id": 7, "interval_s": 0.05, "points": points}})
            async with running(config, sink) as runner:
                await async_wait_for(lambda: len(sink.values) == 4, 5, "values over RTU")
                assert sink.value("m", "voltage") == pytest.approx(230.5)
                assert sink.value("m", "energy") == 12.5
                assert sink.value("m", "relay") is False
                await runner.write("m", "setpoint", -40)
                await runner.write("m", "relay", True)
                back = await runner.read("m", ["setpoint", "relay"])
                assert [r.value for r in back] == [-40, True]
                assert await server.context.async_getValues(7, 3, 10, 1) == [0x10000 - 40]


async def test_dead_unit_on_a_shared_bus_costs_bounded_time(tmp_path):
    """5 units on one bus, unit 5 never answers: the breaker keeps its requests rare.

    Counted against the live units' polls, not a clock: the rate the live units keep is
    measured by `benchmarks modbus_poll --faults` (target >= 90 %).
    """
    req = Requests()
    req.silent.add(5)
    polls, breaker_initial_s = 16, 1.0
    devices = {
        f"u{unit}": {"unit_id": unit, "interval_s": 0.25, "points": {"v": {"address": 0}}}
        for unit in range(1, 6)
    }
    config = _rtu(
        "",
        devices,
        timeout_s=0.1,
        retries=1,
        breaker_failures=2,
        breaker_initial_s=breaker_initial_s,
        breaker_max_s=4.0,
    )
    sink = CountingSink()
    loop = asyncio.get_running_loop()

    def live_polls() -> int:
        return min(sink.batches.get(f"u{unit}", 0) for unit in range(1, 5))

    with pty_pair(tmp_path) as (client_end, server_end):
        units = [split_device(u, req) for u in range(1, 6)]
        async with rtu_server(units, server_end, req):
            config = config.model_copy(update={"port": client_end})  # type: ignore[attr-defined]
            async with running(config, sink):
                await async_wait_for(lambda: live_polls() >= 1, 5, "four live units")
                start, dead_before, live_before = loop.time(), req.count(5), live_polls()
                await async_wait_for(
                    lambda: live_polls() >= live_before + polls, 30, f"{polls} polls of each"
                )
                elapsed = loop.time() - start
                dead_requests = req.count(5) - dead_before
                # The breaker never gives up: a probe follows the pause (4 s at most here).
                probed = req.count(5)
                await async_wait_for(lambda: req.count(5) > probed, 6, "a probe after the pause")
    assert ("c", "u5") in sink.devices
    assert sink.devices[("c", "u5")][0] is Availability.OFFLINE
    # Without the breaker the dead unit takes 2 requests (a try and a retry) at each of its
    # ticks: 32 while each live unit is polled 16 times. With it: the first 2 failed polls,
    # then one poll (2 tries) after each pause, and a pause lasts at least breaker_initial_s.
    probes = math.ceil(elapsed / breaker_initial_s)
    assert dead_requests <= 2 * (2 + probes), (dead_requests, f"{elapsed:.1f} s")
    assert dead_requests < 2 * polls


async def test_rtu_over_tcp_converter_with_a_silent_unit():
    req = Requests()
    req.silent.add(9)
    port = free_port()
    config = connection(
        {
            "driver": "modbus-rtu-tcp",
            "host": "127.0.0.1",
            "port": port,
            "timeout_s": 0.1,
            "devices": {
                "conv": {},
                "a": {"parent": "conv", "unit_id": 2, "interval_s": 0.05,
                      "points": {"v": {"address": 3, "type": "int32"}}},
                "dead": {"parent": "conv", "unit_id": 9, "interval_s": 0.05,
                         "points": {"v": {"address": 0}}},
            },
        }
    )  # fmt: skip
    sink = CountingSink()
    async with tcp_server([split_device(2, req), split_device(9, req)], port, req, rtu=True) as srv:
        await srv.context.async_setValues(2, 16, 3, [0xFFFF, 0xFFFE])
        async with running(config, sink) as runner:
            await async_wait_for(lambda: ("c", "dead") in sink.devices, 5, "dead unit noticed")
            await async_wait_for(lambda: sink.value("a", "v") == -2, 5, "value over RTU/TCP")
            assert sink.devices[("c", "conv")] == (Availability.ONLINE, "")
            assert sink.devices[("c", "a")] == (Availability.ONLINE, "")
            assert sink.devices[("c", "dead")][0] is Availability.OFFLINE
            assert runner.connected  # a silent unit does not drop the converter's socket
