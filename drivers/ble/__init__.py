"""Bluetooth Low Energy through bleak: advertisements and GATT, one manager per adapter.

Advertisements carry BTHome v2, manufacturer and service data; connected devices are read,
notify and are written over GATT.
"""

from __future__ import annotations

from drivers.ble.config import BleConnection, BleDevice, BlePoint
from drivers.ble.fields import FieldSpec
from drivers.ble.manager import BleManager
from drivers.ble.session import BleDriver, BleSession
from drivers.ble.sightings import Discovered
from gatewayd.driver import DriverSpec

__all__ = [
    "SPEC",
    "BleConnection",
    "BleDevice",
    "BleDriver",
    "BleManager",
    "BlePoint",
    "BleSession",
    "Discovered",
    "FieldSpec",
]

SPEC = DriverSpec(
    kind="ble", config=BleConnection, device=BleDevice, point=BlePoint, build=BleDriver
)
