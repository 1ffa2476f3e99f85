"""Configuration of a BLE adapter, its devices and their points."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from drivers.ble.bthome import MEASUREMENTS
from drivers.ble.fields import FieldSpec
from gatewayd.backoff import Backoff
from gatewayd.driver import ConnectionConfig, DeviceConfig, PointConfig

__all__ = ["BleConnection", "BleDevice", "BlePoint", "PointSource", "normalise_uuid"]

PointSource = Literal["bthome", "manufacturer", "service_data", "rssi", "last_seen", "gatt"]

_ADVERTISED = frozenset({"bthome", "manufacturer", "service_data", "rssi", "last_seen"})
_BASE_UUID = "-0000-1000-8000-00805f9b34fb"
_UUID128 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def normalise_uuid(text: str) -> str:
    """A 16-, 32- or 128-bit UUID as bleak spells it: 128-bit, lower case, dashed.

    Raises:
        ValueError: not a UUID.
    """
    raw = text.strip().lower().removeprefix("0x")
    if re.fullmatch(r"[0-9a-f]{4}", raw):
        return f"0000{raw}{_BASE_UUID}"
    if re.fullmatch(r"[0-9a-f]{8}", raw):
        return f"{raw}{_BASE_UUID}"
    if _UUID128.match(raw):
        return raw
    msg = f"{text!r} is not a 16-bit, 32-bit or 128-bit UUID"
    raise ValueError(msg)


class BlePoint(PointConfig):
    """One value from a BLE device: from its advertisements or from a GATT characteristic."""

    source: PointSource = Field(
        description=(
            "bthome: a BTHome v2 measurement; manufacturer / service_data: a field of the "
            "advertised data; rssi / last_seen: signal strength / time of the latest "
            "advertisement; gatt: a characteristic value, polled or notified."
        )
    )
    measurement: str | None = Field(
        default=None, description="bthome: measurement name, e.g. temperature, humidity."
    )
    index: int = Field(
        default=0, ge=0, description="bthome: which occurrence, when a packet repeats one."
    )
    company_id: int | None = Field(
        default=None, ge=0, le=0xFFFF, description="manufacturer: Bluetooth SIG company id."
    )
    service_uuid: str | None = Field(
        default=None, description="service_data: the service UUID the data is advertised under."
    )
    characteristic: str | None = Field(default=None, description="gatt: characteristic UUID.")
    field: FieldSpec | None = Field(
        default=None,
        description="manufacturer / service_data / gatt: where the value sits and its type.",
    )
    notify: bool = Field(
        default=False, description="gatt: take values from notifications instead of polling."
    )
    readable: bool = Field(
        default=True,
        description="gatt: false for write-only characteristics (commands); never polled.",
    )
    write_response: bool = Field(
        default=True, description="gatt, writable: write with response (false: without)."
    )

    @field_validator("service_uuid", "characteristic")
    @classmethod
    def _uuid(cls, value: str | None) -> str | None:
        return None if value is None else normalise_uuid(value)

    @model_validator(mode="after")
    def _complete(self) -> BlePoint:
        source = self.source
        if source == "bthome":
            if self.measurement is None:
                raise ValueError("bthome points need `measurement`")
            if self.measurement not in MEASUREMENTS:
                msg = f"unknown BTHome measurement {self.measurement!r}"
                raise ValueError(msg)
        if source == "manufacturer" and (self.company_id is None or self.field is None):
            raise ValueError("manufacturer points need `company_id` and `field`")
        if source == "service_data" and (self.service_uuid is None or self.field is None):
            raise ValueError("service_data points need `service_uuid` and `field`")
        if source == "gatt" and (self.characteristic is None or self.field is None):
            raise ValueError("gatt points need `characteristic` and `field`")
        if source != "gatt" and (self.writable or self.notify or not self.readable):
            msg = f"{source} points are advertised: `writable`, `notify`, `readable` are for gatt"
            raise ValueError(msg)
        if not self.readable and (self.notify or not self.writable):
            raise ValueError("a point that is not readable must be writable and not notify")
        if self.writable and self.field is not None and self.field.offset != 0:
            raise ValueError("writable points need a field at offset 0 (the whole value)")
        return self

    @property
    def push(self) -> bool:
        """Not polled: values arrive by themselves (advertisements, notifications), or never."""
        return self.source in _ADVERTISED or self.notify or not self.readable

    @property
    def advertised(self) -> bool:
        """The value comes from advertisements, not from a connection."""
        return self.source in _ADVERTISED


class BleDevice(DeviceConfig[BlePoint]):
    """A BLE peripheral, known by its address."""

    address: str = Field(
        pattern=r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$",
        description="Bluetooth address, e.g. A4:C1:38:00:11:22.",
    )
    offline_after_s: float = Field(
        default=300.0,
        gt=0,
        description="With advertised points: unavailable after this long without an advertisement.",
    )

    @field_validator("address")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


class BleConnection(ConnectionConfig):
    """One Bluetooth adapter and the devices it serves."""

    driver: Literal["ble"] = Field(description="Bluetooth Low Energy through bleak (BlueZ).")
    adapter: str = Field(default="hci0", description="Bluetooth adapter (BlueZ name).")
    slots: int = Field(
        default=3, ge=1, le=32, description="GATT connections the adapter holds at once."
    )
    scan_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Before (re)connecting, wait this long for a fresh advertisement.",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, description="Bound on one connect.")
    io_timeout_s: float = Field(
        default=5.0, gt=0, description="Bound on one GATT read, write or subscribe."
    )
    turn_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "A notifying device keeps its slot at most this long while others wait for one; "
            "a read waits at most this long for a slot."
        ),
    )
    retry_initial_s: float = Field(
        default=5.0, gt=0, description="Per-device delay after a failed connect, doubling."
    )
    retry_max_s: float = Field(default=300.0, gt=0, description="Cap of the per-device delay.")
    devices: dict[str, BleDevice] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid(self) -> BleConnection:
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must be at least retry_initial_s")
        seen: dict[str, str] = {}
        for dev_id, device in self.devices.items():
            if device.address in seen:
                msg = f"devices.{dev_id}.address: {device.address} is also {seen[device.address]}"
                raise ValueError(msg)
            seen[device.address] = dev_id
        return self

    @property
    def retry(self) -> Backoff:
        """Per-device reconnect policy."""
        return Backoff(initial_s=self.retry_initial_s, max_s=self.retry_max_s)
