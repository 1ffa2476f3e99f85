"""The BLE driver under the real ConnectionRunner, over bleak's API and emulated radios."""

from __future__ import annotations

import asyncio
import struct

import pytest
from bleak.exc import BleakError

from gatewayd.errors import DeviceUnavailable, WriteRejected
from tests.drivers.ble.conftest import connection, running
from tests.drivers.ble.radio import Peripheral, ad_structure

SERVICE = "a5e1f000-0000-4000-8000-00000000abcd"
TEMP = "a5e1f001-0000-4000-8000-00000000abcd"
SETPOINT = "a5e1f002-0000-4000-8000-00000000abcd"
COMMAND = "a5e1f003-0000-4000-8000-00000000abcd"


def bthome(packet_id: int, temperature_c: float, humidity_pct: float) -> bytes:
    """A BTHome v2 advertisement: flags, name, service data 0xFCD2."""
    body = bytes([0x40, 0x00, packet_id, 0x02]) + struct.pack("<h", round(temperature_c * 100))
    body += bytes([0x03]) + struct.pack("<H", round(humidity_pct * 100))
    return (
        ad_structure(0x01, b"\x06")
        + ad_structure(0x09, b"TH")
        + ad_structure(0x16, b"\xd2\xfc" + body)
    )


def bthome_device(address: str) -> dict[str, object]:
    return {
        "address": address,
        "offline_after_s": 1.5,
        "points": {
            "temperature": {"source": "bthome", "measurement": "temperature", "unit": "°C"},
            "humidity": {"source": "bthome", "measurement": "humidity", "unit": "%"},
            "rssi": {"source": "rssi", "unit": "dBm"},
        },
    }


def gatt_device(address: str, **extra: object) -> dict[str, object]:
    return {
        "address": address,
        "interval_s": 0.3,
        "points": {
            "temperature": {
                "source": "gatt",
                "characteristic": TEMP,
                "field": {"type": "s16"},
                "scale": 0.01,
                "notify": True,
            },
            "setpoint": {
                "source": "gatt",
                "characteristic": SETPOINT,
                "field": "s16",
                "scale": 0.1,
                "writable": True,
            },
            **extra,
        },
    }


async def gatt_sensor(world, address: str, temperature: float = 20.0) -> Peripheral:
    sensor = Peripheral(world, address, "thermo")
    sensor.add_characteristic(
        SERVICE, TEMP, struct.pack("<h", round(temperature * 100)), notify=True
    )
    sensor.add_characteristic(
        SERVICE,
        SETPOINT,
        struct.pack("<h", 200),
        write=True,
        refuse=lambda data: struct.unpack("<h", data)[0] > 300,  # above 30 °C
    )
    sensor.add_characteristic(SERVICE, COMMAND, b"\x00", read=False, write_without_response=True)
    await sensor.start()
    return sensor


async def notify_until(sensor: Peripheral, value: float, condition, timeout_s: float = 10.0):
    """Notify a temperature repeatedly until the gateway has it (subscriptions take a moment)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await sensor.notify(TEMP, struct.pack("<h", round(value * 100)))
            await asyncio.sleep(0.05)


async def test_bthome_advertiser_yields_temperature_and_humidity(world, adapter):
    sensor = Peripheral(world, "F0:00:00:00:00:01", "TH")
    await sensor.start(bthome(1, 21.5, 45.67))
    config = connection({"th": bthome_device("F0:00:00:00:00:01")})
    async with running(config, adapter) as (_, sink, _driver):
        await sink.until(lambda: sink.values("th", "temperature") and sink.values("th", "rssi"))
        assert sink.values("th", "temperature")[0] == 21.5
        assert sink.values("th", "humidity")[0] == 45.67
        assert isinstance(sink.values("th", "rssi")[0], int)
        assert sink.log[0].unit == "°C"
        assert sink.up("th") is True

        await sensor.set_advertising_data(bthome(2, -3.25, 80.0))
        await sink.until(lambda: -3.25 in sink.values("th", "temperature"))
        assert 80.0 in sink.values("th", "humidity")


async def test_silent_advertiser_goes_offline_and_comes_back(world, adapter):
    sensor = Peripheral(world, "F0:00:00:00:00:01", "TH")
    await sensor.start(bthome(1, 21.5, 45.67))
    config = connection({"th": bthome_device("F0:00:00:00:00:01")})
    async with running(config, adapter) as (_, sink, _driver):
        await sink.until(lambda: sink.up("th") is True)
        await sensor.device.stop_advertising()
        await sink.until(lambda: sink.up("th") is False, timeout_s=5)
        assert "no advertisement for 1.5 s" in sink.states[-1][2]
        await sensor.set_advertising_data(bthome(3, 22.0, 40.0))
        await sink.until(lambda: sink.up("th") is True and 22.0 in sink.values("th", "temperature"))


async def test_gatt_notifications_resume_after_the_peripheral_drops_the_link(world, adapter):
    sensor = await gatt_sensor(world, "F0:00:00:00:00:02")
    config = connection({"thermo": gatt_device("F0:00:00:00:00:02")})
    async with running(config, adapter) as (_, sink, _driver):
        await notify_until(sensor, 21.25, lambda: 21.25 in sink.values("thermo", "temperature"))
        before = sensor.connect_count

        await sensor.drop_links()
        await sink.until(lambda: sensor.connect_count == before + 1)  # rescanned, reconnected
        await notify_until(sensor, 23.5, lambda: 23.5 in sink.values("thermo", "temperature"))
        assert sensor.connect_count == before + 1  # one reconnect, notifications re-enabled


async def test_write_changes_the_characteristic_and_reads_back(world, adapter):
    sensor = await gatt_sensor(world, "F0:00:00:00:00:02")
    command = {
        "command": {
            "source": "gatt",
            "characteristic": COMMAND,
            "field": "u8",
            "writable": True,
            "readable": False,
            "write_response": False,
        }
    }
    config = connection({"thermo": gatt_device("F0:00:00:00:00:02", **command)})
    async with running(config, adapter) as (runner, sink, _driver):
        await sink.until(lambda: sink.values("thermo", "setpoint"))  # polled
        assert sink.values("thermo", "setpoint")[0] == 20.0

        await runner.write("thermo", "setpoint", 22.5)  # engineering units: the runner undoes scale
        assert sensor.values[SETPOINT] == struct.pack("<h", 225)
        (reading,) = await runner.read("thermo", ["setpoint"])
        assert reading.value == 22.5
        await sink.until(lambda: 22.5 in sink.values("thermo", "setpoint"))

        await runner.write("thermo", "command", 7)  # without response
        await sink.until(lambda: (COMMAND, b"\x07") in sensor.writes)

        with pytest.raises(WriteRejected, match="out of range for s16"):
            await runner.write("thermo", "setpoint", 4000.0)
        with pytest.raises(WriteRejected, match="the device refused 350"):
            await runner.write("thermo", "setpoint", 35.0)
        with pytest.raises(WriteRejected, match="thermo/temperature is not writable"):
            await runner.write("thermo", "temperature", 1)
        assert sensor.values[SETPOINT] == struct.pack("<h", 225)
        assert sink.up("thermo") is True  # refusals are answers, not outages


async def test_more_notifying_devices_than_slots_take_turns(world, adapter):
    addresses = [f"F0:00:00:00:01:0{i}" for i in range(3)]
    sensors = [await gatt_sensor(world, a) for a in addresses]
    devices = {f"s{i}": gatt_device(a) for i, a in enumerate(addresses)}
    for device in devices.values():
        del device["points"]["setpoint"]  # type: ignore[attr-defined]  # notifications only
    config = connection(devices, slots=1, turn_s=0.4)

    async def keep_notifying() -> None:
        n = 0
        while True:
            n += 1
            for i, sensor in enumerate(sensors):
                await sensor.notify(TEMP, struct.pack("<h", 1000 * (i + 1) + n))
            await asyncio.sleep(0.05)

    async with running(config, adapter) as (_, sink, _driver), asyncio.TaskGroup() as tg:
        notifier = tg.create_task(keep_notifying())
        await sink.until(
            lambda: all(
                any(
                    isinstance(v, float) and v >= 10 * (i + 1)
                    for v in sink.values(f"s{i}", "temperature")
                )
                for i in range(3)
            ),
            timeout_s=15,
        )
        # every device was served, one connection at a time, and turns went round again
        await sink.until(lambda: all(s.connect_count >= 2 for s in sensors), timeout_s=15)
        notifier.cancel()
    assert world.most_links == 1


async def test_more_polled_devices_than_slots_are_all_read(world, adapter):
    addresses = [f"F0:00:00:00:02:0{i}" for i in range(3)]
    sensors = [await gatt_sensor(world, a, temperature=10.0 + i) for i, a in enumerate(addresses)]
    devices = {}
    for i, address in enumerate(addresses):
        device = gatt_device(address)
        device["points"]["temperature"]["notify"] = False  # type: ignore[index]
        devices[f"p{i}"] = device
    config = connection(devices, slots=1)
    async with running(config, adapter) as (_, sink, _driver):
        await sink.until(
            lambda: all(len(sink.values(f"p{i}", "temperature")) >= 2 for i in range(3)),
            timeout_s=15,
        )
    assert [sink.values(f"p{i}", "temperature")[0] for i in range(3)] == [10.0, 11.0, 12.0]
    assert world.most_links == 1
    assert all(s.connect_count >= 2 for s in sensors)


async def test_absent_device_does_not_delay_the_others(world, adapter):
    th = Peripheral(world, "F0:00:00:00:00:01", "TH")
    await th.start(bthome(1, 21.5, 45.67))
    notifying = await gatt_sensor(world, "F0:00:00:00:00:02")
    await gatt_sensor(world, "F0:00:00:00:00:03", temperature=30.0)
    polled_device = gatt_device("F0:00:00:00:00:03")
    polled_device["points"]["temperature"]["notify"] = False  # type: ignore[index]
    ghost_polled = gatt_device("F0:00:00:00:00:0E")
    ghost_polled["points"]["temperature"]["notify"] = False  # type: ignore[index]
    config = connection(
        {
            "ghost": gatt_device("F0:00:00:00:00:0F"),  # configured, never appears
            "ghost_polled": ghost_polled,
            "th": bthome_device("F0:00:00:00:00:01"),
            "notifying": gatt_device("F0:00:00:00:00:02"),
            "polled": polled_device,
        },
        scan_timeout_s=2.0,
    )
    loop = asyncio.get_running_loop()
    async with running(config, adapter) as (_, sink, _driver):
        started = loop.time()
        # pushed values do not queue behind anyone
        await sink.until(lambda: sink.values("th", "temperature"), timeout_s=1.5)
        await notify_until(
            notifying, 19.5, lambda: 19.5 in sink.values("notifying", "temperature"), 1.5
        )
        assert loop.time() - started < 1.5  # inside one scan_timeout_s of the ghosts
        # polls share one queue: the ghosts cost one scan_timeout_s at start-up, together
        await sink.until(lambda: sink.values("polled", "temperature"), timeout_s=3.0)
        await sink.until(
            lambda: sink.up("ghost") is False and sink.up("ghost_polled") is False, timeout_s=5
        )
        assert "not advertising" in next(r for d, _, r in sink.states if d == "ghost")
        # the polled device keeps its pace while the ghosts keep failing
        count = len(sink.values("polled", "temperature"))
        await sink.until(lambda: len(sink.values("polled", "temperature")) >= count + 5, 5)


async def test_adapter_loss_ends_the_session_and_the_runner_reopens_it(world, adapter):
    scanner, client = adapter

    class Flaky(scanner):  # type: ignore[misc, valid-type]
        broken = False

        async def start(self) -> None:
            if Flaky.broken:
                raise BleakError("adapter hci0 vanished")
            await super().start()

    sensor = await gatt_sensor(world, "F0:00:00:00:00:02")
    device = gatt_device("F0:00:00:00:00:02")
    del device["points"]["temperature"]  # type: ignore[attr-defined]  # polled setpoint only
    config = connection({"thermo": device})
    async with running(config, (Flaky, client)) as (runner, sink, _driver):
        await sink.until(lambda: sink.values("thermo", "setpoint"))
        Flaky.broken = True  # the next connect pauses the scan, which cannot resume
        await sink.until(lambda: not runner.connected)
        count = len(sink.values("thermo", "setpoint"))
        Flaky.broken = False
        await sink.until(lambda: len(sink.values("thermo", "setpoint")) > count)
        assert runner.connected
    assert sensor.connect_count >= 2


async def test_a_device_that_left_is_not_connected_to_until_heard_again(world, adapter):
    sensor = await gatt_sensor(world, "F0:00:00:00:00:03", temperature=30.0)
    device = gatt_device("F0:00:00:00:00:03")
    device["points"]["temperature"]["notify"] = False  # type: ignore[index]
    config = connection({"polled": device})
    async with running(config, adapter) as (runner, sink, _driver):
        await sink.until(lambda: sink.values("polled", "temperature"))
        await sensor.device.stop_advertising()  # gone (it advertises only when not connected)
        await sink.until(lambda: sink.up("polled") is False, timeout_s=5)
        # At most one attempt went to an advertisement heard just before it left; after
        # that, attempts need a newer one and fail at once instead of trying to connect.
        messages: list[str] = []
        async with asyncio.timeout(5):
            while not any("not advertising" in m for m in messages):
                try:
                    await runner.read("polled", ["temperature"])
                except DeviceUnavailable as exc:
                    messages.append(str(exc))
                await asyncio.sleep(0.05)
        assert not any("connect failed:" in m for m in messages), messages
        connects = sensor.connect_count
        count = len(sink.values("polled", "temperature"))
        await sensor.set_advertising_data(ad_structure(0x09, b"thermo"))  # back
        await sink.until(lambda: len(sink.values("polled", "temperature")) > count, timeout_s=5)
        assert sink.up("polled") is True
        assert sensor.connect_count > connects
