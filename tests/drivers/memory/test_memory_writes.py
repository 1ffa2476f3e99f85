"""The memory driver holds a written number as a device would: rounded, then clamped."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from drivers.memory import MemoryConnection, MemoryDriver


def _driver(**point: object) -> tuple[MemoryDriver, MemoryConnection]:
    config = MemoryConnection.model_validate(
        {"driver": "memory", "devices": {"d": {"id": "d", "points": {"p": {"id": "p", **point}}}}}
    )
    return MemoryDriver(config), config


@pytest.mark.parametrize(
    ("point", "written", "held"),
    [
        ({"initial": 20.0}, 31.23, 31.23),
        ({"initial": 20.0, "write_step": 0.5}, 22.3, 22.5),
        ({"initial": 20.0, "write_step": 0.1}, 0.1 + 0.2, 0.3),  # no float noise
        ({"initial": 20.0, "clamp": [10, 26]}, 28.0, 26.0),
        ({"initial": 20.0, "clamp": [10, 26], "write_step": 0.5}, 26.4, 26.0),
        ({"initial": 20, "clamp": [0, 100], "write_step": 5}, 47, 45),
        ({"initial": 20, "clamp": [0, 100]}, -3, 0),
    ],
)
async def test_a_written_number_is_read_back_as_the_device_holds_it(point, written, held):
    driver, config = _driver(**point)
    device = config.devices["d"]
    async with driver.connect() as session:
        await session.write(device, device.points["p"], written)
        (value,) = (await session.read(device, [device.points["p"]])).values
    assert value == held
    assert type(value) is type(held)


@pytest.mark.parametrize(
    ("point", "field"),
    [
        ({"initial": 1, "clamp": [3, 2]}, "clamp"),
        ({"initial": "auto", "clamp": [0, 1]}, "clamp"),
        ({"initial": True, "write_step": 1}, "write_step"),
        ({"initial": 1, "write_step": 0}, "write_step"),
    ],
)
def test_limits_that_cannot_hold_are_refused_naming_the_field(point, field):
    with pytest.raises(ValidationError, match=field):
        _driver(**point)
