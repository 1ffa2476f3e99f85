"""Sample -> Reading: scale and offset, once, for every driver."""

from __future__ import annotations

from gatewayd.driver import PointConfig
from gatewayd.model import PointRef, Quality, Reading, Sample

__all__ = ["normalise"]


def normalise(connection: str, device: str, point: PointConfig, sample: Sample) -> Reading:
    """Apply the point's scale and offset to numeric values; others pass unchanged."""
    value = sample.value
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if numeric and (point.scale != 1.0 or point.offset != 0.0):
        value = value * point.scale + point.offset  # type: ignore[operator]
    quality = Quality.GOOD
    if isinstance(value, float) and value != value:  # NaN from a sensor  # noqa: PLR0124
        quality = Quality.BAD
    return Reading(
        ref=PointRef(connection, device, sample.point),
        value=value,
        unit=point.unit,
        at=sample.at,
        quality=quality,
    )
