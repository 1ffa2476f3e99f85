"""Values that flow through the daemon: pure, frozen, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TypeAlias

__all__ = ["Availability", "PointRef", "Quality", "Reading", "Sample", "Value"]

Value: TypeAlias = bool | int | float | str | bytes


class Quality(StrEnum):
    """How far a reading can be trusted."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Availability(StrEnum):
    """What the field says about a device; the values are the registry's statuses.

    OFFLINE: the device stopped answering (or was not heard from) while its link works.
    ABNORMAL: the link itself is gone (port unplugged, converter unreachable, adapter lost).
    """

    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"
    ABNORMAL = "ABNORMAL"


@dataclass(frozen=True, slots=True)
class PointRef:
    """Where a value comes from: connection id, device id (config key), point id."""

    connection: str
    device: str
    point: str

    def __str__(self) -> str:
        return f"{self.connection}/{self.device}/{self.point}"


@dataclass(frozen=True, slots=True)
class Sample:
    """A decoded, unscaled value as a driver read it."""

    point: str
    value: Value
    at: datetime


@dataclass(frozen=True, slots=True)
class Reading:
    """A normalised value inside the daemon."""

    ref: PointRef
    value: Value | None
    unit: str | None
    at: datetime
    quality: Quality = Quality.GOOD
