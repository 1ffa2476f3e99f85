"""Every example in config/ runs with the shipped products without a single warning.

A site copies an example into /etc/gatewayd/ and the shipped products into
/etc/gatewayd/products/; it must not get `product ... has no property ...` at run time, nor a
settable property that no point can set. The examples are loaded the way the daemon loads
them (`load_settings`, `load_products`, `PointIndex`), with the products directory given in
conf.d as a site would, and every warning logged on the way is a failure.
"""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path

import pytest

from gatewayd.bridge.points import PointIndex
from gatewayd.config_load import load_settings
from gatewayd.products import load_products
from gatewayd.settings import Settings
from tests.helpers import ROOT, run_gatewayd, write_yaml

SHIPPED_PRODUCTS = ROOT / "config" / "products"
EXAMPLES = sorted((ROOT / "config").glob("*.example.yaml"))
DEMO = ROOT / "config" / "demo" / "gatewayd.yaml"  # brings its own products directory


def problems(settings: Settings) -> list[str]:
    """What a site would be warned about, or would find missing, for these settings."""
    catalog = load_products(settings.products)
    index = PointIndex(settings.connections, catalog)
    found: list[str] = []
    for conn_id, conn in settings.connections.items():
        for key, device in getattr(conn, "devices", {}).items():
            where = f"connections.{conn_id}.devices.{key}"
            bound = index.by_key(conn_id, key)
            assert bound is not None, where
            product = bound.product
            if product is None:
                if device.product_id is not None:
                    found.append(f"{where}: no product file for {device.product_id!r}")
                continue
            settable: set[str] = set()
            for service in product.services:
                settable |= {p.name for p in service.properties if p.writable}
            for point_id, point in bound.by_point.items():
                service = product.service(point.service_id)
                prop = service.property(point.property) if service is not None else None
                at = f"{where}.points.{point_id}"
                if prop is None:
                    found.append(f"{at}: {product.product_id} has no property {point.property!r}")
                elif prop.writable != point.point.writable:
                    writable = point.point.writable
                    found.append(f"{at}: writable is {writable}, property access is {prop.access}")
            unset = settable - {b.property for b in bound.by_point.values()}
            found += [f"{where}: settable property {name!r} has no point" for name in sorted(unset)]
    return found


def _as_site(tmp_path: Path, example: Path) -> Path:
    """The example as /etc/gatewayd/gatewayd.yaml, with the shipped products next to it."""
    main = tmp_path / "gatewayd.yaml"
    shutil.copy(example, main)
    write_yaml(tmp_path / "conf.d" / "50-site.yaml", {
        "products": str(SHIPPED_PRODUCTS), "state_dir": str(tmp_path / "state")})  # fmt: skip
    return main


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_with_the_shipped_products_has_no_warning(example, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    settings = load_settings(_as_site(tmp_path, example))
    assert problems(settings) == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_demo_config_with_its_products_has_no_warning(caplog):
    caplog.set_level(logging.WARNING)
    assert problems(load_settings(DEMO)) == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_the_check_sees_what_a_site_would_be_warned_about(tmp_path):
    example = tmp_path / "bad.yaml"
    write_yaml(example, {
        "gateway": {"node_id": "gw-bad"},
        "connections": {"lan": {"driver": "modbus-tcp", "host": "192.0.2.10", "devices": {
            "meter": {"product_id": "energy-meter", "unit_id": 1, "points": {
                "power": {"address": 2, "type": "int32"},
                "voltage_l1": {"address": 0, "type": "uint16", "writable": True},
                "relay_on": {"table": "coil", "address": 0, "writable": True}}},
            "other": {"product_id": "no-such-product", "unit_id": 2}}}},
    })  # fmt: skip
    site = tmp_path / "site"
    site.mkdir()
    found = problems(load_settings(_as_site(site, example)))
    assert found == [
        "connections.lan.devices.meter.points.power: energy-meter has no property 'power'",
        "connections.lan.devices.meter.points.voltage_l1: writable is True, property access is R",
        "connections.lan.devices.meter: settable property 'ct_ratio' has no point",
        "connections.lan.devices.other: no product file for 'no-such-product'",
    ]


@functools.cache
def _has_strict_check() -> bool:
    return "--strict" in run_gatewayd("check-config", "--help").stdout


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_check_config_strict_passes_every_example(example, tmp_path):
    if not _has_strict_check():
        pytest.skip("check-config has no --strict option")
    result = run_gatewayd("check-config", "--strict", "-c", str(_as_site(tmp_path, example)))
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
