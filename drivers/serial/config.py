"""Configuration of a serial connection: the port, its framing, its devices and points.

Port settings (baud rate, character format, RS-485) belong to the connection because the
port is one physical resource; how a frame is parsed and how a device is asked belong to the
device, since several devices may share one RS-485 line.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.serial.framing import Framing, LineFraming
from drivers.serial.parsers import Parser, RegexParser
from drivers.serial.templates import check_template
from gatewayd.driver import ConnectionConfig, DeviceConfig, PointConfig

__all__ = ["Rs485Settings", "SerialConnection", "SerialDevice", "SerialPoint"]

_REQUEST_FIELDS = frozenset({"address", "point"})
_WRITE_FIELDS = frozenset({"address", "point", "value"})


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            msg = f"{value!r}: {exc}"
            raise ValueError(msg) from exc
    return value


class SerialPoint(PointConfig):
    """A value taken from a field of a parsed frame."""

    field: str | None = Field(
        default=None, description="Parser field (dotted path for JSON); defaults to the point id."
    )
    push: bool = Field(
        default=False, description="Taken from the device's unsolicited stream instead of polled."
    )
    request: str | None = Field(
        default=None, description="Request template for this point; defaults to the device's."
    )
    write: str | None = Field(
        default=None,
        description="Command template sent on a write, e.g. 'SET {value:.1f}'; "
        "fields: address, point, value.",
    )
    write_ack: str | None = Field(
        default=None,
        description="Regex the reply to a write must match; no reply is awaited when unset.",
    )

    @field_validator("request")
    @classmethod
    def _request(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value, allowed=_REQUEST_FIELDS)

    @field_validator("write")
    @classmethod
    def _write(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value, allowed=_WRITE_FIELDS)

    @field_validator("write_ack")
    @classmethod
    def _ack(cls, value: str | None) -> str | None:
        return _check_regex(value)

    @model_validator(mode="after")
    def _consistent(self) -> SerialPoint:
        if self.writable and self.write is None:
            raise ValueError("writable: a writable point needs a `write` command template")
        if self.push and self.request is not None:
            raise ValueError("request: a push point is not polled")
        return self


class SerialDevice(DeviceConfig[SerialPoint]):
    """A field device on the port: how it is asked, and how its frames are read."""

    address: str = Field(default="", description="Bus address, available to templates.")
    parser: Parser = Field(
        default_factory=RegexParser, description="How frames from this device are decoded."
    )
    request: str | None = Field(
        default=None,
        description="Request template sent to poll; fields: address, point. "
        "Without one, only push points are allowed.",
    )
    reply_match: str | None = Field(
        default=None,
        description="Regex a frame must match (searched in its text) to count as the reply.",
    )
    match: str | None = Field(
        default=None,
        description="Regex selecting this device's unsolicited frames on a shared port.",
    )
    timeout_s: float = Field(default=1.0, gt=0, le=60, description="Wait for one reply.")
    retries: int = Field(default=2, ge=0, le=10, description="Requests repeated after a timeout.")
    stream_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="A push device silent this long is reported unavailable.",
    )

    @field_validator("request")
    @classmethod
    def _request(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value, allowed=_REQUEST_FIELDS)

    @field_validator("reply_match", "match")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return _check_regex(value)

    @model_validator(mode="after")
    def _polled_points_have_requests(self) -> SerialDevice:
        for point in self.points.values():
            if not point.push and point.request is None and self.request is None:
                msg = (
                    f"points.{point.id}: polled, but neither the point nor the device "
                    "has a `request` (set one, or `push: true`)"
                )
                raise ValueError(msg)
        return self


class Rs485Settings(BaseModel):
    """RS-485 direction control done by the kernel driver (half-duplex transceivers)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=False, description="Put the port in kernel RS-485 mode.")
    rts_level_for_tx: bool = Field(default=True, description="RTS level while sending.")
    rts_level_for_rx: bool = Field(default=False, description="RTS level while receiving.")
    delay_before_tx_s: float | None = Field(
        default=None, ge=0, le=1, description="Delay after raising RTS, before sending."
    )
    delay_before_rx_s: float | None = Field(
        default=None, ge=0, le=1, description="Delay after sending, before dropping RTS."
    )
    loopback: bool = Field(default=False, description="Receive own frames (diagnostics).")


class SerialConnection(ConnectionConfig):
    """One serial port (RS-232, RS-485, USB serial) and the devices on it."""

    driver: Literal["serial"] = Field(description="Text or binary frames over a serial port.")
    port: str = Field(
        description="Device path (prefer /dev/serial/by-id/...) or a pyserial URL.",
        min_length=1,
    )
    baudrate: int = Field(default=9600, ge=50, le=4_000_000, description="Bits per second.")
    bytesize: Literal[5, 6, 7, 8] = Field(default=8, description="Data bits per character.")
    parity: Literal["none", "even", "odd", "mark", "space"] = Field(
        default="none", description="Parity bit of each character."
    )
    stopbits: float = Field(default=1.0, description="Stop bits per character: 1, 1.5 or 2.")
    flow_control: Literal["none", "rtscts", "xonxoff"] = Field(
        default="none", description="Hardware (RTS/CTS) or software (XON/XOFF) flow control."
    )
    rs485: Rs485Settings = Field(default_factory=Rs485Settings)
    framing: Framing = Field(
        default_factory=LineFraming, description="How the byte stream is cut into frames."
    )
    write_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="Bound on sending one frame."
    )
    devices: dict[str, SerialDevice] = Field(default_factory=dict)

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, value: float) -> float:
        if value not in {1, 1.5, 2}:
            msg = f"{value}: must be 1, 1.5 or 2"
            raise ValueError(msg)
        return value
