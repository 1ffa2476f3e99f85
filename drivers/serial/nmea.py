"""NMEA 0183 sentences: checksum, then position, fix and motion from GGA, RMC, GLL and VTG.

Coordinates come as `ddmm.mmmm` plus a hemisphere letter; they are reported as signed decimal
degrees. Empty fields (no fix yet) are left out rather than reported as zero, so a receiver
that lost its fix never teleports to 0 N 0 E.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from operator import xor

from gatewayd.model import Value

__all__ = ["ChecksumError", "FrameError", "parse_sentence", "sentence_checksum"]

_KNOT_KMH = 1.852
_CENTURY_PIVOT = 80  # two-digit years: 80..99 are 19xx (receivers of the 1980s on), else 20xx


class FrameError(ValueError):
    """A frame that cannot be decoded; it is counted and dropped, never raised to the core."""


class ChecksumError(FrameError):
    """A frame whose checksum does not match its content."""


def sentence_checksum(body: str) -> str:
    """The two hex digits an NMEA sentence carries after `*` (XOR of the body's bytes)."""
    return f"{reduce(xor, body.encode('ascii'), 0):02X}"


def parse_sentence(frame: bytes, *, require_checksum: bool = True) -> dict[str, Value]:
    """Decode one sentence; keys are plain (`lat`) and qualified by type (`GGA.lat`).

    Raises:
        ChecksumError: the checksum is wrong, or missing while required.
        FrameError: not an NMEA sentence, or a field is malformed.
    """
    try:
        text = frame.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise FrameError("not ASCII") from exc
    if not text.startswith(("$", "!")):
        raise FrameError("no '$' at the start of the sentence")
    body, star, given = text[1:].partition("*")
    if star:
        if given.upper() != sentence_checksum(body):
            msg = f"checksum {given!r} != {sentence_checksum(body)!r}"
            raise ChecksumError(msg)
    elif require_checksum:
        raise ChecksumError("no checksum")
    fields = body.split(",")
    address = fields[0]
    if len(address) < 5 or not address.isalnum():
        msg = f"bad sentence address {address!r}"
        raise FrameError(msg)
    kind = address[2:] if not address.startswith("P") else address
    decoder = _DECODERS.get(kind)
    values: dict[str, Value] = {"sentence": kind, "talker": address[:2]}
    if decoder is not None:
        try:
            values.update(decoder(fields))
        except (ValueError, IndexError) as exc:
            msg = f"{kind}: malformed field: {exc}"
            raise FrameError(msg) from exc
    return {**values, **{f"{kind}.{k}": v for k, v in values.items()}}


def _gga(f: list[str]) -> dict[str, Value]:
    out: dict[str, Value] = {"fix": int(f[6] or 0)}
    _time(out, f[1])
    _position(out, f[2], f[3], f[4], f[5])
    _put(out, "satellites", f[7], int)
    _put(out, "hdop", f[8], float)
    _put(out, "altitude_m", f[9], float)
    _put(out, "geoid_separation_m", f[11], float)
    return out


def _rmc(f: list[str]) -> dict[str, Value]:
    out: dict[str, Value] = {"valid": f[2] == "A"}
    _time(out, f[1])
    _position(out, f[3], f[4], f[5], f[6])
    if f[7]:
        out["speed_kn"] = float(f[7])
        out["speed_kmh"] = round(float(f[7]) * _KNOT_KMH, 3)
    _put(out, "course_deg", f[8], float)
    if f[9]:
        day, month, year = int(f[9][0:2]), int(f[9][2:4]), int(f[9][4:6])
        century = 1900 if year >= _CENTURY_PIVOT else 2000
        out["date"] = f"{century + year:04d}-{month:02d}-{day:02d}"
    return out


def _gll(f: list[str]) -> dict[str, Value]:
    out: dict[str, Value] = {}
    _position(out, f[1], f[2], f[3], f[4])
    _time(out, f[5])
    if len(f) > 6:
        out["valid"] = f[6] == "A"
    return out


def _vtg(f: list[str]) -> dict[str, Value]:
    out: dict[str, Value] = {}
    _put(out, "course_deg", f[1], float)
    _put(out, "speed_kn", f[5], float)
    _put(out, "speed_kmh", f[7], float)
    return out


_DECODERS: dict[str, Callable[[list[str]], dict[str, Value]]] = {
    "GGA": _gga,
    "RMC": _rmc,
    "GLL": _gll,
    "VTG": _vtg,
}


def _put(out: dict[str, Value], key: str, text: str, kind: Callable[[str], int | float]) -> None:
    if text:
        out[key] = kind(text)


def _time(out: dict[str, Value], text: str) -> None:
    if text:
        if len(text) < 6 or not text[:6].isdigit():
            msg = f"time {text!r}"
            raise ValueError(msg)
        out["utc_time"] = f"{text[0:2]}:{text[2:4]}:{text[4:]}"


def _position(out: dict[str, Value], lat: str, ns: str, lon: str, ew: str) -> None:
    if lat and lon:
        out["lat"] = _degrees(lat, ns, 2, "NS")
        out["lon"] = _degrees(lon, ew, 3, "EW")


def _degrees(text: str, hemisphere: str, width: int, letters: str) -> float:
    if hemisphere not in letters or len(text) < width + 2:
        msg = f"coordinate {text!r} {hemisphere!r}"
        raise ValueError(msg)
    value = int(text[:width]) + float(text[width:]) / 60.0
    limit = 90 if width == 2 else 180
    if value > limit:
        msg = f"coordinate {text!r} out of range"
        raise ValueError(msg)
    return round(-value if hemisphere == letters[1] else value, 7)
