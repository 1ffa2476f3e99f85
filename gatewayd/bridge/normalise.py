"""Sample -> Reading: scale and offset, once, for every driver.

A scaled value is a measurement, not a product of binary floats: 217 x 0.1 is sent as 21.7,
not 21.700000000000003. A raw integer is rounded to the decimal places its point's scale and
offset imply (0.1 -> 1, 0.005 -> 3, an offset of -273.15 -> 2); a raw decimal keeps its own
places (45.5 x 0.01 is 0.455) with the float noise dropped; a point's own `decimals` rounds
every value. The places are worked out once per point, so a value costs one `round()`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from decimal import Decimal

from gatewayd.batch import ReadingBatch, SampleBatch
from gatewayd.driver import PointConfig
from gatewayd.model import PointRef, Quality, Reading, Sample, Value

__all__ = ["BatchNormaliser", "decimals_of", "normalise", "to_raw"]


def normalise(connection: str, device: str, point: PointConfig, sample: Sample) -> Reading:
    """Apply the point's scale and offset to numeric values; others pass unchanged.

    Every value of every poll comes through here (50,000 a second on a busy gateway), so
    the common case, a point without scale or offset, skips the numeric checks, and the
    immutable PointRef of a point is made once.
    """
    value = sample.value
    if (
        (point.scale != 1.0 or point.offset != 0.0 or point.decimals is not None)
        and isinstance(value, _NUMBER)
        and not isinstance(value, bool)
    ):
        places = decimals_of(point.scale, point.offset, point.decimals)
        value = _scaled(value, point.scale, point.offset, places, point.decimals is not None)
    quality = Quality.GOOD
    if isinstance(value, float) and not math.isfinite(value):  # JSON has no NaN nor infinity
        quality = Quality.BAD
    return Reading(
        ref=_ref(connection, device, sample.point),
        value=value,
        unit=point.unit,
        at=sample.at,
        quality=quality,
    )


_NUMBER = (int, float)
_INF = math.inf
_MAX_PLACES = 12  # a scale like 1/3 implies endless places; 12 are finer than any sensor


def _scaled(value: float, scale: float, offset: float, places: int, explicit: bool) -> float:
    """A raw integer (a register) scaled says no more than the scale: round to its places.

    A raw value that is already a decimal (a serial instrument's `45.5`, a float32 register)
    carries places of its own that the scale does not know, so unless the point sets
    `decimals` only the float noise is dropped: 12 significant digits are more than any
    field device measures.
    """
    scaled = value * scale + offset
    if explicit or type(value) is int:
        return round(scaled, places)
    return float(f"{scaled:.12g}")


@functools.lru_cache(maxsize=4096)
def decimals_of(scale: float, offset: float, decimals: int | None) -> int:
    """The decimal places a point's values are rounded to.

    `decimals` when the point sets it; otherwise the places its scale and offset are written
    with (0.1 -> 1, 0.25 -> 2, 10 -> 0), so the value says no more than the register and
    the scale do.
    """
    if decimals is not None:
        return decimals
    return min(max(_places(scale), _places(offset)), _MAX_PLACES)


def _places(number: float) -> int:
    exponent = Decimal(repr(float(number))).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else _MAX_PLACES


def _unusable(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


_PLANS = 4096


class BatchNormaliser:
    """`normalise()` for a whole SampleBatch: columns in, columns out.

    What a set of points needs (units, which ones scale) is worked out once per set and
    kept, so a poll costs a list copy plus the arithmetic of the points that scale.

    Args:
        connection: the connection id the batches come from.
    """

    def __init__(self, connection: str) -> None:
        self._connection = connection
        self._plans: dict[tuple[str, tuple[str, ...]], _Plan | None] = {}

    def __call__(
        self, device: str, points: Mapping[str, PointConfig], batch: SampleBatch
    ) -> ReadingBatch | None:
        """The batch normalised; None when it names a point the device does not have."""
        key = (device, batch.points)
        plan = self._plans.get(key, _UNKNOWN)
        if plan is _UNKNOWN:
            plan = _Plan.make(points, batch.points)
            if len(self._plans) < _PLANS:
                self._plans[key] = plan
        if plan is None:
            return None
        values: list[Value | None] = list(batch.values)
        for i, scale, offset, places, explicit in plan.scaled:
            value = values[i]
            if type(value) is int or (explicit and type(value) is float):
                values[i] = round(value * scale + offset, places)
            elif type(value) is float:
                values[i] = float(f"{value * scale + offset:.12g}")
        quality = None
        # NaN or infinity from a sensor: JSON has neither. Three scans in C beat one in Python.
        if any(v != v for v in values) or _INF in values or -_INF in values:  # noqa: PLR0124
            quality = [Quality.BAD if _unusable(v) else Quality.GOOD for v in values]
        return ReadingBatch(
            self._connection, device, batch.points, values, plan.units, batch.at, quality
        )


class _Plan:
    __slots__ = ("scaled", "units")

    def __init__(
        self,
        units: tuple[str | None, ...],
        scaled: list[tuple[int, float, float, int, bool]],
    ) -> None:
        self.units = units
        self.scaled = scaled

    @classmethod
    def make(cls, points: Mapping[str, PointConfig], ids: tuple[str, ...]) -> _Plan | None:
        if any(p not in points for p in ids):
            return None
        configs = [points[p] for p in ids]
        return cls(
            tuple(c.unit for c in configs),
            [
                (
                    i,
                    c.scale,
                    c.offset,
                    decimals_of(c.scale, c.offset, c.decimals),
                    c.decimals is not None,
                )
                for i, c in enumerate(configs)
                if c.scale != 1.0 or c.offset != 0.0 or c.decimals is not None
            ],
        )


_UNKNOWN = _Plan((), [])


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
