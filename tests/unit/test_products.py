"""Product models: shipped files load, bad files are refused naming file and field."""

from __future__ import annotations

import pytest

from gatewayd.products import ProductError, PropertyDef, load_products
from tests.helpers import ROOT, write_yaml
from tests.store_fixtures import PRODUCTS, WATER


@pytest.mark.parametrize("directory", [ROOT / "config" / "products", PRODUCTS])
def test_shipped_products_load(directory):
    catalog = load_products(directory)
    assert len(catalog) == len(list(directory.glob("*.yaml")))


def test_example_products_content():
    catalog = load_products(ROOT / "config" / "products")
    assert set(catalog) == {"gatewayd", "energy-meter"}
    relay = catalog["energy-meter"].service("Relay")
    assert relay is not None
    assert relay.defaults() == {"relay_on": True}
    assert relay.commands[0].paras[0].name == "duration_s"
    assert load_products(PRODUCTS)[WATER].name == "Thermometer"


def test_no_directory_means_no_products():
    assert len(load_products(None)) == 0


def _product(**service_extra):
    service = {"service_id": "S", "properties": [{"name": "p", "type": "int"}]}
    service.update(service_extra)
    return {"product_id": "prod-1", "name": "P", "services": [service]}


BAD_FILES = [
    ({"name": "P"}, "product_id: Field required"),
    ({"product_id": "has space", "name": "P"}, "product_id: String should match"),
    ({"product_id": "x" * 37, "name": "P"}, "product_id: String should match"),
    ({**_product(), "colour": "red"}, "colour: Extra inputs are not permitted"),
    (
        _product(properties=[{"name": "p", "type": "float"}]),
        "services.0.properties.0.type: Input should be 'int', 'decimal'",
    ),
    (
        _product(properties=[{"name": "p", "type": "int", "access": "RWX"}]),
        "services.0.properties.0.access: Input should be 'R', 'W' or 'RW'",
    ),
    (
        _product(properties=[{"name": "p", "type": "int", "min": 5, "max": 1}]),
        "services.0.properties.0: min 5 is above max 1",
    ),
    (
        _product(properties=[{"name": "p", "type": "string", "min": 1}]),
        "services.0.properties.0: min and max apply only to int and decimal properties",
    ),
    (
        _product(properties=[{"name": "p", "type": "int", "max": 10, "default": 11}]),
        "services.0.properties.0: default: 11 is above the maximum 10",
    ),
    (
        _product(properties=[{"name": "p", "type": "bool", "default": "yes"}]),
        "services.0.properties.0: default: expected true or false",
    ),
    (
        _product(properties=[{"name": "p", "type": "int"}, {"name": "p", "type": "bool"}]),
        "services.0: properties: property 'p' is defined twice",
    ),
    (
        _product(commands=[{"name": "go", "paras": [{"name": "n", "type": "nope"}]}]),
        "services.0.commands.0.paras.0.type: Input should be",
    ),
    (
        {"product_id": "p", "name": "P", "services": [{"service_id": "S"}, {"service_id": "S"}]},
        "services: service 'S' is defined twice",
    ),
    (
        {"product_id": "p", "name": "P", "services": [{"service_id": "s" * 33}]},
        "services.0.service_id: String should match",
    ),
]


@pytest.mark.parametrize(("data", "expected"), BAD_FILES, ids=[e for _, e in BAD_FILES])
def test_bad_product_names_file_and_field(tmp_path, data, expected):
    path = write_yaml(tmp_path / "bad.yaml", data)
    with pytest.raises(ProductError) as info:
        load_products(tmp_path)
    assert f"{path}: {expected}" in str(info.value)


def test_every_bad_file_is_listed_and_duplicates_name_both_files(tmp_path):
    a = write_yaml(tmp_path / "a.yaml", _product())
    write_yaml(tmp_path / "b.yaml", _product())
    c = write_yaml(tmp_path / "c.yml", {"name": "no id"})
    (tmp_path / "d.yaml").write_text("product_id: [unclosed\n")
    with pytest.raises(ProductError) as info:
        load_products(tmp_path)
    problems = info.value.problems
    assert f"{tmp_path / 'b.yaml'}: product_id: 'prod-1' is also defined in {a}" in problems
    assert f"{c}: product_id: Field required" in problems
    assert any(p.startswith(f"{tmp_path / 'd.yaml'}: not valid YAML") for p in problems)
    assert len(problems) == 3


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(ProductError, match="does not exist"):
        load_products(tmp_path / "nope")


VALUES = [
    ("int", {}, "42", 42, None),
    ("int", {}, 7.0, 7, None),
    ("int", {}, True, None, "boolean"),
    ("int", {}, 1.5, None, "expected an integer"),
    ("int", {"min": 0, "max": 10}, 11, None, "above the maximum 10"),
    ("int", {"min": 0}, -1, None, "below the minimum 0"),
    ("decimal", {}, "2.5", 2.5, None),
    ("decimal", {}, "nan", None, "finite"),
    ("decimal", {}, "x", None, "expected a number"),
    ("string", {"max_length": 3}, "abcd", None, "longer than 3"),
    ("string", {}, 5, None, "expected a string"),
    ("bool", {}, False, False, None),
    ("bool", {}, 1, None, "expected true or false"),
    ("datetime", {}, "2024-01-26T08:00:00Z", "2024-01-26T08:00:00Z", None),
    ("datetime", {}, "20151212T121212Z", "20151212T121212Z", None),
    ("datetime", {}, "yesterday", None, "ISO 8601"),
    ("json", {}, {"a": [1, 2]}, {"a": [1, 2]}, None),
]


@pytest.mark.parametrize(("kind", "extra", "value", "stored", "error"), VALUES)
def test_property_values_are_checked(kind, extra, value, stored, error):
    prop = PropertyDef(name="p", type=kind, **extra)
    if error is None:
        assert prop.check(value) == stored
    else:
        with pytest.raises(ValueError, match=error):
            prop.check(value)
