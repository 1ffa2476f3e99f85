"""Bytes from the air -> samples: advertisements and characteristic values.

A field device may send anything; a value that cannot be decoded is skipped and logged once
(when it starts failing and when it recovers), never raised into the session.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from drivers.ble import bthome
from drivers.ble.config import BleDevice, BlePoint
from drivers.ble.sightings import Sighting
from gatewayd.model import Sample, Value

__all__ = ["AdvertDecoder", "Complaints", "decode_advertised", "decode_gatt"]

log = logging.getLogger(__name__)


class Complaints:
    """Remembers which points fail to decode, so each failure is logged once."""

    def __init__(self) -> None:
        self._failing: set[tuple[str, str]] = set()

    def failed(self, device: str, point: str, reason: str) -> None:
        """A point could not be decoded."""
        if (device, point) not in self._failing:
            self._failing.add((device, point))
            log.warning("%s/%s: cannot decode: %s", device, point, reason)

    def ok(self, device: str, point: str) -> None:
        """A point decoded."""
        if (device, point) in self._failing:
            self._failing.discard((device, point))
            log.info("%s/%s: decoding again", device, point)


def decode_gatt(
    device: BleDevice,
    points: Sequence[BlePoint],
    data: bytes,
    at: datetime,
    complaints: Complaints,
) -> list[Sample]:
    """Samples of the points that share one characteristic value."""
    samples: list[Sample] = []
    for point in points:
        assert point.field is not None  # guaranteed by BlePoint's validation
        try:
            value = point.field.decode(data)
        except ValueError as exc:
            complaints.failed(device.id, point.id, str(exc))
            continue
        complaints.ok(device.id, point.id)
        samples.append(Sample(point.id, value, at))
    return samples


def decode_advertised(
    device: BleDevice,
    points: Sequence[BlePoint],
    sighting: Sighting,
    complaints: Complaints,
) -> list[Sample]:
    """Samples of the advertised points present in one advertisement."""
    adv = sighting.advertisement
    packet: bthome.BthomePacket | None = None
    bthome_error: str | None = None
    raw = adv.service_data.get(bthome.BTHOME_UUID)
    if raw is not None:
        try:
            packet = bthome.parse(raw)
        except bthome.BthomeError as exc:
            bthome_error = str(exc)
    samples: list[Sample] = []
    for point in points:
        value: Value | None = None
        try:
            value = _value(point, sighting, packet, bthome_error)
        except ValueError as exc:
            complaints.failed(device.id, point.id, str(exc))
            continue
        if value is not None:
            complaints.ok(device.id, point.id)
            samples.append(Sample(point.id, value, sighting.at))
    return samples


def _value(
    point: BlePoint,
    sighting: Sighting,
    packet: bthome.BthomePacket | None,
    bthome_error: str | None,
) -> Value | None:
    """The point's value in this advertisement; None if the advertisement does not carry it."""
    adv = sighting.advertisement
    data: bytes | None = None
    match point.source:
        case "rssi":
            return adv.rssi
        case "last_seen":
            return sighting.at.isoformat()
        case "bthome":
            if bthome_error is not None:
                raise ValueError(bthome_error)
            if packet is None or point.measurement is None:
                return None
            return packet.find(point.measurement, point.index)
        case "manufacturer":
            data = adv.manufacturer_data.get(point.company_id or 0)
        case "service_data":
            data = adv.service_data.get(point.service_uuid or "")
    if data is None or point.field is None:
        return None
    return point.field.decode(data)


class AdvertDecoder:
    """Turns one device's advertisements into samples, skipping repeats.

    Devices repeat the same advertisement many times a second; a repeat is passed on only
    once per device `interval_s`, so signal strength and liveness still refresh.

    Args:
        device: the device's configuration.
        points: its advertised points.
        complaints: where decode failures are remembered.
    """

    def __init__(
        self, device: BleDevice, points: Sequence[BlePoint], complaints: Complaints
    ) -> None:
        self._device = device
        self._points = list(points)
        self._complaints = complaints
        self._last_key: object = None
        self._last_at = float("-inf")

    def samples(self, sighting: Sighting) -> list[Sample]:
        """Samples of this advertisement, or none if it repeats the previous one too soon."""
        adv = sighting.advertisement
        key = (sorted(adv.manufacturer_data.items()), sorted(adv.service_data.items()))
        if key == self._last_key and sighting.mono - self._last_at < self._device.interval_s:
            return []
        self._last_key = key
        self._last_at = sighting.mono
        return decode_advertised(self._device, self._points, sighting, self._complaints)
