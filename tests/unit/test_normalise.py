import json
import math
from datetime import UTC, datetime

import pytest

from gatewayd.batch import SampleBatch
from gatewayd.bridge.normalise import BatchNormaliser, decimals_of, normalise, to_raw
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


def _batch(point: PointConfig, *raw: object) -> list[object]:
    batch = SampleBatch(("v",) * len(raw), list(raw), [NOW] * len(raw))  # type: ignore[arg-type]
    normalised = BatchNormaliser("c")("d", {"v": point}, batch)
    assert normalised is not None
    return list(normalised.values)


def test_a_scale_of_a_tenth_on_217_sends_exactly_21_7():
    point = PointConfig(scale=0.1)
    assert 217 * 0.1 != 21.7  # the binary product carries noise
    single = normalise("c", "d", point, Sample("v", 217, NOW)).value
    assert json.dumps(single) == "21.7"
    assert json.dumps(_batch(point, 217, 2301, 65535)) == "[21.7, 230.1, 6553.5]"


@pytest.mark.parametrize(
    ("scale", "offset", "raw", "sent"),
    [
        (0.01, 0, 2173, "21.73"),
        (0.005, 0, 4341, "21.705"),  # 1/200 degC
        (0.5, -273.15, 589, "21.35"),  # the offset has two places
        (10, 0, 23, "230.0"),
        (1 / 3, 0, 3, "1.0"),  # endless places: 12 at most
    ],
)
def test_values_keep_the_places_their_scale_and_offset_imply(scale, offset, raw, sent):
    point = PointConfig(scale=scale, offset=offset)
    assert json.dumps(normalise("c", "d", point, Sample("v", raw, NOW)).value) == sent
    assert json.dumps(_batch(point, raw)) == f"[{sent}]"


def test_decimals_rounds_a_point_even_without_scale():
    stepped = 20.0
    for _ in range(17):
        stepped += 0.1  # a float stepped or decoded from float32 carries noise of its own
    assert repr(stepped) != "21.7"
    point = PointConfig(decimals=1)
    assert normalise("c", "d", point, Sample("v", stepped, NOW)).value == 21.7
    assert _batch(point, stepped, 7, True, "on") == [21.7, 7, True, "on"]
    assert _batch(PointConfig(), stepped) == [stepped]  # unscaled, no decimals: as read
    coarse = PointConfig(scale=0.001, decimals=1)
    assert normalise("c", "d", coarse, Sample("v", 21749, NOW)).value == 21.7


def test_a_raw_decimal_keeps_its_own_places_and_loses_only_the_noise():
    # A serial instrument's "45.5" scaled by 0.01: the scale's two places would say 0.46.
    point = PointConfig(scale=0.01)
    assert normalise("c", "d", point, Sample("v", 45.5, NOW)).value == 0.455
    assert _batch(point, 45.5, 2173) == [0.455, 21.73]
    noisy = PointConfig(scale=0.1)
    assert json.dumps(normalise("c", "d", noisy, Sample("v", 217.0, NOW)).value) == "21.7"
    assert json.dumps(_batch(noisy, 217.0)) == "[21.7]"


def test_decimals_of_is_worked_out_once_per_point():
    assert [decimals_of(s, o, None) for s, o in [(0.1, 0), (1, -273.15), (2.5e-5, 0)]] == [1, 2, 6]
    assert decimals_of(0.1, 0, 3) == 3
    with pytest.raises(ValueError, match="decimals"):
        PointConfig(decimals=13)
