"""Which children the gateway manages, and their latest status.

The list of children is behind `ChildrenSource`: `ConfiguredChildren` (the YAML alone) and
`RegistryChildren`, the daemon's, which follows the device registry, so a device created,
changed or deleted through the local API reaches the cloud like one declared in the YAML.
Status is a latest-value table, not a log: after a week offline the cloud gets the current
status once, not every flap.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gatewayd.devices import Device, NodeType
from gatewayd.identity import child_identity
from gatewayd.settings import Settings
from gatewayd.store.registry import Registry

__all__ = [
    "Child",
    "ChildStatus",
    "ChildrenSource",
    "ConfiguredChildren",
    "RegistryChildren",
    "StatusBoard",
]

log = logging.getLogger(__name__)

RETRY_S = 1.0  # a registry read that failed (the disk) is tried again after this

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
    """Where the list of children comes from, and what changed in it."""

    changed: asyncio.Event  # set when `take_changes()` has something

    def children(self) -> Sequence[Child]:
        """Every child of the gateway, parents before their own children."""
        ...

    def device_id(self, connection: str, device: str) -> str | None:
        """The device id of a configured field device (connection and device keys)."""
        ...

    def take_changes(self) -> Mapping[str, Child | None]:
        """Children added or changed (their new record) or removed (None) since last taken."""
        ...

    def restore(self, changes: Mapping[str, Child | None]) -> None:
        """Put back changes the link could not act on (unless newer ones replaced them)."""
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
        self.changed = asyncio.Event()  # the YAML does not change while the daemon runs

    def children(self) -> Sequence[Child]:
        """Every configured device, parents first."""
        return self._children

    def device_id(self, connection: str, device: str) -> str | None:
        """The device id of a configured device."""
        return self._ids.get((connection, device))

    def take_changes(self) -> Mapping[str, Child | None]:
        """Nothing: the list is the configuration's."""
        return {}

    def restore(self, changes: Mapping[str, Child | None]) -> None:
        """Nothing to put back."""
        del changes


class RegistryChildren:
    """Every device in the registry below the gateway, whichever surface registered it.

    Open it with `load()` before the link uses it (a link that saw no children would ask the
    cloud to delete them all); `run()` then follows the registry's change feed for the life
    of the daemon, connected or not, so the link acts on a change at once while connected
    and finds the current list at its next connect otherwise.

    Args:
        registry: the device registry.
        configured: the YAML's devices, for the field's (connection, device) -> id mapping.
    """

    def __init__(self, registry: Registry, configured: ConfiguredChildren) -> None:
        self._registry = registry
        self._configured = configured
        self._by_id: dict[str, tuple[int, Child]] = {}
        self._ordered: tuple[Child, ...] = ()
        self._changes: dict[str, Child | None] = {}
        self.changed = asyncio.Event()

    async def load(self) -> None:
        """Read every device of the registry."""
        devices = await self._registry.devices()
        self._by_id = {d.device_id: (d.level, _child(d)) for d in devices if _is_child(d)}
        self._order()

    async def run(self) -> None:
        """Follow the registry's changes until cancelled."""
        async for device_id in self._registry.changes():
            while True:
                try:
                    device = await self._registry.find(device_id)
                except sqlite3.Error as exc:
                    log.warning("children: %s not read (%s); trying again", device_id, exc)
                    await asyncio.sleep(RETRY_S)
                    continue
                break
            self._apply(device_id, device)

    def _apply(self, device_id: str, device: Device | None) -> None:
        now = (device.level, _child(device)) if device is not None and _is_child(device) else None
        if self._by_id.get(device_id) == now:
            return
        if now is None:
            del self._by_id[device_id]
        else:
            self._by_id[device_id] = now
        self._order()
        self._changes[device_id] = None if now is None else now[1]
        self.changed.set()

    def _order(self) -> None:
        ranked = sorted(self._by_id.values(), key=lambda pair: pair[0])  # stable: parents first
        self._ordered = tuple(child for _, child in ranked)

    def children(self) -> Sequence[Child]:
        """Every registered device below the gateway, parents first."""
        return self._ordered

    def device_id(self, connection: str, device: str) -> str | None:
        """The device id of a device declared in the YAML."""
        return self._configured.device_id(connection, device)

    def take_changes(self) -> Mapping[str, Child | None]:
        """Children added, changed or removed since last taken."""
        self.changed.clear()
        changes, self._changes = self._changes, {}
        return changes

    def restore(self, changes: Mapping[str, Child | None]) -> None:
        """Put back changes the link could not send, unless a newer one came meanwhile."""
        for device_id, child in changes.items():
            self._changes.setdefault(device_id, child)
        if changes:
            self.changed.set()


def _is_child(device: Device) -> bool:
    return device.node_type is not NodeType.GATEWAY and device.level > 0


def _child(device: Device) -> Child:
    return Child(
        device.device_id, device.node_id, device.product_id, device.device_name, device.gateway_id
    )


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
