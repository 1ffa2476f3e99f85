"""One read of one device as columns: the hot path carries one object per poll, not one per value.

A Modbus poll of 50 registers every 100 ms on 100 devices is 50,000 values a second. As
objects (a Sample from the driver, a Reading after scaling, copies when a name changes) the
values cost more CPU than the Modbus requests that fetched them. As columns, a poll is a few
lists whose point names and units are shared by every poll of the same points, and each step
of the pipeline works on whole lists (`dict(zip(...))`, list comparison) at C speed.

Both classes are also sequences of the per-value objects, built on first access, so code
that iterates readings one by one (tests, push streams, simple sinks) needs no change.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TypeVar, overload

from gatewayd.model import PointRef, Quality, Reading, Sample, Value

__all__ = ["ReadingBatch", "SampleBatch"]

T = TypeVar("T")


class _Columns(Sequence[T]):
    """A sequence of per-value objects made from the columns on first access, then kept."""

    __slots__ = ()
    points: tuple[str, ...]
    _items: list[T] | None

    def _make(self) -> list[T]:
        raise NotImplementedError

    def _objects(self) -> list[T]:
        if self._items is None:
            self._items = self._make()
        return self._items

    def __len__(self) -> int:
        return len(self.points)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...
    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        return self._objects()[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self._objects())


class SampleBatch(_Columns[Sample]):
    """What a driver read from one device in one go, unscaled.

    Args:
        points: point ids, in the order they were asked for (share one tuple across polls).
        values: decoded values, aligned with `points`.
        at: the time of each value, aligned with `points` (values of one request share one).
    """

    __slots__ = ("_items", "at", "points", "values")

    def __init__(self, points: tuple[str, ...], values: list[Value], at: list[datetime]) -> None:
        if not len(points) == len(values) == len(at):
            msg = f"columns differ in length: {len(points)}, {len(values)}, {len(at)}"
            raise ValueError(msg)
        self.points = points
        self.values = values
        self.at = at
        self._items: list[Sample] | None = None

    def _make(self) -> list[Sample]:
        return [
            Sample(point=p, value=v, at=t)
            for p, v, t in zip(self.points, self.values, self.at, strict=True)
        ]

    def __repr__(self) -> str:
        return f"SampleBatch({len(self)} values of {', '.join(self.points[:3])}...)"


class ReadingBatch(_Columns[Reading]):
    """One device's normalised readings from one read.

    Args:
        connection: the connection id.
        device: the device key on that connection.
        points: point ids (or product property names, after FieldState), shared across polls.
        values: normalised values; None where there is none.
        units: engineering units aligned with `points`, shared across polls.
        at: the time of each value.
        quality: per-value quality, or None when every value is GOOD.
    """

    __slots__ = ("_items", "at", "connection", "device", "points", "quality", "units", "values")

    def __init__(  # noqa: PLR0913, PLR0917 - the columns of one read
        self,
        connection: str,
        device: str,
        points: tuple[str, ...],
        values: list[Value | None],
        units: tuple[str | None, ...],
        at: list[datetime],
        quality: list[Quality] | None = None,
    ) -> None:
        sizes = {len(points), len(values), len(units), len(at)}
        if quality is not None:
            sizes.add(len(quality))
        if len(sizes) != 1:
            msg = f"columns differ in length: {sorted(sizes)}"
            raise ValueError(msg)
        self.connection = connection
        self.device = device
        self.points = points
        self.values = values
        self.units = units
        self.at = at
        self.quality = quality
        self._items: list[Reading] | None = None

    def renamed(self, points: tuple[str, ...]) -> ReadingBatch:
        """The same readings under other names (the product's property names)."""
        return ReadingBatch(
            self.connection, self.device, points, self.values, self.units, self.at, self.quality
        )

    def good(self) -> bool:
        """Whether every value is present and GOOD."""
        return self.quality is None and None not in self.values

    def _make(self) -> list[Reading]:
        quality = self.quality or [Quality.GOOD] * len(self.points)
        conn, dev = self.connection, self.device
        return [
            Reading(PointRef(conn, dev, p), v, u, t, q)
            for p, v, u, t, q in zip(
                self.points, self.values, self.units, self.at, quality, strict=True
            )
        ]

    def __repr__(self) -> str:
        return f"ReadingBatch({self.connection}/{self.device}: {len(self)} values)"
