"""Parsers: typed values out of frames; anything else is a FrameError, never a crash."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.serial.nmea import ChecksumError, FrameError, parse_sentence, sentence_checksum
from drivers.serial.parsers import (
    JsonParser,
    NmeaParser,
    RegexParser,
    StructParser,
    checksum,
    lookup,
    parse,
)


def sentence(body: str, check: str | None = None) -> bytes:
    return f"${body}*{check or sentence_checksum(body)}".encode()


def test_regex_groups_are_typed():
    parser = RegexParser(
        pattern=r"(?P<t>-?[\d.]+) (?P<n>\d+) (?P<on>\w+) (?P<code>[0-9A-F]+) (?P<name>.*)",
        types={"t": "float", "n": "int", "on": "bool", "code": "hex"},
    )
    assert parse(parser, b"-1.5 42 ON 1F pump 1") == {
        "t": -1.5,
        "n": 42,
        "on": True,
        "code": 31,
        "name": "pump 1",
    }


@pytest.mark.parametrize(
    ("frame", "error"),
    [(b"abc", "does not match"), (b"1.2.3", "not float"), (b"\xff", "not ascii")],
)
def test_regex_rejections_name_the_problem(frame, error):
    parser = RegexParser(pattern=r"(?P<v>[\d.]+|abc\d)", types={"v": "float"})
    with pytest.raises(FrameError, match=error):
        parse(parser, frame)


def test_regex_config_is_checked():
    with pytest.raises(ValidationError, match="named group"):
        RegexParser(pattern=r"\d+")
    with pytest.raises(ValidationError, match="no group named x"):
        RegexParser(pattern=r"(?P<v>\d+)", types={"x": "int"})
    with pytest.raises(ValidationError, match="pattern"):
        RegexParser(pattern=r"(?P<v>\d+")


def test_json_fields_by_dotted_path():
    values = parse(JsonParser(), b'{"a": {"b": [1, {"c": 2.5}]}, "ok": true, "none": null}')
    assert lookup(values, "a.b.1.c") == 2.5
    assert lookup(values, "ok") is True
    assert lookup(values, "a") is None  # not a scalar
    assert lookup(values, "none") is None
    assert lookup(values, "a.x") is None


@pytest.mark.parametrize("frame", [b"[1]", b"{", b"\xff\xfe", b'"text"'])
def test_json_rejections(frame):
    with pytest.raises(FrameError):
        parse(JsonParser(), frame)


def test_nmea_gga():
    body = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    values = parse_sentence(sentence(body))
    assert values["lat"] == pytest.approx(48.1173)
    assert values["lon"] == pytest.approx(11.5166667)
    assert values["GGA.fix"] == 1
    assert values["satellites"] == 8
    assert values["hdop"] == 0.9
    assert values["altitude_m"] == 545.4
    assert values["utc_time"] == "12:35:19"
    assert values["talker"] == "GP"


def test_nmea_rmc_southern_western_hemisphere():
    body = "GNRMC,081836,A,3751.65,S,14507.36,W,000.0,360.0,130998,011.3,E"
    values = parse_sentence(sentence(body))
    assert values["lat"] == pytest.approx(-37.8608333)
    assert values["lon"] == pytest.approx(-145.1226667)
    assert values["RMC.valid"] is True
    assert values["speed_kn"] == 0.0
    assert values["date"] == "1998-09-13"


def test_nmea_without_fix_reports_no_position():
    values = parse_sentence(sentence("GPGGA,,,,,,0,00,,,M,,M,,"))
    assert values["fix"] == 0
    assert "lat" not in values
    assert "altitude_m" not in values


def test_nmea_checksums():
    body = "GPGLL,4916.45,N,12311.12,W,225444,A"
    assert parse_sentence(sentence(body, sentence_checksum(body).lower()))["valid"] is True
    with pytest.raises(ChecksumError):
        parse_sentence(sentence(body, "00"))
    with pytest.raises(ChecksumError, match="no checksum"):
        parse_sentence(f"${body}".encode())
    assert parse_sentence(f"${body}".encode(), require_checksum=False)["lat"] == pytest.approx(
        49.2741667
    )


@pytest.mark.parametrize(
    "body",
    [
        "GPGGA,123519,99xx.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
        "GPGGA,123519,4807.038,Q,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
        "GPGGA,123519",
        "GPRMC,ab,A,4807.040,N,01131.010,E,022.4,084.4,230394,003.1,W",
        "G",
    ],
)
def test_nmea_malformed_fields_are_frame_errors(body):
    with pytest.raises(FrameError):
        parse_sentence(sentence(body))


def test_nmea_sentence_filter_and_unknown_sentences():
    keep_gga = NmeaParser(sentences=["GGA"])
    rmc = sentence("GPRMC,123520,A,4807.040,N,01131.010,E,022.4,084.4,230394,003.1,W")
    with pytest.raises(FrameError, match="not selected"):
        parse(keep_gga, rmc)
    assert parse(NmeaParser(), sentence("GPGSV,1,1,00"))["sentence"] == "GSV"


def test_struct_fields_and_crc16_modbus():
    parser = StructParser(
        fields={"addr": {"offset": 0, "format": "B"}, "value": {"offset": 3, "format": ">H"}},
        checksum="crc16_modbus",
    )
    body = bytes.fromhex("0103020123")
    assert checksum("crc16_modbus", bytes.fromhex("010300000001")) == bytes.fromhex("840a")
    assert parse(parser, body + checksum("crc16_modbus", body)) == {"addr": 1, "value": 0x0123}
    with pytest.raises(ChecksumError):
        parse(parser, body + b"\x00\x00")
    with pytest.raises(FrameError, match="too short"):
        parse(parser, b"\x01\x03" + checksum("crc16_modbus", b"\x01\x03"))


def test_struct_simple_checksums():
    parser = StructParser(fields={"v": {"offset": 0, "format": "<f"}}, checksum="xor8")
    body = bytes.fromhex("0000c03f")
    assert parse(parser, body + checksum("xor8", body)) == {"v": 1.5}
    assert checksum("sum8", b"\xff\x02") == b"\x01"


def test_struct_field_is_one_value():
    with pytest.raises(ValidationError, match="2 values"):
        StructParser(fields={"v": {"offset": 0, "format": "HH"}})
    with pytest.raises(ValidationError, match="bad char"):
        StructParser(fields={"v": {"offset": 0, "format": "Q!"}})


PARSERS = [
    RegexParser(pattern=r"(?P<a>\d+),(?P<b>.*)", types={"a": "int"}),
    JsonParser(),
    NmeaParser(),
    StructParser(fields={"v": {"offset": 1, "format": ">i"}}, checksum="sum8"),
]


@given(frame=st.binary(max_size=200), which=st.sampled_from(PARSERS))
def test_any_bytes_decode_or_raise_frame_error(frame, which):
    with contextlib.suppress(FrameError):
        parse(which, frame)


@given(body=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,NSEW", max_size=80))
def test_any_sentence_with_a_right_checksum_decodes_or_is_malformed(body):
    try:
        parse_sentence(sentence(body))
    except ChecksumError:
        pytest.fail("a correct checksum was refused")
    except FrameError:
        pass
