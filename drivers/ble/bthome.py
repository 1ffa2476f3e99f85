"""BTHome v2 advertisements (service data under UUID 0xFCD2), unencrypted.

A packet is one device-information byte followed by objects: an object id and a value whose
size and scale the id fixes. An unknown id ends parsing, because the size of what follows
cannot be known. Encrypted packets are recognised and refused (no bind keys here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from gatewayd.model import Value

__all__ = [
    "BTHOME_UUID",
    "MEASUREMENTS",
    "BthomeError",
    "BthomeObject",
    "BthomePacket",
    "parse",
]

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"


class BthomeError(ValueError):
    """The packet cannot be decoded (encrypted, wrong version, truncated)."""


class _Kind(NamedTuple):
    name: str
    size: int
    signed: bool = False
    factor: float = 1.0
    binary: bool = False


def _b(name: str) -> _Kind:
    return _Kind(name, 1, binary=True)


# Object ids of the BTHome v2 format: name, size in bytes, signedness, factor.
_OBJECTS: dict[int, _Kind] = {
    0x00: _Kind("packet_id", 1),
    0x01: _Kind("battery", 1),
    0x02: _Kind("temperature", 2, True, 0.01),
    0x03: _Kind("humidity", 2, False, 0.01),
    0x04: _Kind("pressure", 3, False, 0.01),
    0x05: _Kind("illuminance", 3, False, 0.01),
    0x06: _Kind("mass_kg", 2, False, 0.01),
    0x07: _Kind("mass_lb", 2, False, 0.01),
    0x08: _Kind("dewpoint", 2, True, 0.01),
    0x09: _Kind("count", 1),
    0x0A: _Kind("energy", 3, False, 0.001),
    0x0B: _Kind("power", 3, False, 0.01),
    0x0C: _Kind("voltage", 2, False, 0.001),
    0x0D: _Kind("pm2_5", 2),
    0x0E: _Kind("pm10", 2),
    0x0F: _b("generic_boolean"),
    0x10: _b("power_on"),
    0x11: _b("opening"),
    0x12: _Kind("co2", 2),
    0x13: _Kind("tvoc", 2),
    0x14: _Kind("moisture", 2, False, 0.01),
    0x15: _b("battery_low"),
    0x16: _b("battery_charging"),
    0x17: _b("carbon_monoxide"),
    0x18: _b("cold"),
    0x19: _b("connectivity"),
    0x1A: _b("door"),
    0x1B: _b("garage_door"),
    0x1C: _b("gas_detected"),
    0x1D: _b("heat"),
    0x1E: _b("light"),
    0x1F: _b("lock"),
    0x20: _b("moisture_detected"),
    0x21: _b("motion"),
    0x22: _b("moving"),
    0x23: _b("occupancy"),
    0x24: _b("plug"),
    0x25: _b("presence"),
    0x26: _b("problem"),
    0x27: _b("running"),
    0x28: _b("safety"),
    0x29: _b("smoke"),
    0x2A: _b("sound"),
    0x2B: _b("tamper"),
    0x2C: _b("vibration"),
    0x2D: _b("window"),
    0x2E: _Kind("humidity", 1),
    0x2F: _Kind("moisture", 1),
    0x3A: _Kind("button", 1),
    0x3C: _Kind("dimmer", 2),
    0x3D: _Kind("count", 2),
    0x3E: _Kind("count", 4),
    0x3F: _Kind("rotation", 2, True, 0.1),
    0x40: _Kind("distance_mm", 2),
    0x41: _Kind("distance_m", 2, False, 0.1),
    0x42: _Kind("duration", 3, False, 0.001),
    0x43: _Kind("current", 2, False, 0.001),
    0x44: _Kind("speed", 2, False, 0.01),
    0x45: _Kind("temperature", 2, True, 0.1),
    0x46: _Kind("uv_index", 1, False, 0.1),
    0x47: _Kind("volume", 2, False, 0.1),
    0x48: _Kind("volume_ml", 2),
    0x49: _Kind("volume_flow_rate", 2, False, 0.001),
    0x4A: _Kind("voltage", 2, False, 0.1),
    0x4B: _Kind("gas", 3, False, 0.001),
    0x4C: _Kind("gas", 4, False, 0.001),
    0x4D: _Kind("energy", 4, False, 0.001),
    0x4E: _Kind("volume", 4, False, 0.001),
    0x4F: _Kind("water", 4, False, 0.001),
    0x50: _Kind("timestamp", 4),
    0x51: _Kind("acceleration", 2, False, 0.001),
    0x52: _Kind("gyroscope", 2, False, 0.001),
    0x55: _Kind("volume_storage", 4, False, 0.001),
    0x56: _Kind("conductivity", 2),
    0x57: _Kind("temperature", 1, True),
    0x58: _Kind("temperature", 1, True, 0.35),
    0x59: _Kind("count", 1, True),
    0x5A: _Kind("count", 2, True),
    0x5B: _Kind("count", 4, True),
    0x5C: _Kind("power", 4, True, 0.01),
    0x5D: _Kind("current", 2, True, 0.001),
    0x5E: _Kind("direction", 2, False, 0.01),
    0x5F: _Kind("precipitation", 2, False, 0.1),
    0x60: _Kind("channel", 1),
    0x61: _Kind("rotational_speed", 2),
    0xF0: _Kind("device_type", 2),
    0xF1: _Kind("firmware_version", 4),
    0xF2: _Kind("firmware_version", 3),
}
_VARIABLE = {0x53: "text", 0x54: "raw"}

MEASUREMENTS: frozenset[str] = frozenset(
    {kind.name for kind in _OBJECTS.values()} | set(_VARIABLE.values())
)
"""Every measurement name a point may ask for."""


@dataclass(frozen=True, slots=True)
class BthomeObject:
    """One decoded measurement."""

    name: str
    value: Value


@dataclass(frozen=True, slots=True)
class BthomePacket:
    """A decoded packet: its objects in order, and whether more followed that were unknown."""

    objects: tuple[BthomeObject, ...]
    trigger_based: bool
    truncated_at: int | None = None

    def find(self, name: str, index: int = 0) -> Value | None:
        """The `index`-th value of a measurement in this packet, if present."""
        found = [o.value for o in self.objects if o.name == name]
        return found[index] if index < len(found) else None

    @property
    def packet_id(self) -> Value | None:
        """The sender's packet counter, if it sends one (repeats carry the same id)."""
        return self.find("packet_id")


def parse(data: bytes) -> BthomePacket:
    """Decode BTHome v2 service data (the bytes after the 0xFCD2 UUID).

    Raises:
        BthomeError: empty, not version 2, or encrypted.
    """
    if not data:
        raise BthomeError("empty BTHome service data")
    info = data[0]
    if info >> 5 != 2:
        msg = f"BTHome version {info >> 5} is not supported (only v2)"
        raise BthomeError(msg)
    if info & 0x01:
        raise BthomeError("encrypted BTHome packet (bind keys are not supported)")
    objects: list[BthomeObject] = []
    i = 1
    while i < len(data):
        object_id = data[i]
        if object_id in _VARIABLE:
            if i + 1 >= len(data):
                return BthomePacket(tuple(objects), bool(info & 0x04), i)
            length = data[i + 1]
            body = data[i + 2 : i + 2 + length]
            if len(body) < length:
                return BthomePacket(tuple(objects), bool(info & 0x04), i)
            value: Value = body.decode("utf-8", "replace") if object_id == 0x53 else bytes(body)
            objects.append(BthomeObject(_VARIABLE[object_id], value))
            i += 2 + length
            continue
        kind = _OBJECTS.get(object_id)
        if kind is None or i + 1 + kind.size > len(data):
            return BthomePacket(tuple(objects), bool(info & 0x04), i)
        raw = int.from_bytes(data[i + 1 : i + 1 + kind.size], "little", signed=kind.signed)
        objects.append(BthomeObject(kind.name, _scaled(kind, raw)))
        i += 1 + kind.size
    return BthomePacket(tuple(objects), bool(info & 0x04))


def _scaled(kind: _Kind, raw: int) -> Value:
    if kind.binary:
        return raw != 0
    if kind.factor == 1.0:
        return raw
    digits = len(repr(kind.factor).split(".")[1])
    return round(raw * kind.factor, digits)
