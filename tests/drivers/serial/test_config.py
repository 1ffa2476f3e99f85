"""Configuration: templates, regexes and point/device consistency are checked at load."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from drivers.serial import SerialConnection
from drivers.serial.templates import check_template, render

FIELDS = frozenset({"address", "value"})


def test_templates_render_bytes():
    template = check_template("\x02{address}W{value:05.1f}\x03", allowed=FIELDS)
    assert render(template, address="07", value=3.14159) == b"\x0207W003.1\x03"
    assert render(check_template("{{literal}} {value}", allowed=FIELDS), value=1) == b"{literal} 1"


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("{secret}", "unknown field"),
        ("{value.__class__}", "unknown field"),
        ("{value[0]}", "unknown field"),
        ("{value", "expected '}'"),
        ("{value:{address}}", "nested"),
        ("€{value}", "U\\+00FF"),
    ],
)
def test_bad_templates_are_refused(template, error):
    with pytest.raises(ValueError, match=error):
        check_template(template, allowed=FIELDS)


def test_a_value_that_does_not_fit_the_format_is_a_value_error():
    with pytest.raises(ValueError, match="template"):
        render("{value:d}", value=1.5)


def conn(**device: object) -> dict[str, object]:
    return {"driver": "serial", "port": "/dev/ttyUSB0", "devices": {"d": device}}


@pytest.mark.parametrize(
    ("device", "error"),
    [
        ({"points": {"t": {}}}, "points.t: polled, but neither"),
        ({"request": "R", "points": {"t": {"writable": True}}}, "writable point needs"),
        ({"points": {"t": {"push": True, "request": "R"}}}, "push point is not polled"),
        ({"request": "{value}"}, "unknown field"),
        ({"match": "("}, "missing \\)"),
        ({"points": {"t": {"push": True, "write_ack": "["}}}, "unterminated"),
        ({"parser": {"type": "xml"}}, "does not match any of the expected tags"),
    ],
)
def test_inconsistent_devices_are_refused(device, error):
    with pytest.raises(ValidationError, match=error):
        SerialConnection.model_validate(conn(**device))


def test_port_settings():
    config = SerialConnection.model_validate(
        {**conn(), "baudrate": 19200, "parity": "even", "stopbits": 1.5, "rs485": {"enabled": True}}
    )
    assert config.stopbits == 1.5
    assert config.rs485.enabled
    with pytest.raises(ValidationError, match=r"1, 1\.5 or 2"):
        SerialConnection.model_validate({**conn(), "stopbits": 3})
    with pytest.raises(ValidationError, match=r"framing\.fixed\.length"):
        SerialConnection.model_validate({**conn(), "framing": {"type": "fixed"}})


def test_ids_come_from_keys():
    config = SerialConnection.model_validate(conn(request="R", points={"t": {"field": "x"}}))
    point = config.devices["d"].points["t"]
    assert (config.devices["d"].id, point.id, point.field) == ("d", "t", "x")
