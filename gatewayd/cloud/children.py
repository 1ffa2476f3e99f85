"""Which children the gateway manages, and their latest status.

The list of children is behind `ChildrenSource`, so the configuration is only the first of its
sources (the device registry will be another). Status is a latest-value table, not a log: after a
week offline the cloud gets the current status once, not every flap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gatewayd.identity import child_identity
from gatewayd.settings import Settings

__all__ = [
    "Child",
    "ChildStatus",
    "ChildrenSource",
    "ConfiguredChildren",
    "StatusBoard",
]

ChildStatus = Literal["ONLINE", "OFFLINE", "ABNORMAL"]


@dataclass(frozen=True, slots=True)
class Child:
    """A device registered under the gateway, as the cloud's `children/add` wants it."""

    device_id: str
    node_id: str
    product_id: str
    name: str | None = None
    parent_device_id: str | None = None


class ChildrenSource(Protocol):
    """Where the list of children comes from (configuration now, the registry later)."""

    def children(self) -> Sequence[Child]:
        """Every child of the gateway, parents before their own children."""
        ...

    def device_id(self, connection: str, device: str) -> str | None:
        """The device id of a configured field device (connection and device keys)."""
        ...


class ConfiguredChildren:
    """Children declared under `connections` in the configuration.

    Args:
        settings: the configuration; the gateway is every top-level device's parent.
    """

    def __init__(self, settings: Settings) -> None:
        gateway = settings.gateway.effective_device_id
        self._ids: dict[tuple[str, str], str] = {}
        parents: list[Child] = []
        grandchildren: list[Child] = []
        for conn_id, conn in settings.connections.items():
            devices = getattr(conn, "devices", {})
            identities = {key: child_identity(conn, dev) for key, dev in devices.items()}
            for key, dev in devices.items():
                ident = identities[key]
                self._ids[(conn_id, key)] = ident.device_id
                parent = identities[ident.parent_key].device_id if ident.parent_key else gateway
                child = Child(ident.device_id, ident.node_id, ident.product_id, dev.name, parent)
                (grandchildren if ident.parent_key else parents).append(child)
        self._children = tuple(parents + grandchildren)

    def children(self) -> Sequence[Child]:
        """Every configured device, parents first."""
        return self._children

    def device_id(self, connection: str, device: str) -> str | None:
        """The device id of a configured device."""
        return self._ids.get((connection, device))


class StatusBoard:
    """Latest status per child; the uplink sends what changed since it last looked."""

    def __init__(self) -> None:
        self._status: dict[str, ChildStatus] = {}
        self._unsent: set[str] = set()
        self.changed = asyncio.Event()

    def set(self, device_id: str, status: ChildStatus) -> None:
        """Record a child's status; only a change is queued for the cloud."""
        if self._status.get(device_id) != status:
            self._status[device_id] = status
            self._unsent.add(device_id)
            self.changed.set()

    def snapshot(self) -> Mapping[str, ChildStatus]:
        """Every known status (sent in full on each connect)."""
        self.changed.clear()
        self._unsent.clear()
        return dict(self._status)

    def take_changes(self) -> Mapping[str, ChildStatus]:
        """Statuses changed since the last snapshot or take."""
        self.changed.clear()
        changes = {d: self._status[d] for d in self._unsent}
        self._unsent.clear()
        return changes

    def restore(self, changes: Mapping[str, ChildStatus]) -> None:
        """Put back changes that could not be sent (unless a newer status replaced them)."""
        for device_id, status in changes.items():
            if self._status.get(device_id) == status:
                self._unsent.add(device_id)
        if changes:
            self.changed.set()
