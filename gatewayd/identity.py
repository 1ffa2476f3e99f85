"""How configured devices get their registry identity, decided once for every module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gatewayd.driver import ConnectionConfig, DeviceConfig

__all__ = ["ChildIdentity", "child_identity"]


@dataclass(frozen=True, slots=True)
class ChildIdentity:
    """The registry identity of a device declared under `connections`."""

    device_id: str
    node_id: str
    product_id: str
    parent_key: str | None  # device key of the parent on the same connection, if any


def child_identity(connection: ConnectionConfig, device: DeviceConfig[Any]) -> ChildIdentity:
    """node_id defaults to the device key, product_id to the driver kind.

    device_id is `{product_id}_{node_id}`, the registry's default (as IoTDA's), so the same
    YAML always yields the same ids, on every gateway and after every restart.
    """
    node_id = device.node_id or device.id
    product_id = device.product_id or str(getattr(connection, "driver", "device"))
    return ChildIdentity(
        device_id=f"{product_id}_{node_id}",
        node_id=node_id,
        product_id=product_id,
        parent_key=device.parent,
    )
