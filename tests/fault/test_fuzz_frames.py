"""Hypothesis-generated frames into the Modbus, serial and BLE decoders.

Each driver has a contract for what the field may send (see each module's docstring):

- Modbus TCP (`drivers/modbus/tcp.py`): the byte stream is cut into MBAP frames; a reply that
  does not parse fails its own request with a `ModbusException` (the session makes it
  `DeviceUnavailable`), a header out of step fails every waiting request with a
  `ConnectionException` and hangs up; nothing escapes `data_received`. A reply that parses
  carries registers every point type decodes (`codec.decode`) without an exception.
- Serial (`drivers/serial/framing.py`, `parsers.py`, `nmea.py`): framers never raise and never
  hold more than `max_frame_bytes`; a frame a parser cannot decode raises `FrameError`, which
  the session counts and drops; `lookup` never raises.
- BLE (`drivers/ble/bthome.py`, `decode.py`): `bthome.parse` raises only `BthomeError`;
  advertisement and GATT decoding never raise (a bad value is a complaint, logged once).

Bounded: derandomized, no deadline, a few hundred examples per property.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from datetime import UTC, datetime

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from drivers.ble import bthome
from drivers.ble.config import BleConnection
from drivers.ble.decode import Complaints, decode_advertised, decode_gatt
from drivers.ble.sightings import Sighting
from drivers.modbus import codec, tcp
from drivers.modbus.config import ModbusPoint
from drivers.serial import framing, nmea, parsers

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)  # the drivers log every garbled frame as a warning


# -- Modbus --------------------------------------------------------------------------------

FUNCTIONS = [1, 2, 3, 4, 5, 6, 15, 16]


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def _mbap(tid: int, unit: int, pdu: bytes, length: int | None = None) -> bytes:
    size = len(pdu) + 1 if length is None else length
    return struct.pack(">HHHB", tid, 0, size & 0xFFFF, unit) + pdu


@st.composite
def _replies(draw: st.DrawFn, waiting: dict[int, int]) -> bytes:
    """A reply to one of the waiting requests: right, slightly wrong, or garbage."""
    kind = draw(st.sampled_from(["right", "right", "right", "wrong pdu", "wrong header", "junk"]))
    if kind == "junk":
        return draw(st.binary(max_size=40))
    tid = draw(st.sampled_from(sorted(waiting)))
    function = waiting[tid]
    if function in {3, 4}:
        words = draw(st.lists(st.integers(0, 0xFFFF), max_size=125))
        pdu = bytes([function, len(words) * 2]) + struct.pack(f">{len(words)}H", *words)
    elif function in {1, 2}:
        bits = draw(st.binary(max_size=250))
        pdu = bytes([function, len(bits)]) + bits
    else:
        pdu = bytes([function]) + draw(st.binary(min_size=4, max_size=4))
    if kind == "wrong pdu":
        code = draw(st.sampled_from([function, function | 0x80, *FUNCTIONS]) | st.integers(0, 255))
        cut = draw(st.integers(0, len(pdu)))
        pdu = bytes([code]) + pdu[1:cut] + draw(st.binary(max_size=8))
    unit = 1
    length = None
    if kind == "wrong header":
        unit = draw(st.integers(0, 255))
        length = draw(st.integers(0, 0xFFFF))
        tid = draw(st.integers(0, 0xFFFF))
    return _mbap(tid, unit, pdu, length)


@st.composite
def _mbap_streams(draw: st.DrawFn) -> tuple[dict[int, int], list[bytes]]:
    waiting = draw(
        st.dictionaries(st.integers(0, 0xFFFF), st.sampled_from(FUNCTIONS), min_size=1, max_size=8)
    )
    frames = draw(st.lists(_replies(waiting), max_size=8))
    stream = b"".join(frames)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return waiting, chunks


@FUZZ
@given(_mbap_streams())
@example(({1: 3}, [_mbap(1, 1, b"\x03")]))  # a register reply without its byte count
@example(({1: 3}, [_mbap(1, 1, b"\x03\x04\x00\x01")]))  # fewer bytes than it says
@example(({1: 5}, [_mbap(1, 1, b"\x85")]))  # an exception reply without its code
@example(({1: 1}, [_mbap(1, 1, b"\x01\xff")]))  # a coil reply shorter than its count
@example(({1: 3}, [_mbap(1, 1, b"", length=1)]))  # an empty PDU
def test_modbus_tcp_stream_settles_requests_with_replies_or_modbus_errors(stream):
    waiting, chunks = stream
    loop = asyncio.new_event_loop()
    try:
        proto = tcp._Mbap("fuzz")
        transport = _Transport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        futures = {}
        for tid, function in waiting.items():
            future = loop.create_future()
            futures[tid] = future
            proto.waiting[tid] = tcp._Waiting(future, function, 1, float("inf"))
        for chunk in chunks:
            proto.data_received(chunk)
        for tid, future in futures.items():
            if not future.done():
                continue
            error = future.exception()
            if error is not None:
                assert isinstance(error, ModbusException), repr(error)
                event(f"request failed: {type(error).__name__}")
                continue
            reply = future.result()
            assert isinstance(reply, ModbusPDU)
            event(f"request answered: {type(reply).__name__}")
            registers = getattr(reply, "registers", None)
            if waiting[tid] in {3, 4} and registers:
                _decode_every_type(list(registers))
    finally:
        loop.close()


POINT_TYPES = [
    {"type": t}
    for t in ("uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")
] + [{"type": "bool"}, {"type": "bit", "bit": 15}, {"type": "string", "length": 4}]
ORDERS = [(b, w) for b in ("big", "little") for w in ("big", "little")]
MODBUS_POINTS = [
    ModbusPoint.model_validate({"id": "p", "address": 0, "byte_order": b, "word_order": w, **spec})
    for spec in POINT_TYPES
    for b, w in ORDERS
]


def _decode_every_type(registers: list[int]) -> None:
    for point in MODBUS_POINTS:
        if len(registers) >= point.span:
            value = codec.decode(point, registers[: point.span])
            assert isinstance(value, bool | int | float | str)


@FUZZ
@given(st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4))
@example([0x7FF8, 0, 0, 0])  # NaN
@example([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF])
@example([0xC3A9, 0xFF00, 0x0000, 0xE282])  # text that is not valid UTF-8
def test_modbus_registers_decode_as_every_point_type(registers):
    _decode_every_type(registers)


# -- Serial --------------------------------------------------------------------------------

FRAMINGS = [
    framing.LineFraming(max_frame_bytes=64),
    framing.LineFraming(terminator="\r\n", strip=" \r", max_frame_bytes=64),
    framing.FixedFraming(length=6, start="$"),
    framing.FixedFraming(length=3),
    framing.LengthPrefixedFraming(max_frame_bytes=64),
    framing.LengthPrefixedFraming(
        start="\xaa", length_bytes=2, byteorder="little", length_adjust=-3, max_frame_bytes=64
    ),
    framing.LengthPrefixedFraming(length_bytes=4, length_adjust=8, max_frame_bytes=64),
    framing.DelimitedFraming(max_frame_bytes=64),
    framing.DelimitedFraming(
        start="\x7e", end="\x7f", escape="\x7d", escape_xor=0x20, max_frame_bytes=64
    ),
]

# Bytes that mean something to some framer, so generated streams hit their states.
SPECIAL = st.sampled_from([b"\n", b"\r\n", b"$", b"\xaa", b"\x02", b"\x03", b"\x7e", b"\x7d"])
STREAM = st.lists(st.binary(max_size=80) | SPECIAL, max_size=20)


@FUZZ
@given(st.sampled_from(range(len(FRAMINGS))), STREAM)
@example(4, [b"\xff" + b"x" * 200])  # a length beyond the maximum
@example(5, [b"\xaa\x00\x00"])  # a length below zero after the adjustment
@example(8, [b"\x7e\x7d"])  # a frame ending in an escape
def test_serial_framers_never_raise_and_stay_bounded(index, chunks):
    config = FRAMINGS[index]
    stats = framing.FramerStats()
    framer = framing.make_framer(config, stats)
    limit = getattr(config, "max_frame_bytes", getattr(config, "length", 0))
    for chunk in chunks:
        for frame in framer.feed(chunk):
            assert isinstance(frame, bytes)
            assert len(frame) <= limit
    assert stats.garbage_bytes >= 0


PARSERS = [
    parsers.RegexParser(
        pattern=r"T=(?P<t>-?\d+(\.\d+)?);S=(?P<s>\w+);H=(?P<h>[0-9a-f]+)",
        types={"t": "float", "s": "bool", "h": "hex"},
    ),
    parsers.RegexParser(pattern=r"(?P<n>.*)", types={"n": "int"}),
    parsers.JsonParser(),
    parsers.NmeaParser(),
    parsers.NmeaParser(require_checksum=False, sentences=["GGA", "RMC"]),
    parsers.StructParser(
        fields={"a": {"offset": 0, "format": ">h"}, "b": {"offset": 2, "format": "<f"}},
        checksum="crc16_modbus",
    ),
    parsers.StructParser(fields={"s": {"offset": 1, "format": "4s"}}, checksum="xor8"),
    parsers.StructParser(fields={"q": {"offset": 0, "format": "<Q"}}, checksum="sum8"),
]
FIELDS = ["t", "s", "h", "n", "lat", "GGA.lat", "a", "b", "q", "x.y", "x.0", "x.0.z", "time"]


GOOD_NMEA = {
    "GGA": "123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
    "RMC": "123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W",
    "GLL": "4916.45,N,12311.12,W,225444,A",
    "VTG": "054.7,T,034.4,M,005.5,N,010.2,K",
}


@st.composite
def _nmea(draw: st.DrawFn) -> bytes:
    """A real sentence with some fields replaced, dropped or added, mostly checksummed."""
    kind = draw(st.sampled_from(sorted(GOOD_NMEA)))
    fields = GOOD_NMEA[kind].split(",")
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(fields)))
        token = draw(
            st.sampled_from(["", "N", "S", "E", "W", "A", "V", "9999.99", "-1", "1e400", "nan"])
            | st.text(alphabet="0123456789.-+eENSWAV ", max_size=12)
        )
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        if action == "insert" or not fields:
            fields.insert(at, token)
        elif action == "replace":
            fields[min(at, len(fields) - 1)] = token
        else:
            del fields[min(at, len(fields) - 1)]
    body = ",".join([f"GP{kind}", *fields])
    star = draw(st.sampled_from([True, True, True, False]))
    tail = f"*{nmea.sentence_checksum(body)}" if star else ""
    return f"${body}{tail}\r\n".encode()


NMEA = _nmea()
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
).map(lambda doc: json.dumps({"x": doc}).encode())
CHECKSUMMED = st.builds(
    lambda body, kind: body + parsers.checksum(kind, body),
    st.binary(max_size=16),
    st.sampled_from(["xor8", "sum8", "crc16_modbus"]),
)
FRAMES = (
    st.binary(max_size=120)
    | CHECKSUMMED
    | NMEA
    | JSONISH
    | st.sampled_from([b"[" * 5000, b'{"x":' * 5000, b'{"x": 1' + b"0" * 5000 + b"}"])
    | st.builds(
        lambda t, s, h: f"T={t};S={s};H={h}".encode(),
        st.text(max_size=6),
        st.text(max_size=6),
        st.text(max_size=6),
    )
)


@FUZZ
@given(st.sampled_from(range(len(PARSERS))), FRAMES)
@example(3, b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n")
@example(4, b"$GPRMC,999999,A,9999.999,N,99999.999,E,,,999999,,")  # out-of-range time
@example(1, b"1" * 5000)  # beyond int's digit limit
@example(2, b"[" * 100000)  # deeper than the recursion limit
def test_serial_parsers_raise_only_frame_errors(index, frame):
    config = PARSERS[index]
    try:
        values = parsers.parse(config, frame)
    except parsers.FrameError as exc:
        event(f"{type(config).__name__}: {type(exc).__name__}")
        return
    event(f"{type(config).__name__}: parsed")
    assert isinstance(values, dict)
    for field in FIELDS:
        value = parsers.lookup(values, field)
        assert value is None or isinstance(value, bool | int | float | str | bytes)


@FUZZ
@given(NMEA)
@example(b"$GPGGA,,,,,,,,,,,,,,*56\r\n")
def test_nmea_sentences_decode_or_raise_frame_errors(frame):
    try:
        values = nmea.parse_sentence(frame)
    except nmea.FrameError as exc:
        event(type(exc).__name__)
        return
    event(f"parsed {values['sentence']}")
    assert all(isinstance(v, bool | int | float | str) for v in values.values())


# -- BLE -----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=64) | st.binary(max_size=40).map(lambda b: b"\x40" + b))
@example(b"\x40\x53\xff")  # a text object whose length runs past the end
@example(b"\x44" + b"\x02\x00" * 20)  # trigger based, many temperatures
def test_bthome_parse_raises_only_bthome_errors(data):
    try:
        packet = bthome.parse(data)
    except bthome.BthomeError:
        return
    for obj in packet.objects:
        assert isinstance(obj.value, bool | int | float | str | bytes)


BLE = BleConnection.model_validate(
    {
        "driver": "ble",
        "devices": {
            "d": {
                "address": "aa:bb:cc:dd:ee:ff",
                "points": {
                    "t": {"source": "bthome", "measurement": "temperature"},
                    "t2": {"source": "bthome", "measurement": "temperature", "index": 1},
                    "txt": {"source": "bthome", "measurement": "text"},
                    "m16": {"source": "manufacturer", "company_id": 0x0499, "field": "s16"},
                    "mf": {
                        "source": "manufacturer",
                        "company_id": 0x0499,
                        "field": {"type": "f32", "offset": 2, "byte_order": "big"},
                    },
                    "mb": {
                        "source": "manufacturer",
                        "company_id": 0x0499,
                        "field": {"type": "bool", "offset": 6, "bit": 7},
                    },
                    "sd": {
                        "source": "service_data",
                        "service_uuid": "0000181a-0000-1000-8000-00805f9b34fb",
                        "field": {"type": "utf8", "offset": 1},
                    },
                    "sb": {
                        "source": "service_data",
                        "service_uuid": "0000181a-0000-1000-8000-00805f9b34fb",
                        "field": {"type": "bytes", "offset": 0, "length": 3},
                    },
                    "g": {"source": "gatt", "characteristic": "2a6e", "field": "f16"},
                    "g64": {"source": "gatt", "characteristic": "2a6e", "field": "s64"},
                    "rssi": {"source": "rssi"},
                },
            }
        },
    }
)
DEVICE = BLE.devices["d"]
ADVERTISED = [p for p in DEVICE.points.values() if p.source != "gatt"]
GATT = [p for p in DEVICE.points.values() if p.source == "gatt"]
ENV_UUID = "0000181a-0000-1000-8000-00805f9b34fb"


@FUZZ
@given(
    st.dictionaries(st.sampled_from([0x0499, 0x004C]), st.binary(max_size=12), max_size=2),
    st.dictionaries(
        st.sampled_from([bthome.BTHOME_UUID, ENV_UUID]),
        st.binary(max_size=24) | st.binary(max_size=20).map(lambda b: b"\x40" + b),
        max_size=2,
    ),
    st.integers(-127, 20),
    st.binary(max_size=12),
)
@example({0x0499: b"\x01"}, {bthome.BTHOME_UUID: b"\x41\x02"}, -60, b"")  # encrypted, short
def test_ble_advertisements_and_values_decode_without_raising(manufacturer, service, rssi, value):
    adv = AdvertisementData(None, manufacturer, service, [], None, rssi, ())
    at = datetime.now(UTC)
    sighting = Sighting(BLEDevice("AA:BB:CC:DD:EE:FF", None, None), adv, at, 0.0)
    complaints = Complaints()
    for sample in decode_advertised(DEVICE, ADVERTISED, sighting, complaints):
        assert isinstance(sample.value, bool | int | float | str | bytes)
    for sample in decode_gatt(DEVICE, GATT, value, at, complaints):
        assert isinstance(sample.value, bool | int | float | str | bytes)
