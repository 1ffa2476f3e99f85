import math
from datetime import UTC, datetime

import pytest

from gatewayd.bridge.normalise import normalise, to_raw
from gatewayd.driver import PointConfig
from gatewayd.model import Quality, Sample

NOW = datetime.now(UTC)


def test_scaled_values_carry_no_binary_noise():
    reading = normalise("c", "d", PointConfig(scale=0.1), Sample("v", 2301, NOW))
    assert reading.value == 230.1
    assert str(reading.ref) == "c/d/v"


@pytest.mark.parametrize(
    ("raw", "scale", "offset"), [(2301, 0.1, 0), (-40, 0.5, -273.15), (7, 1, 0)]
)
def test_to_raw_undoes_normalise(raw, scale, offset):
    point = PointConfig(scale=scale, offset=offset)
    value = normalise("c", "d", point, Sample("v", raw, NOW)).value
    assert to_raw(point, value) == pytest.approx(raw)


def test_nan_and_infinity_are_bad_quality_and_text_passes_unchanged():
    for value in (math.nan, math.inf, -math.inf):
        reading = normalise("c", "d", PointConfig(), Sample("v", value, NOW))
        assert reading.quality is Quality.BAD, value
    assert normalise("c", "d", PointConfig(), Sample("v", 1e308, NOW)).quality is Quality.GOOD
    assert normalise("c", "d", PointConfig(scale=2), Sample("v", "on", NOW)).value == "on"
