"""Pure decoding: field specs, BTHome v2, advertisement points, configuration rules."""

from __future__ import annotations

import asyncio
import struct
from datetime import UTC, datetime

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from pydantic import ValidationError

from drivers.ble import bthome
from drivers.ble.config import BleConnection, BlePoint, normalise_uuid
from drivers.ble.decode import AdvertDecoder, Complaints
from drivers.ble.fields import FieldSpec
from drivers.ble.sightings import Sighting, Sightings
from drivers.ble.slots import SlotPool


@pytest.mark.parametrize(
    ("spec", "data", "value"),
    [
        ({"type": "u8"}, b"\xff", 255),
        ({"type": "s8"}, b"\xff", -1),
        ({"type": "s16"}, b"\x9c\xff", -100),
        ({"type": "u16", "byte_order": "big"}, b"\x01\x02", 258),
        ({"type": "u24", "offset": 1}, b"\x00\x01\x00\x01", 65537),
        ({"type": "s24"}, b"\xff\xff\xff", -1),
        ({"type": "u32"}, b"\x01\x00\x00\x00", 1),
        ({"type": "s64"}, b"\xfe" + b"\xff" * 7, -2),
        ({"type": "f16"}, struct.pack("<e", 1.5), 1.5),
        ({"type": "f32", "byte_order": "big"}, struct.pack(">f", -2.25), -2.25),
        ({"type": "f64"}, struct.pack("<d", 1e10), 1e10),
        ({"type": "bool"}, b"\x02", True),
        ({"type": "bool", "bit": 0}, b"\x02", False),
        ({"type": "bool", "bit": 1}, b"\x02", True),
        ({"type": "utf8", "offset": 1}, b"\x00abc\x00", "abc"),
        ({"type": "bytes", "offset": 1, "length": 2}, b"\x00\x01\x02\x03", b"\x01\x02"),
        ("s16", b"\x00\x80", -32768),
    ],
)
def test_field_decodes(spec, data, value):
    assert FieldSpec.model_validate(spec).decode(data) == value


def test_field_round_trips_through_encode():
    for kind, value in [("u8", 200), ("s16", -300), ("u24", 70000), ("f32", 0.5), ("bool", True)]:
        spec = FieldSpec(type=kind)  # type: ignore[arg-type]
        assert spec.decode(spec.encode(value)) == value
    assert FieldSpec(type="s16").encode(25.0) == b"\x19\x00"
    assert FieldSpec(type="utf8", length=4).encode("ab") == b"ab\x00\x00"
    assert FieldSpec(type="bytes").encode("0a0b") == b"\x0a\x0b"


@pytest.mark.parametrize(
    ("kind", "value", "error"),
    [
        ("u8", 256, "out of range for u8"),
        ("s16", 1.5, "needs a whole number"),
        ("u16", "7", "needs a number"),
        ("u16", True, "needs a number"),
        ("bool", 2, "needs true/false"),
        ("utf8", 3, "needs text"),
        ("bytes", "zz", "needs hex text"),
    ],
)
def test_field_refuses_values_that_do_not_fit(kind, value, error):
    with pytest.raises(ValueError, match=error):
        FieldSpec(type=kind).encode(value)


def test_field_names_the_shortfall():
    with pytest.raises(ValueError, match="u32 at offset 2 needs 6 bytes, got 3"):
        FieldSpec(type="u32", offset=2).decode(b"\x00\x00\x00")


def test_field_spec_rules():
    with pytest.raises(ValidationError, match="length applies to utf8 and bytes"):
        FieldSpec(type="u8", length=2)
    with pytest.raises(ValidationError, match="bit applies to bool"):
        FieldSpec(type="u8", bit=1)


def test_bthome_packet_decodes():
    # info v2 unencrypted; packet id 9; temperature 25.06; humidity 50.55; battery 93;
    # a second temperature (0x45, 0.1 resolution) 22.5; door open; text "hi"
    data = bytes.fromhex("40 00 09 02 c9 09 03 bf 13 01 5d 45 e1 00 1a 01 53 02 68 69")
    packet = bthome.parse(data)
    assert packet.packet_id == 9
    assert packet.find("temperature") == 25.05
    assert packet.find("humidity") == 50.55
    assert packet.find("battery") == 93
    assert packet.find("temperature", 1) == 22.5
    assert packet.find("door") is True
    assert packet.find("text") == "hi"
    assert packet.find("pressure") is None
    assert packet.truncated_at is None


def test_bthome_values_are_exact():
    packet = bthome.parse(bytes([0x40, 0x02]) + struct.pack("<h", -1234))
    assert packet.find("temperature") == -12.34


def test_bthome_stops_at_an_unknown_object():
    packet = bthome.parse(bytes.fromhex("40 01 5d 7f 01 02 03"))
    assert packet.find("battery") == 93
    assert packet.truncated_at == 3


def test_bthome_refuses_encrypted_and_other_versions():
    with pytest.raises(bthome.BthomeError, match="encrypted"):
        bthome.parse(bytes.fromhex("41 00 01"))
    with pytest.raises(bthome.BthomeError, match="version 1"):
        bthome.parse(bytes.fromhex("20 00 01"))
    with pytest.raises(bthome.BthomeError, match="empty"):
        bthome.parse(b"")


def _sighting(mono: float, manufacturer: dict[int, bytes], rssi: int = -60) -> Sighting:
    adv = AdvertisementData(None, manufacturer, {}, [], None, rssi, ())
    return Sighting(BLEDevice("AA:BB:CC:DD:EE:FF", None, None), adv, datetime.now(UTC), mono)


def test_advert_decoder_skips_repeats_within_the_interval(caplog):
    config = BleConnection.model_validate(
        {
            "driver": "ble",
            "devices": {
                "d": {
                    "address": "aa:bb:cc:dd:ee:ff",
                    "interval_s": 10,
                    "points": {
                        "t": {"source": "manufacturer", "company_id": 0x0499, "field": "s16"},
                        "rssi": {"source": "rssi"},
                    },
                }
            },
        }
    )
    device = config.devices["d"]
    assert device.address == "AA:BB:CC:DD:EE:FF"
    decoder = AdvertDecoder(device, list(device.points.values()), Complaints())
    first = decoder.samples(_sighting(0.0, {0x0499: b"\x10\x00"}))
    assert [(s.point, s.value) for s in first] == [("t", 16), ("rssi", -60)]
    assert decoder.samples(_sighting(1.0, {0x0499: b"\x10\x00"})) == []  # a repeat
    assert len(decoder.samples(_sighting(11.0, {0x0499: b"\x10\x00"}))) == 2  # refresh
    assert decoder.samples(_sighting(11.5, {0x0499: b"\x11\x00"}))[0].value == 17
    # a payload too short is skipped, logged once, and the other points still decode
    short = decoder.samples(_sighting(12.0, {0x0499: b"\x01"}))
    assert [s.point for s in short] == ["rssi"]
    decoder.samples(_sighting(30.0, {0x0499: b"\x02"}))
    assert sum("cannot decode" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("point", "error"),
    [
        ({"source": "bthome"}, "bthome points need `measurement`"),
        ({"source": "bthome", "measurement": "tempreature"}, "unknown BTHome measurement"),
        ({"source": "manufacturer", "field": "u8"}, "need `company_id` and `field`"),
        ({"source": "service_data", "field": "u8"}, "need `service_uuid` and `field`"),
        ({"source": "gatt", "characteristic": "2a6e"}, "need `characteristic` and `field`"),
        ({"source": "rssi", "writable": True}, "`writable`, `notify`, `readable` are for gatt"),
        (
            {
                "source": "gatt",
                "characteristic": "2a6e",
                "field": {"type": "u8", "offset": 1},
                "writable": True,
            },
            "offset 0",
        ),
        ({"source": "gatt", "characteristic": "xyz", "field": "u8"}, "not a 16-bit"),
        ({"source": "gatt", "characteristic": "2a6e", "field": "u9"}, "field.type"),
    ],
)
def test_point_rules_name_the_problem(point, error):
    with pytest.raises(ValidationError, match=error):
        BlePoint.model_validate(point)


def test_duplicate_addresses_are_refused():
    with pytest.raises(ValidationError, match=r"devices\.b\.address: AA:BB:CC:DD:EE:FF is also a"):
        BleConnection.model_validate(
            {
                "driver": "ble",
                "devices": {
                    "a": {"address": "AA:BB:CC:DD:EE:FF"},
                    "b": {"address": "aa:bb:cc:dd:ee:ff"},
                },
            }
        )


def test_uuids_are_normalised():
    assert normalise_uuid("0xFCD2") == "0000fcd2-0000-1000-8000-00805f9b34fb"
    assert normalise_uuid("A5E1F001-0000-4000-8000-00000000ABCD").islower()


def test_push_and_polled_points():
    gatt = {"source": "gatt", "characteristic": "2a6e", "field": "s16"}
    assert not BlePoint.model_validate(gatt).push
    assert BlePoint.model_validate({**gatt, "notify": True}).push
    assert BlePoint.model_validate({**gatt, "writable": True, "readable": False}).push
    assert BlePoint.model_validate({"source": "rssi"}).push


async def test_slots_are_handed_over_first_come_first_served():
    pool = SlotPool(1)
    await pool.acquire(None)
    order: list[str] = []

    async def take(name: str) -> None:
        await pool.acquire(None)
        order.append(name)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(take("a"))
        await asyncio.sleep(0)
        tg.create_task(take("b"))
        await asyncio.sleep(0)
        assert pool.waiting == 2
        pool.release()
        await asyncio.sleep(0)
        pool.release()
    assert order == ["a", "b"]
    assert pool.in_use == 1
    with pytest.raises(TimeoutError):
        await pool.acquire(0.01)
    assert pool.waiting == 0
    pool.release()
    assert pool.in_use == 0


async def test_sightings_forget_addresses_that_fell_silent():
    sightings = Sightings(forget_after_s=0.05)
    adv = AdvertisementData(None, {}, {}, [], None, -70, ())
    for i in range(50):  # phones rotating their random addresses
        sightings.heard(BLEDevice(f"4A:00:00:00:00:{i:02X}", None, None), adv)
    assert len(sightings) == 50
    await asyncio.sleep(0.06)
    sightings.heard(BLEDevice("4A:00:00:00:01:00", None, None), adv)
    assert len(sightings) == 1
    assert sightings.latest("4a:00:00:00:01:00") is not None
