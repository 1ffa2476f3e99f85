"""Which configured point carries which product property of which registry device."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gatewayd.bridge.reporting import ReportRule
from gatewayd.driver import ConnectionConfig, DeviceConfig, PointConfig
from gatewayd.identity import child_identity
from gatewayd.products import Product, ProductCatalog

__all__ = ["BoundDevice", "BoundPoint", "PointIndex"]

DEFAULT_SERVICE = "default"  # the service of devices whose product has no file


@dataclass(frozen=True, slots=True)
class BoundPoint:
    """A point with the product property and service it reports."""

    point: PointConfig
    property: str
    service_id: str
    rule: ReportRule | None  # None: every reading is reported


@dataclass(frozen=True, slots=True)
class BoundDevice:
    """A configured device with its registry id and its points by id and by property."""

    connection: str
    key: str
    device_id: str
    product: Product | None
    by_point: Mapping[str, BoundPoint]
    by_property: Mapping[tuple[str, str], BoundPoint]  # (service_id, property)


class PointIndex:
    """Built once at start from the configuration and the product catalogue.

    A property found in no service of the device's product is bound to the first service,
    so an unknown property surfaces as a clear product error when reported, not as silence.
    """

    def __init__(
        self, connections: Mapping[str, ConnectionConfig], products: ProductCatalog
    ) -> None:
        self._by_key: dict[tuple[str, str], BoundDevice] = {}
        self._by_id: dict[str, BoundDevice] = {}
        for conn_id, conn in connections.items():
            devices: Mapping[str, DeviceConfig[Any]] = getattr(conn, "devices", {})
            for key, device in devices.items():
                ident = child_identity(conn, device)
                bound = _bind(conn_id, key, ident.device_id, device, products.get(ident.product_id))
                self._by_key[(conn_id, key)] = bound
                self._by_id[ident.device_id] = bound

    def by_key(self, connection: str, device: str) -> BoundDevice | None:
        """The device configured under `connections.<connection>.devices.<device>`."""
        return self._by_key.get((connection, device))

    def by_id(self, device_id: str) -> BoundDevice | None:
        """The configured device with this registry id."""
        return self._by_id.get(device_id)


def _bind(
    conn_id: str, key: str, device_id: str, device: DeviceConfig[Any], product: Product | None
) -> BoundDevice:
    by_point: dict[str, BoundPoint] = {}
    for point_id, point in device.points.items():
        prop = point.property or point_id
        service_id = _service_of(product, prop)
        by_point[point_id] = BoundPoint(point, prop, service_id, _rule(point))
    by_property = {(b.service_id, b.property): b for b in by_point.values()}
    return BoundDevice(conn_id, key, device_id, product, by_point, by_property)


def _rule(point: PointConfig) -> ReportRule | None:
    configured = (point.deadband, point.deadband_percent, point.heartbeat_s)
    return None if configured == (None, None, None) else ReportRule.for_point(point)


def _service_of(product: Product | None, prop: str) -> str:
    if product is None or not product.services:
        return DEFAULT_SERVICE
    for service in product.services:
        if service.property(prop) is not None:
            return service.service_id
    return product.services[0].service_id
