"""FieldState gives the same result whether a poll arrives as Readings or as columns.

The column path (`ReadingBatch`) is the hot path of every polled driver; the per-reading path
is the reference. Both run against their own real state database and must agree on what goes
downstream and on the reported shadow, poll after poll.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gatewayd.batch import ReadingBatch
from gatewayd.bridge.field import FieldState
from gatewayd.bridge.points import PointIndex
from gatewayd.bridge.sink import LatestValues
from gatewayd.model import PointRef, Quality, Reading, Value
from gatewayd.store import open_store
from tests.store_fixtures import WATER, store_settings

POINTS = ("temp", "flow", "level", "raw_label")
UNITS = ("°C", "m3/h", "%", None)
POLLS: list[list[Value | None]] = [
    [20, 1.5, 80, "pump A"],
    [20, 1.5, 80, "pump A"],  # nothing changed
    [21, 1.5, 80, "pump A"],  # one value changed
    [200, 2.0, 79, "pump A"],  # temperature above the product's max: BAD, not reported
    [21.0, float("nan"), None, "a label far too long for sixteen"],  # float for int, NaN, none
    [22, 2.5, 78, "pump B"],
    [22, 2.5, 78, "pump B"],
]


def _settings(tmp_path: Path) -> Any:
    points = {
        "temp": {"initial": 0, "property": "temperature"},
        "flow": {"initial": 0.0},
        "level": {"initial": 0},
        "raw_label": {"initial": "", "property": "label"},
    }
    return store_settings(
        tmp_path,
        connections={
            "c": {
                "driver": "memory",
                "devices": {"meter": {"product_id": WATER, "interval_s": 60, "points": points}},
            }
        },
    )


def _as_readings(values: list[Value | None], at: datetime) -> list[Reading]:
    return [
        Reading(PointRef("c", "meter", p), v, u, at, Quality.BAD if v != v else Quality.GOOD)  # noqa: PLR0124
        for p, v, u in zip(POINTS, values, UNITS, strict=True)
    ]


def _as_columns(values: list[Value | None], at: datetime) -> ReadingBatch:
    nan = [v != v for v in values]  # noqa: PLR0124
    quality = [Quality.BAD if n else Quality.GOOD for n in nan] if any(nan) else None
    return ReadingBatch("c", "meter", POINTS, list(values), UNITS, [at] * len(values), quality)


def _seen(sink: LatestValues) -> dict[str, tuple[object, Quality]]:
    out = {}
    for key, r in sink.values.items():
        value = "nan" if r.value != r.value else r.value
        out[key] = (type(r.value).__name__, value, r.quality)  # 21 and 21.0 differ here
    return out


async def test_columns_and_readings_agree_poll_after_poll(tmp_path):
    results = []
    for shape in (_as_readings, _as_columns):
        settings = _settings(tmp_path / shape.__name__)
        async with open_store(settings) as store:
            sink = LatestValues()
            index = PointIndex(settings.connections, store.products)
            field = FieldState(index, store.registry, store.shadows, downstream=sink)
            bound = index.by_key("c", "meter")
            assert bound is not None
            steps = []
            for values in POLLS:
                sink.values.clear()
                await field.readings("c", "meter", shape(values, datetime.now(UTC)))
                shadows = await store.shadows.get(bound.device_id)
                reported = {
                    (s.service_id, k): p.value for s in shadows for k, p in s.reported.items()
                }
                steps.append((_seen(sink), reported))
            results.append(steps)
    by_readings, by_columns = results
    for i, (one, other) in enumerate(zip(by_readings, by_columns, strict=True)):
        assert one == other, f"poll {i}: {POLLS[i]}"
    # and the reference itself says what the product allows
    last_seen, last_reported = by_readings[-1]
    assert last_reported[("WaterMeter", "temperature")] == 22
    assert last_seen["c/meter/label"] == ("str", "pump B", Quality.GOOD)
    assert by_readings[3][0]["c/meter/temperature"][2] is Quality.BAD
    assert by_readings[4][0]["c/meter/temperature"][:2] == ("int", 21)  # the product's type
    assert by_readings[3][1][("WaterMeter", "temperature")] == 21  # the BAD 200 never landed


async def test_a_held_poll_lands_before_a_confirmed_report(tmp_path):
    """Polls are held and pulled by the shadow store; a report() after them must win."""
    settings = _settings(tmp_path)
    async with open_store(settings) as store:
        index = PointIndex(settings.connections, store.products)
        field = FieldState(index, store.registry, store.shadows, downstream=LatestValues())
        bound = index.by_key("c", "meter")
        assert bound is not None
        one = ("temp", "flow")  # one service: the held path
        at = datetime.now(UTC)

        async def poll(temp: int, flow: float) -> None:
            batch = ReadingBatch("c", "meter", one, [temp, flow], ("°C", "m3/h"), [at, at])
            await field.readings("c", "meter", batch)

        async def reported() -> dict[str, Any]:
            (water, *_) = await store.shadows.get(bound.device_id)
            return {k: p.value for k, p in water.reported.items()}

        await poll(20, 1.0)
        await poll(21, 1.0)  # held: only the latest poll of the interval is noted
        assert await reported() == {"temperature": 21, "flow": 1.0}  # a read pulls first
        await poll(22, 1.5)
        await store.shadows.report(bound.device_id, "WaterMeter", {"temperature": 30})
        assert await reported() == {"temperature": 30, "flow": 1.5}
        await poll(30, 1.5)  # the device now holds what was confirmed
        await poll(31, 1.5)
        assert await reported() == {"temperature": 31, "flow": 1.5}
