"""Columns of one poll: the same values as the per-value objects, at a fraction of the cost."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.batch import ReadingBatch, SampleBatch
from gatewayd.bridge.normalise import BatchNormaliser, normalise
from gatewayd.driver import PointConfig
from gatewayd.model import PointRef, Quality, Reading, Sample

NOW = datetime.now(UTC)


def test_a_sample_batch_is_a_sequence_of_samples():
    batch = SampleBatch(("a", "b"), [1, "x"], [NOW, NOW])
    assert len(batch) == 2
    assert list(batch) == [Sample("a", 1, NOW), Sample("b", "x", NOW)]
    assert batch[1] == Sample("b", "x", NOW)
    assert batch[-1:] == [Sample("b", "x", NOW)]


def test_columns_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        SampleBatch(("a", "b"), [1], [NOW, NOW])
    with pytest.raises(ValueError, match="differ in length"):
        ReadingBatch("c", "d", ("a",), [1], (None,), [NOW], [Quality.GOOD, Quality.BAD])


def test_a_reading_batch_is_a_sequence_of_readings():
    batch = ReadingBatch("c", "d", ("a", "b"), [1.5, None], ("V", None), [NOW, NOW],
                         [Quality.GOOD, Quality.BAD])  # fmt: skip
    assert list(batch) == [
        Reading(PointRef("c", "d", "a"), 1.5, "V", NOW, Quality.GOOD),
        Reading(PointRef("c", "d", "b"), None, None, NOW, Quality.BAD),
    ]
    assert not batch.good()
    renamed = batch.renamed(("x", "y"))
    assert [r.ref.point for r in renamed] == ["x", "y"]
    assert [r.value for r in renamed] == [1.5, None]
    assert ReadingBatch("c", "d", ("a",), [0], (None,), [NOW]).good()


numbers = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.booleans(),
    st.text(max_size=3),
)
configs = st.builds(
    PointConfig,
    scale=st.sampled_from([1.0, 0.1, 0.5, 2.0, -1.0]),
    offset=st.sampled_from([0.0, -273.15, 10.0]),
    unit=st.sampled_from([None, "V"]),
)


@given(st.lists(st.tuples(numbers, configs), min_size=1, max_size=20))
def test_batch_normalise_equals_value_by_value(rows):
    points = {f"p{i}": cfg.model_copy(update={"id": f"p{i}"}) for i, (_, cfg) in enumerate(rows)}
    ids = tuple(points)
    samples = SampleBatch(ids, [v for v, _ in rows], [NOW] * len(rows))
    batch = BatchNormaliser("c")("d", points, samples)
    assert batch is not None
    expected = [normalise("c", "d", points[s.point], s) for s in samples]
    got = list(batch)
    assert len(got) == len(expected)
    for one, other in zip(got, expected, strict=True):
        assert one.ref == other.ref
        assert one.unit == other.unit
        assert one.quality is other.quality
        assert type(one.value) is type(other.value)
        if isinstance(one.value, float) and math.isnan(one.value):
            assert math.isnan(other.value)  # type: ignore[arg-type]
        else:
            assert one.value == other.value


def test_a_batch_with_an_unknown_point_is_left_to_the_per_value_path():
    points = {"a": PointConfig(id="a")}
    assert BatchNormaliser("c")("d", points, SampleBatch(("a", "z"), [1, 2], [NOW, NOW])) is None
