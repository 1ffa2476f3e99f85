"""When a reading is worth sending: on change beyond a deadband, and at least every heartbeat.

A pure policy object: it remembers the last *reported* value per point and is told the time,
so it is tested without waiting. Quality changes are always reported (a point going bad
must not hide behind a deadband).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gatewayd.driver import PointConfig
from gatewayd.model import Quality, Reading, Value

__all__ = ["ReportPolicy", "ReportRule"]


@dataclass(frozen=True, slots=True)
class ReportRule:
    """How one point reports.

    Args:
        deadband: smallest absolute change, in the point's unit, that is reported.
        deadband_percent: smallest change relative to the last reported value, in percent.
        heartbeat_s: report an unchanged value again after this long (None: never).
    """

    deadband: float = 0.0
    deadband_percent: float = 0.0
    heartbeat_s: float | None = None

    @classmethod
    def for_point(cls, point: PointConfig) -> ReportRule:
        """The rule a point's configuration asks for."""
        return cls(
            deadband=point.deadband or 0.0,
            deadband_percent=point.deadband_percent or 0.0,
            heartbeat_s=point.heartbeat_s,
        )


@dataclass(slots=True)
class _Last:
    value: Value | None
    quality: Quality
    at: float


class ReportPolicy:
    """Decides per reading whether it is reported; remembers what was."""

    def __init__(self) -> None:
        self._last: dict[str, _Last] = {}

    def accept(self, reading: Reading, rule: ReportRule, now: float) -> bool:
        """Whether to report `reading` at monotonic time `now`; remembers it if so."""
        key = str(reading.ref)
        last = self._last.get(key)
        if last is None or self._differs(last, reading, rule) or _due(last, rule, now):
            self._last[key] = _Last(reading.value, reading.quality, now)
            return True
        return False

    def forget(self, key: str) -> None:
        """Drop a point's memory, so its next reading is reported (after a reconnect)."""
        self._last.pop(key, None)

    @staticmethod
    def _differs(last: _Last, reading: Reading, rule: ReportRule) -> bool:
        if reading.quality != last.quality:
            return True
        old, new = last.value, reading.value
        if not (_is_number(old) and _is_number(new)):
            return bool(old != new or type(old) is not type(new))
        delta = abs(float(new) - float(old))  # type: ignore[arg-type]
        if math.isnan(delta):
            return not (math.isnan(float(new)) and math.isnan(float(old)))  # type: ignore[arg-type]
        if delta == 0:
            return False
        if rule.deadband and delta < rule.deadband:
            return False
        return not (rule.deadband_percent and delta < abs(float(old)) * rule.deadband_percent / 100)  # type: ignore[arg-type]


def _is_number(value: Value | None) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _due(last: _Last, rule: ReportRule, now: float) -> bool:
    return rule.heartbeat_s is not None and now - last.at >= rule.heartbeat_s
