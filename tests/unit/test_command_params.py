"""Command parameters checked against the product's declaration before anything runs."""

from __future__ import annotations

import pytest

from gatewayd.commands.params import CommandRefused, check_parameters, find_command
from gatewayd.products import Product

PRODUCT = Product.model_validate(
    {
        "product_id": "valve",
        "name": "Valve",
        "services": [
            {
                "service_id": "Valve",
                "commands": [
                    {
                        "name": "open",
                        "paras": [
                            {"name": "percent", "type": "int", "min": 0, "max": 100},
                            {"name": "ramp_s", "type": "decimal", "min": 0, "default": 0},
                            {"name": "note", "type": "string", "max_length": 4, "default": "-"},
                        ],
                    }
                ],
            }
        ],
    }
)
OPEN = find_command(PRODUCT, "open", "valve_1")


def test_checked_values_and_defaults():
    assert check_parameters(OPEN, {"percent": "40"}) == {"percent": 40, "ramp_s": 0, "note": "-"}
    assert check_parameters(OPEN, {"percent": 100, "ramp_s": 2.5, "note": "ok"})["ramp_s"] == 2.5


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({}, "parameter 'percent' is required"),
        (None, "parameter 'percent' is required"),
        ({"percent": 101}, "parameter 'percent': 101 is above the maximum 100"),
        ({"percent": -1}, "parameter 'percent': -1 is below the minimum 0"),
        ({"percent": "half"}, "parameter 'percent': "),
        ({"percent": 1, "ramp": 2}, "parameter 'ramp' is not declared by command 'open'"),
        ({"percent": 1, "note": "too long"}, "parameter 'note': "),
        ([1, 2], "parameters: must be an object"),
    ],
)
def test_a_bad_parameter_is_refused_by_name(parameters, message):
    with pytest.raises(CommandRefused) as refused:
        check_parameters(OPEN, parameters)
    assert str(refused.value).startswith(message)


def test_an_undeclared_command_is_refused_by_name():
    with pytest.raises(CommandRefused, match="'close' is not supported by valve_1"):
        find_command(PRODUCT, "close", "valve_1")
    with pytest.raises(CommandRefused, match="'open' is not supported by plain"):
        find_command(None, "open", "plain")
