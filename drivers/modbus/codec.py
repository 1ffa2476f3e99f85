"""Registers <-> values for every point type, byte order and word order. Pure, no I/O.

Registers travel as 16-bit words, each big-endian on the wire. A value of N registers is
laid out as bytes in the type's big-endian form (ABCD for 32 bits); `word_order: little`
reverses the registers (CDAB) and `byte_order: little` swaps the two bytes inside each
register (BADC); both give DCBA.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from drivers.modbus.config import ModbusPoint
from gatewayd.model import Value

__all__ = ["CodecError", "decode", "encode"]

_STRUCT = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}
_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


class CodecError(ValueError):
    """A value cannot be represented in the point's type (the write is refused)."""


def decode(point: ModbusPoint, registers: Sequence[int]) -> Value:
    """Decode the point's registers (exactly `point.span` of them, as read)."""
    kind = point.type
    if kind == "uint16" and point.byte_order == "big":  # the common case, kept cheap
        return registers[0]
    if kind == "bool":
        return registers[0] != 0
    if kind == "bit":
        return bool((registers[0] >> (point.bit or 0)) & 1)
    if kind == "string":
        raw = (
            _swap_bytes(_to_bytes(registers))
            if point.byte_order == "little"
            else _to_bytes(registers)
        )
        return raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace").rstrip(" ")
    raw = _to_bytes(_ordered(registers, point))
    if point.byte_order == "little":
        raw = _swap_bytes(raw)
    value: int | float = struct.unpack(_STRUCT[kind], raw)[0]
    return value


def encode(point: ModbusPoint, value: Value, current: int = 0) -> list[int]:
    """Encode a raw (unscaled) value into the point's registers.

    Args:
        point: the target point.
        value: the raw value; floats written to integer types are rounded to nearest.
        current: the register's present content, for type `bit` (read-modify-write).

    Raises:
        CodecError: the value has the wrong kind or does not fit the type.
    """
    kind = point.type
    if kind in {"bool", "bit"}:
        flag = _as_bool(point, value)
        if kind == "bool":
            return [int(flag)]
        mask = 1 << (point.bit or 0)
        return [(current | mask) if flag else (current & ~mask & 0xFFFF)]
    if kind == "string":
        if not isinstance(value, str):
            raise CodecError(f"{point.id}: expected a string, got {type(value).__name__}")
        data = value.encode("utf-8")
        size = (point.length or 1) * 2
        if len(data) > size:
            raise CodecError(f"{point.id}: {len(data)} bytes do not fit {size}")
        raw = data.ljust(size, b"\x00")
        if point.byte_order == "little":
            raw = _swap_bytes(raw)
        return _to_registers(raw)
    number = _as_number(point, value)
    raw = struct.pack(_STRUCT[kind], number)
    if point.byte_order == "little":
        raw = _swap_bytes(raw)
    return _ordered(_to_registers(raw), point)


def _as_bool(point: ModbusPoint, value: Value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in {0, 1}:
        return bool(value)
    raise CodecError(f"{point.id}: expected a bool, got {value!r}")


def _as_number(point: ModbusPoint, value: Value) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"{point.id}: expected a number, got {type(value).__name__}")
    if point.type.startswith("float"):
        if point.type == "float32" and math.isfinite(value) and abs(value) > 3.4028234663852886e38:
            raise CodecError(f"{point.id}: {value} does not fit float32")
        return float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CodecError(f"{point.id}: {value} is not a finite number")
        value = round(value)
    low, high = _INT_RANGE[point.type]
    if not low <= value <= high:
        raise CodecError(f"{point.id}: {value} is outside {point.type} [{low}, {high}]")
    return value


def _ordered(registers: Sequence[int], point: ModbusPoint) -> list[int]:
    return list(reversed(registers)) if point.word_order == "little" else list(registers)


def _to_bytes(registers: Sequence[int]) -> bytes:
    return struct.pack(f">{len(registers)}H", *registers)


def _to_registers(raw: bytes) -> list[int]:
    return list(struct.unpack(f">{len(raw) // 2}H", raw))


def _swap_bytes(raw: bytes) -> bytes:
    out = bytearray(raw)
    out[0::2], out[1::2] = raw[1::2], raw[0::2]
    return bytes(out)
