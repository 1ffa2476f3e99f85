"""Struct-like field specs: where a value sits in a byte string and how it is encoded.

One spec type serves manufacturer data, service data and GATT characteristic values, so a
field is described the same way wherever its bytes come from. BLE is little-endian unless
a device says otherwise.
"""

from __future__ import annotations

import struct
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gatewayd.model import Value

__all__ = ["FieldSpec", "FieldType"]

FieldType = Literal[
    "u8", "s8", "u16", "s16", "u24", "s24", "u32", "s32", "u64", "s64",
    "f16", "f32", "f64", "bool", "utf8", "bytes",
]  # fmt: skip

_INT_SIZES = {"8": 1, "16": 2, "24": 3, "32": 4, "64": 8}
_FLOAT_CODES = {"f16": ("e", 2), "f32": ("f", 4), "f64": ("d", 8)}


class FieldSpec(BaseModel):
    """One value inside a byte string. A bare string (`s16`) is shorthand for `{type: s16}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: FieldType = Field(
        description="u8..u64 / s8..s64 integers, f16/f32/f64 floats, bool, utf8 text, bytes."
    )
    offset: int = Field(default=0, ge=0, description="Byte offset of the field.")
    byte_order: Literal["little", "big"] = Field(
        default="little", description="Byte order of multi-byte numbers."
    )
    length: int | None = Field(
        default=None, ge=1, description="Size of utf8/bytes fields; default: to the end."
    )
    bit: int | None = Field(
        default=None, ge=0, le=7, description="bool only: test this bit of the byte at offset."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"type": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if self.length is not None and self.type not in {"utf8", "bytes"}:
            msg = f"length applies to utf8 and bytes fields, not {self.type}"
            raise ValueError(msg)
        if self.bit is not None and self.type != "bool":
            msg = f"bit applies to bool fields, not {self.type}"
            raise ValueError(msg)
        return self

    @property
    def size(self) -> int | None:
        """Bytes the field takes, or None when it runs to the end of the data."""
        if self.type in {"utf8", "bytes"}:
            return self.length
        if self.type == "bool":
            return 1
        if self.type in _FLOAT_CODES:
            return _FLOAT_CODES[self.type][1]
        return _INT_SIZES[self.type[1:]]

    def decode(self, data: bytes) -> Value:
        """Extract the value.

        Raises:
            ValueError: the data is too short for the field.
        """
        size = self.size
        end = len(data) if size is None else self.offset + size
        if end > len(data) or self.offset > len(data):
            msg = f"{self.type} at offset {self.offset} needs {end} bytes, got {len(data)}"
            raise ValueError(msg)
        raw = bytes(data[self.offset : end])
        if self.type == "bytes":
            return raw
        if self.type == "utf8":
            return raw.decode("utf-8", errors="replace").rstrip("\x00")
        if self.type == "bool":
            return bool(raw[0] >> self.bit & 1) if self.bit is not None else raw[0] != 0
        if self.type in _FLOAT_CODES:
            prefix = "<" if self.byte_order == "little" else ">"
            return float(struct.unpack(prefix + _FLOAT_CODES[self.type][0], raw)[0])
        return int.from_bytes(raw, self.byte_order, signed=self.type.startswith("s"))

    def encode(self, value: Value) -> bytes:
        """Encode a value for writing (the field's bytes alone; its offset is the caller's).

        Raises:
            ValueError: the value does not fit the field's type.
        """
        if self.type == "bytes":
            return _sized(_as_bytes(value), self.length)
        if self.type == "utf8":
            if not isinstance(value, str):
                msg = f"utf8 field needs text, got {value!r}"
                raise ValueError(msg)
            return _sized(value.encode(), self.length)
        if self.type == "bool":
            return self._encode_bool(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            msg = f"{self.type} field needs a number, got {value!r}"
            raise ValueError(msg)  # noqa: TRY004 - a refused value, not a programming error
        if self.type in _FLOAT_CODES:
            return self._encode_float(float(value))
        return self._encode_int(value)

    def _encode_bool(self, value: Value) -> bytes:
        if value not in (True, False) or not isinstance(value, bool | int):
            msg = f"bool field needs true/false, got {value!r}"
            raise ValueError(msg)
        return bytes([(1 << self.bit) if (value and self.bit is not None) else int(value)])

    def _encode_float(self, value: float) -> bytes:
        prefix = "<" if self.byte_order == "little" else ">"
        try:
            return struct.pack(prefix + _FLOAT_CODES[self.type][0], value)
        except (OverflowError, struct.error) as exc:
            msg = f"{value!r} does not fit {self.type}"
            raise ValueError(msg) from exc

    def _encode_int(self, value: float) -> bytes:
        number = round(value)
        if number != value:
            msg = f"{self.type} field needs a whole number, got {value!r}"
            raise ValueError(msg)
        size = _INT_SIZES[self.type[1:]]
        try:
            return number.to_bytes(size, self.byte_order, signed=self.type.startswith("s"))
        except OverflowError as exc:
            msg = f"{value!r} is out of range for {self.type}"
            raise ValueError(msg) from exc


def _as_bytes(value: Value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError as exc:
            msg = f"bytes field needs hex text, got {value!r}"
            raise ValueError(msg) from exc
    msg = f"bytes field needs bytes or hex text, got {value!r}"
    raise ValueError(msg)


def _sized(raw: bytes, length: int | None) -> bytes:
    if length is None:
        return raw
    if len(raw) > length:
        msg = f"{len(raw)} bytes do not fit a {length}-byte field"
        raise ValueError(msg)
    return raw.ljust(length, b"\x00")
