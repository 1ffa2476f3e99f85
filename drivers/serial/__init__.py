"""Text or binary frames over RS-232, RS-485 or USB serial ports."""

from __future__ import annotations

from drivers.serial.config import SerialConnection, SerialDevice, SerialPoint
from drivers.serial.driver import SerialDriver
from drivers.serial.session import SerialCounters, SerialSession
from gatewayd.driver import DriverSpec

__all__ = [
    "SPEC",
    "SerialConnection",
    "SerialCounters",
    "SerialDevice",
    "SerialDriver",
    "SerialPoint",
    "SerialSession",
]

SPEC = DriverSpec(
    kind="serial",
    config=SerialConnection,
    device=SerialDevice,
    point=SerialPoint,
    build=SerialDriver,
)
