"""Checks across the whole configuration, once every key is valid on its own.

Each finding names the key path it is about; `gatewayd.config_load` adds the file and line.
Conflicts are errors (the configuration would do something nobody meant: one device polled
by two connections, one serial port opened twice, two devices under one registry id). What
the product files do not describe is a warning: a site may have to run before its product
files exist, and `check-config --strict` makes them errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatewayd.driver import ConnectionConfig, DeviceConfig
from gatewayd.identity import child_identity
from gatewayd.products import Product, ProductCatalog
from gatewayd.settings import Settings

__all__ = ["Finding", "conflict_findings", "product_findings"]

_TCP = frozenset({"modbus-tcp", "modbus-rtu-tcp"})
_SERIAL = frozenset({"modbus-rtu", "serial"})


@dataclass(frozen=True, slots=True)
class Finding:
    """Something wrong at a key path."""

    path: tuple[str, ...]
    reason: str


def conflict_findings(settings: Settings) -> list[Finding]:
    """Errors no single key shows: shared devices, ports and ids, and the state directory."""
    return [*_state_dir(settings.state_dir), *_shared_resources(settings)]


def product_findings(settings: Settings, products: ProductCatalog) -> list[Finding]:
    """A device naming a product with no file; points the product does not describe.

    A point that is not a property of its device's product, a writable point whose property
    is read-only (or the reverse), and a settable property no point can write.
    """
    found = []
    for conn_id, conn, dev_id, device in _devices(settings.connections):
        here = ("connections", conn_id, "devices", dev_id)
        product_id = child_identity(conn, device).product_id
        product = products.get(product_id)
        if product is None:
            if device.product_id is not None:
                where = (
                    f"in {settings.products}"
                    if settings.products
                    else "(no `products` directory is set)"
                )
                reason = f"product {product_id!r} has no product file {where}"
                found.append(Finding((*here, "product_id"), reason))
            continue
        found += _points_against(here, device, product)
    return found


def _points_against(
    here: tuple[str, ...], device: DeviceConfig[Any], product: Product
) -> list[Finding]:
    """Each point is a property of the product, writable as the property is settable."""
    found = []
    props = {p.name: p for service in product.services for p in service.properties}
    pid = product.product_id
    carried = set()
    for point_id, point in device.points.items():
        name = point.property or point_id
        carried.add(name)
        prop = props.get(name)
        key = (*here, "points", point_id)
        if prop is None:
            where = (*key, "property") if point.property else key
            found.append(Finding(where, f"{name!r} is not a property of product {pid!r}"))
        elif point.writable and not prop.writable:
            reason = f"writable, but property {name!r} of product {pid!r} is read-only"
            found.append(Finding((*key, "writable"), reason))
        elif prop.writable and not point.writable:
            reason = (
                f"property {name!r} of product {pid!r} is settable (access {prop.access}), "
                "but the point is not writable: what is asked for is never written"
            )
            found.append(Finding(key, reason))
    for name, prop in props.items():
        if prop.writable and name not in carried:
            reason = f"settable property {name!r} of product {pid!r} has no point to write"
            found.append(Finding((*here, "points"), reason))
    return found


def _state_dir(state_dir: Path) -> Iterator[Finding]:
    """A state directory that cannot be one is refused here, not by `run` creating it."""
    for candidate in (state_dir, *state_dir.parents):
        try:
            exists, is_dir = candidate.exists(), candidate.is_dir()
        except OSError:  # not ours to look at: `run` says why it cannot use it
            return
        if exists:
            if is_dir:
                return
            if candidate == state_dir:
                reason = f"{state_dir} is a file, not a directory"
            else:
                reason = f"{state_dir} cannot be created: {candidate} is a file"
            yield Finding(("state_dir",), reason)
            return


def _shared_resources(settings: Settings) -> list[Finding]:
    found: list[Finding] = []
    ports: dict[str, str] = {}
    units: dict[tuple[str, ...], tuple[str, str]] = {}
    ids = {settings.gateway.effective_device_id: "the gateway itself"}
    for conn_id, conn in settings.connections.items():
        port = _serial_port(conn)
        if conn.enabled and port is not None:
            if port in ports:
                reason = (
                    f"{port} is also the port of connections.{ports[port]}: a serial port is "
                    "one connection (declare its devices under one connection)"
                )
                found.append(Finding(("connections", conn_id, "port"), reason))
            ports.setdefault(port, conn_id)
    for conn_id, conn, dev_id, device in _devices(settings.connections):
        here = ("connections", conn_id, "devices", dev_id)
        device_id = child_identity(conn, device).device_id
        if device_id in ids:
            reason = f"device id {device_id!r} is also {ids[device_id]}"
            found.append(Finding(here, reason))
        ids.setdefault(device_id, ".".join(here))
        address = _address(conn, device)
        if address is None:
            continue
        first = units.setdefault(address, (conn_id, dev_id))
        if first[0] != conn_id:
            reason = (
                f"the same device ({_describe(address)}) as connections.{first[0]}.devices."
                f"{first[1]}: two connections would both poll it (declare it once)"
            )
            found.append(Finding(here, reason))
    return found


def _devices(
    connections: Mapping[str, ConnectionConfig],
) -> Iterator[tuple[str, ConnectionConfig, str, DeviceConfig[Any]]]:
    """Enabled devices of enabled connections: a disabled one is never opened."""
    for conn_id, conn in connections.items():
        if not conn.enabled:
            continue
        devices: Mapping[str, DeviceConfig[Any]] = getattr(conn, "devices", {})
        for dev_id, device in devices.items():
            if device.enabled:
                yield conn_id, conn, dev_id, device


def _serial_port(conn: ConnectionConfig) -> str | None:
    if getattr(conn, "driver", None) in _SERIAL:
        return str(getattr(conn, "port", ""))
    return None


def _address(conn: ConnectionConfig, device: DeviceConfig[Any]) -> tuple[str, ...] | None:
    """The physical device: endpoint and unit (Modbus), or the Bluetooth address."""
    kind = getattr(conn, "driver", None)
    if kind in _TCP:
        host = str(getattr(conn, "host", "")).lower()
        return ("tcp", host, str(getattr(conn, "port", "")), str(getattr(device, "unit_id", "")))
    if kind == "ble":
        return ("ble", str(getattr(device, "address", "")))
    return None


def _describe(address: tuple[str, ...]) -> str:
    if address[0] == "tcp":
        return f"{address[1]}:{address[2]} unit {address[3]}"
    return f"Bluetooth {address[1]}"
