"""Frames to named values: regex with typed groups, JSON lines, NMEA 0183, binary structs.

Each parser turns one frame into a mapping of field name to value; points pick fields by
name. A frame a parser cannot decode raises FrameError (ChecksumError for a bad checksum),
which the session counts and drops.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from functools import reduce
from operator import xor
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.serial.nmea import ChecksumError, FrameError, parse_sentence
from gatewayd.model import Value

__all__ = [
    "ChecksumError",
    "FrameError",
    "JsonParser",
    "NmeaParser",
    "Parser",
    "RegexParser",
    "StructField",
    "StructParser",
    "checksum",
    "lookup",
    "parse",
]

FieldType = Literal["str", "int", "float", "bool", "hex"]

_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no"}


class _Parser(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RegexParser(_Parser):
    """Text frames matched by a regular expression; named groups become fields."""

    type: Literal["regex"] = "regex"
    pattern: str = Field(
        default="(?P<text>.*)", description="Must match the whole frame; named groups are fields."
    )
    types: dict[str, FieldType] = Field(
        default_factory=dict, description="Type of each named group; str when not listed."
    )
    encoding: str = Field(default="ascii", description="Text encoding of the frames.")

    @model_validator(mode="after")
    def _groups(self) -> RegexParser:
        try:
            compiled = re.compile(self.pattern)
        except re.error as exc:
            msg = f"pattern: {exc}"
            raise ValueError(msg) from exc
        if not compiled.groupindex:
            raise ValueError("pattern: needs at least one named group (?P<name>...)")
        unknown = set(self.types) - set(compiled.groupindex)
        if unknown:
            msg = f"types: no group named {', '.join(sorted(unknown))} in the pattern"
            raise ValueError(msg)
        "".encode(self.encoding)
        return self


class JsonParser(_Parser):
    """One JSON object per frame; fields are dotted paths (`a.b.c`)."""

    type: Literal["json"] = "json"


class NmeaParser(_Parser):
    """NMEA 0183 sentences; GGA, RMC, GLL and VTG are decoded."""

    type: Literal["nmea"] = "nmea"
    require_checksum: bool = Field(
        default=True, description="Drop sentences without a `*hh` checksum."
    )
    sentences: list[str] = Field(
        default_factory=list,
        description="Only these sentence types (e.g. [GGA, RMC]); all if empty.",
    )


class StructField(BaseModel):
    """One value at a byte offset of a binary frame."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    offset: int = Field(ge=0, description="Byte offset in the frame.")
    format: str = Field(description="struct format of one value, e.g. '>H', '<f', 'B', '4s'.")

    @field_validator("format")
    @classmethod
    def _one_value(cls, value: str) -> str:
        try:
            count = len(struct.unpack(value, bytes(struct.calcsize(value))))
        except struct.error as exc:
            msg = f"{value!r}: {exc}"
            raise ValueError(msg) from exc
        if count != 1:
            msg = f"{value!r} describes {count} values; use one field per value"
            raise ValueError(msg)
        return value


class StructParser(_Parser):
    """Binary frames: fixed fields at byte offsets, optionally guarded by a checksum."""

    type: Literal["struct"] = "struct"
    fields: dict[str, StructField] = Field(description="Fields by name.")
    checksum: Literal["none", "xor8", "sum8", "crc16_modbus"] = Field(
        default="none", description="Checksum in the last byte(s), over all bytes before it."
    )


Parser = Annotated[
    RegexParser | JsonParser | NmeaParser | StructParser, Field(discriminator="type")
]


def parse(
    config: RegexParser | JsonParser | NmeaParser | StructParser, frame: bytes
) -> dict[str, Value]:
    """Decode one frame with a device's parser.

    Raises:
        FrameError: the frame does not fit the parser (ChecksumError: bad checksum).
    """
    match config:
        case RegexParser():
            return _regex(config, frame)
        case JsonParser():
            return _json(frame)
        case NmeaParser():
            values = parse_sentence(frame, require_checksum=config.require_checksum)
            if config.sentences and values["sentence"] not in config.sentences:
                msg = f"sentence {values['sentence']!r} not selected"
                raise FrameError(msg)
            return values
        case StructParser():
            return _struct(config, frame)


def lookup(values: dict[str, Value], field: str) -> Value | None:
    """A field of a parsed frame: a key, or a dotted path into nested JSON."""
    node: Any = values
    if field in values:
        node = values[field]
    else:
        for part in field.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
    if isinstance(node, bool | int | float | str | bytes):
        return node
    return None


def _regex(config: RegexParser, frame: bytes) -> dict[str, Value]:
    try:
        text = frame.decode(config.encoding)
    except UnicodeDecodeError as exc:
        msg = f"not {config.encoding} text"
        raise FrameError(msg) from exc
    found = re.fullmatch(config.pattern, text)  # re caches the compiled pattern
    if found is None:
        msg = f"{text[:80]!r} does not match the pattern"
        raise FrameError(msg)
    out: dict[str, Value] = {}
    for name, raw in found.groupdict().items():
        if raw is None:
            continue
        kind = config.types.get(name, "str")
        try:
            out[name] = _CONVERT[kind](raw.strip() if kind != "str" else raw)
        except ValueError as exc:
            msg = f"group {name}: {raw!r} is not {kind}"
            raise FrameError(msg) from exc
    return out


def _bool(text: str) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    msg = f"{text!r} is not a boolean"
    raise ValueError(msg)


_CONVERT: dict[str, Callable[[str], Value]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": _bool,
    "hex": lambda text: int(text, 16),
}


def _json(frame: bytes) -> dict[str, Value]:
    try:
        doc = json.loads(frame)
    except (ValueError, RecursionError) as exc:
        msg = f"not JSON: {exc}"
        raise FrameError(msg) from exc
    if not isinstance(doc, dict):
        msg = f"JSON {type(doc).__name__}, expected an object"
        raise FrameError(msg)
    return doc


def _struct(config: StructParser, frame: bytes) -> dict[str, Value]:
    body = _verified(config.checksum, frame)
    out: dict[str, Value] = {}
    for name, spec in config.fields.items():
        try:
            (value,) = struct.unpack_from(spec.format, body, spec.offset)
        except struct.error as exc:
            msg = f"field {name}: frame of {len(body)} bytes too short"
            raise FrameError(msg) from exc
        out[name] = value
    return out


def _verified(kind: str, frame: bytes) -> bytes:
    if kind == "none":
        return frame
    size = 2 if kind == "crc16_modbus" else 1
    if len(frame) <= size:
        raise FrameError("frame shorter than its checksum")
    body, given = frame[:-size], frame[-size:]
    expected = checksum(kind, body)
    if given != expected:
        msg = f"{kind} {given.hex()} != {expected.hex()}"
        raise ChecksumError(msg)
    return body


def checksum(kind: str, body: bytes) -> bytes:
    """The checksum bytes a frame of `kind` carries after `body`."""
    if kind == "xor8":
        return bytes([reduce(xor, body, 0)])
    if kind == "sum8":
        return bytes([sum(body) & 0xFF])
    crc = 0xFFFF
    for byte in body:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")
