"""Sample -> Reading: scale and offset, once, for every driver."""

from __future__ import annotations

import functools

from gatewayd.driver import PointConfig
from gatewayd.model import PointRef, Quality, Reading, Sample, Value

__all__ = ["normalise", "to_raw"]


def normalise(connection: str, device: str, point: PointConfig, sample: Sample) -> Reading:
    """Apply the point's scale and offset to numeric values; others pass unchanged.

    Every value of every poll comes through here (50,000 a second on a busy gateway), so
    the common case, a point without scale or offset, skips the numeric checks, and the
    immutable PointRef of a point is made once.
    """
    value = sample.value
    if (
        (point.scale != 1.0 or point.offset != 0.0)
        and isinstance(value, _NUMBER)
        and not isinstance(value, bool)
    ):
        scaled = value * point.scale + point.offset
        # 2301 * 0.1 is 230.10000000000002 in binary floating point; 12 significant digits
        # are more than any field device measures and drop that noise.
        value = float(f"{scaled:.12g}")
    quality = Quality.GOOD
    if isinstance(value, float) and value != value:  # NaN from a sensor  # noqa: PLR0124
        quality = Quality.BAD
    return Reading(
        ref=_ref(connection, device, sample.point),
        value=value,
        unit=point.unit,
        at=sample.at,
        quality=quality,
    )


_NUMBER = (int, float)


@functools.lru_cache(maxsize=65536)
def _ref(connection: str, device: str, point: str) -> PointRef:
    return PointRef(connection, device, point)


def to_raw(point: PointConfig, value: Value) -> Value:
    """Undo scale and offset for a write: raw = (value - offset) / scale.

    Non-numeric values pass unchanged; a zero scale cannot be inverted and passes the
    value unchanged too (the driver's type check then decides).
    """
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if not numeric or (point.scale == 1.0 and point.offset == 0.0) or point.scale == 0:
        return value
    raw = (value - point.offset) / point.scale  # type: ignore[operator]
    return int(raw) if isinstance(value, int) and raw == int(raw) else raw
