"""The device registry: the gateway, its children and grandchildren, in the state database.

Rules (IoTDA's): device_id defaults to `{product_id}_{node_id}`; a device without gateway_id
sits directly under this gateway; at most two levels of devices below the gateway; status is
INACTIVE until the first data; a device with children is deleted only with cascade; a device
declared in the YAML is deleted only by the YAML (the configuration sync), never through the
API, since the file is the site's truth and its device goes on being polled.

Every change of a device (created, changed, deleted) is announced on `changes()`, so the cloud
link adds or removes it like a configured one, whatever surface made the change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from gatewayd.devices import Device, DeviceCreate, DeviceStatus, DeviceUpdate, NodeType
from gatewayd.products import ProductCatalog
from gatewayd.store import device_rows as rows
from gatewayd.store.access import Trouble, classify
from gatewayd.store.changes import ChangeFeed
from gatewayd.store.db import Database
from gatewayd.store.device_rows import DevicePage, DeviceQuery, Origin
from gatewayd.store.errors import (
    DeviceExists,
    HasChildren,
    InvalidField,
    ParentNotFound,
    ProtectedDevice,
    TooDeep,
    UnknownProduct,
    invalid_request,
)
from gatewayd.store.shadows import ShadowStore, initial_desired, insert_shadows

__all__ = ["MAX_LEVEL", "DevicePage", "DeviceQuery", "Origin", "Registry"]

MAX_LEVEL = 2  # gateway -> child -> grandchild


class Registry:
    """The registered devices.

    Args:
        db: the state database.
        products: product models (the product of an API-created device must exist).
        shadows: the shadow store; a new device's initial shadow is written with it.
        clock: current time (injectable for tests).
    """

    def __init__(
        self,
        db: Database,
        products: ProductCatalog,
        shadows: ShadowStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._products = products
        self._shadows = shadows
        self._clock = clock
        self.gateway_id: str | None = None
        # Field statuses the disk did not take (full): written with the next status change.
        self._unwritten: dict[str, tuple[DeviceStatus, str]] = {}
        self._feed: ChangeFeed[str] = ChangeFeed()
        self._yaml_keys: dict[str, str] = {}  # device id -> its key in the YAML

    def changes(self) -> AsyncIterator[str]:
        """Ids of devices created, changed or deleted, coalesced, for the one consumer.

        The consumer reads each device again (`find`): None means it is gone.
        """
        return self._feed.changes()

    def declared(self, keys: Mapping[str, str]) -> None:
        """Note where the YAML declares devices (device id -> key path), to name in refusals."""
        self._yaml_keys.update(keys)

    async def register_gateway(
        self, device_id: str, node_id: str, product_id: str, name: str | None
    ) -> Device:
        """Register this gateway (level 0) or bring its record up to date; idempotent.

        Raises:
            InvalidField: an identity field breaks the registry rules.
        """
        try:
            request = DeviceCreate(
                device_id=device_id, node_id=node_id, product_id=product_id, device_name=name
            )
        except ValidationError as exc:
            raise invalid_request(exc, "gateway") from None
        desired = initial_desired(self._products.get(product_id), (), "shadow")
        now = self._clock()

        def work(conn: sqlite3.Connection) -> Device:
            row = conn.execute("SELECT device_id FROM devices WHERE level = 0").fetchone()
            if row is None:
                rows.insert(conn, request, None, 0, NodeType.GATEWAY, "gateway", now)
            else:
                if row[0] != device_id and rows.exists(conn, device_id):
                    raise DeviceExists("gateway.device_id", f"{device_id!r} is another device")
                conn.execute(
                    "UPDATE devices SET device_id = ?, node_id = ?, product_id = ?, "
                    "device_name = ? WHERE level = 0",
                    (device_id, node_id, product_id, name),
                )
            insert_shadows(conn, device_id, desired, now)
            return rows.get(conn, device_id)

        gateway = await self._db.transact(work)
        self.gateway_id = gateway.device_id
        return gateway

    async def create(self, request: DeviceCreate, *, origin: Origin = "api") -> Device:
        """Register a device with its initial shadow.

        Raises:
            UnknownProduct: (API requests only) no product of that id is loaded.
            InvalidField: the initial shadow names an unknown service or property.
            ParentNotFound: gateway_id names no device.
            TooDeep: the parent is already two levels below the gateway.
            DeviceExists: the device id is taken.
        """
        product = self._products.get(request.product_id)
        if product is None and origin == "api":
            raise UnknownProduct("product_id", f"no product {request.product_id!r} is loaded")
        overrides = [(s.service_id, s.desired) for s in request.shadow or ()]
        desired = initial_desired(product, overrides, "shadow")
        now = self._clock()

        def work(conn: sqlite3.Connection) -> Device:
            parent_id, level = self._place(conn, request.gateway_id)
            device_id = request.effective_device_id
            if rows.exists(conn, device_id):
                raise DeviceExists("device_id", f"device {device_id!r} already exists")
            rows.insert(conn, request, parent_id, level, NodeType.ENDPOINT, origin, now)
            insert_shadows(conn, device_id, desired, now)
            return rows.get(conn, device_id)

        device = await self._db.transact(work)
        self._shadows_changed(device.device_id, desired)
        self._feed.notify([device.device_id])
        return device

    async def get(self, device_id: str) -> Device:
        """The device of that id.

        Raises:
            DeviceNotFound: no such device.
        """
        return await self._db.run(lambda conn: rows.get(conn, device_id))

    async def find(self, device_id: str) -> Device | None:
        """The device of that id, or None."""
        return await self._db.run(lambda conn: rows.find(conn, device_id))

    async def page(self, query: DeviceQuery) -> DevicePage:
        """Devices matching the filters, newest first; stable across pages."""
        return await self._db.run(lambda conn: rows.page(conn, query))

    async def devices(self, origin: Origin | None = None) -> list[Device]:
        """Every device (of one origin), parents before their children."""
        return await self._db.run(lambda conn: rows.all_devices(conn, origin))

    async def update(self, device_id: str, request: DeviceUpdate) -> Device:
        """Change name, description, extension_info or credentials; absent fields stay.

        Raises:
            DeviceNotFound: no such device.
            InvalidField: the resulting credentials are inconsistent.
        """

        def work(conn: sqlite3.Connection) -> Device:
            device = rows.get(conn, device_id)
            changes: dict[str, Any] = {}
            for name in ("device_name", "description"):
                if name in request.model_fields_set:
                    changes[name] = getattr(request, name)
            if "extension_info" in request.model_fields_set:
                changes["extension_info"] = rows.json_or_none(request.extension_info)
            if request.auth_info is not None:
                changes.update(rows.auth_changes(device, request))
            if changes:
                assignments = ", ".join(f"{k} = ?" for k in changes)
                conn.execute(
                    f"UPDATE devices SET {assignments} WHERE device_id = ?",  # noqa: S608
                    (*changes.values(), device_id),
                )
            return rows.get(conn, device_id)

        device = await self._db.transact(work)
        self._feed.notify([device_id])
        return device

    async def update_configured(
        self, device_id: str, node_id: str, product_id: str, name: str | None
    ) -> Device:
        """Bring a configured device's identity fields in line with the YAML."""
        desired = initial_desired(self._products.get(product_id), (), "shadow")
        now = self._clock()

        def work(conn: sqlite3.Connection) -> Device:
            conn.execute(
                "UPDATE devices SET node_id = ?, product_id = ?, device_name = ?, "
                "origin = 'config' WHERE device_id = ?",
                (node_id, product_id, name, device_id),
            )
            insert_shadows(conn, device_id, desired, now)
            return rows.get(conn, device_id)

        device = await self._db.transact(work)
        self._feed.notify([device_id])
        return device

    async def delete(
        self, device_id: str, *, cascade: bool = False, origin: Origin = "api"
    ) -> list[str]:
        """Delete a device (and with cascade, everything below it); returns the deleted ids.

        Args:
            device_id: the device.
            cascade: also delete every device below it.
            origin: who asks: `config` (the YAML's sync) may delete a configured device,
                nobody else may.

        Raises:
            DeviceNotFound: no such device.
            ProtectedDevice: it is the gateway itself, or (unless `origin` is `config`) it or
                a device below it is declared in the YAML.
            HasChildren: it has children and cascade is false.
        """

        def work(conn: sqlite3.Connection) -> list[str]:
            device = rows.get(conn, device_id)
            if device.node_type is NodeType.GATEWAY:
                raise ProtectedDevice("device_id", "the gateway itself cannot be deleted")
            if origin != "config" and device.origin == "config":
                raise ProtectedDevice("device_id", self._declared_msg(device_id))
            below = rows.descendants(conn, device_id)
            if below and not cascade:
                raise HasChildren(
                    "device_id",
                    f"device {device_id!r} has {len(below)} device(s) below it; "
                    "delete them first or ask for cascade=true",
                )
            doomed = [*below, device_id]
            if origin != "config":
                for below_id in below:
                    if rows.get(conn, below_id).origin == "config":
                        raise ProtectedDevice("device_id", self._declared_msg(below_id))
            conn.executemany("DELETE FROM devices WHERE device_id = ?", [(d,) for d in doomed])
            return doomed

        doomed = await self._db.transact(work)
        self._feed.notify(doomed)
        return doomed

    def _declared_msg(self, device_id: str) -> str:
        key = self._yaml_keys.get(device_id, "connections.<connection>.devices.<key>")
        return (
            f"device {device_id!r} is declared in the configuration ({key}): remove it "
            "there and restart gatewayd; it cannot be deleted through the API"
        )

    async def set_status(self, device_id: str, status: DeviceStatus) -> Device:
        """Record a connection status reported by the field (ONLINE, OFFLINE, ABNORMAL).

        Raises:
            DeviceNotFound: no such device.
            InvalidField: INACTIVE cannot be set; it only describes a device never heard from.
        """
        if status is DeviceStatus.INACTIVE:
            raise InvalidField("status", "INACTIVE is not a status a device can go back to")
        pending = {**self._unwritten, device_id: (status, self._clock().isoformat())}

        def work(conn: sqlite3.Connection) -> Device:
            rows.get(conn, device_id)  # DeviceNotFound for an unknown one
            for device, (state, at) in pending.items():
                conn.execute(
                    "UPDATE devices SET status = ?, connection_status_update_time = ?, "
                    "active_time = COALESCE(active_time, CASE WHEN ? = 'ONLINE' "
                    "THEN ? END) WHERE device_id = ? AND status != ?",
                    (state.value, at, state.value, at, device, state.value),
                )
            return rows.get(conn, device_id)

        try:
            updated = await self._db.transact(work)
        except sqlite3.Error as exc:
            # The field's status is the gateway's to keep, not a client's request to refuse:
            # a disk that takes nothing (full) must not stop the connection that reported it.
            if classify(exc) not in {Trouble.DISK, Trouble.LOCKED}:
                raise
            self._unwritten = pending
            self._db.writes_failing(str(exc))
            return await self.get(device_id)
        self._unwritten = {}
        return updated

    def _place(self, conn: sqlite3.Connection, gateway_id: str | None) -> tuple[str, int]:
        """The parent's id and the new device's level."""
        parent_id = gateway_id or self.gateway_id
        if parent_id is None:
            raise ParentNotFound("gateway_id", "no gateway is registered yet")
        parent = rows.find(conn, parent_id)
        if parent is None:
            raise ParentNotFound("gateway_id", f"no device {parent_id!r} to attach to")
        if parent.level >= MAX_LEVEL:
            raise TooDeep(
                "gateway_id",
                f"device {parent_id!r} is already {parent.level} levels below the gateway; "
                f"at most {MAX_LEVEL} levels of child devices are supported",
            )
        return parent_id, parent.level + 1

    def _shadows_changed(self, device_id: str, desired: dict[str, dict[str, Any]]) -> None:
        self._shadows.notify_initial(device_id, [sid for sid, v in desired.items() if v])
