"""The device registry: the gateway, its children and grandchildren, in the state database.

Rules (seed 004): device_id defaults to `{product_id}_{node_id}`; a device without gateway_id
sits directly under this gateway; at most two levels of devices below the gateway; status is
INACTIVE until the first data; a device with children is deleted only with cascade.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from gatewayd.devices import (
    AuthInfo,
    AuthType,
    Device,
    DeviceCreate,
    DeviceStatus,
    DeviceUpdate,
    NodeType,
)
from gatewayd.products import ProductCatalog
from gatewayd.store.db import Database
from gatewayd.store.errors import (
    DeviceExists,
    DeviceNotFound,
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
Origin = Literal["gateway", "config", "api"]


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """Filters and paging of a device list; newest first, like IoTDA.

    Args:
        marker: the `seq` of the last device of the previous page; only older ones follow.
        offset: devices skipped after the marker.
    """

    product_id: str | None = None
    gateway_id: str | None = None
    node_id: str | None = None
    device_name: str | None = None
    status: DeviceStatus | None = None
    limit: int = 10
    offset: int = 0
    marker: int | None = None


@dataclass(frozen=True, slots=True)
class DevicePage:
    """One page of devices, the total matching the filters, and the next page's marker."""

    devices: list[Device]
    count: int
    marker: int | None


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
            row = conn.execute(f"SELECT {_COLUMNS} FROM devices WHERE level = 0").fetchone()  # noqa: S608
            if row is None:
                _insert(conn, request, None, 0, NodeType.GATEWAY, "gateway", now)
            else:
                conn.execute(
                    "UPDATE devices SET device_id = ?, node_id = ?, product_id = ?, "
                    "device_name = ? WHERE level = 0",
                    (device_id, node_id, product_id, name),
                )
            insert_shadows(conn, device_id, desired, now)
            return _get(conn, device_id)

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
            if _exists(conn, device_id):
                raise DeviceExists("device_id", f"device {device_id!r} already exists")
            _insert(conn, request, parent_id, level, NodeType.ENDPOINT, origin, now)
            insert_shadows(conn, device_id, desired, now)
            return _get(conn, device_id)

        device = await self._db.transact(work)
        self._shadows_changed(device.device_id, desired)
        return device

    async def get(self, device_id: str) -> Device:
        """The device of that id.

        Raises:
            DeviceNotFound: no such device.
        """
        return await self._db.run(lambda conn: _get(conn, device_id))

    async def find(self, device_id: str) -> Device | None:
        """The device of that id, or None."""
        return await self._db.run(lambda conn: _find(conn, device_id))

    async def page(self, query: DeviceQuery) -> DevicePage:
        """Devices matching the filters, newest first; stable across pages."""
        return await self._db.run(lambda conn: _list(conn, query))

    async def devices(self, origin: Origin | None = None) -> list[Device]:
        """Every device (of one origin), parents before their children."""
        return await self._db.run(lambda conn: _all(conn, origin))

    async def update(self, device_id: str, request: DeviceUpdate) -> Device:
        """Change name, description, extension_info or credentials; absent fields stay.

        Raises:
            DeviceNotFound: no such device.
            InvalidField: the resulting credentials are inconsistent.
        """

        def work(conn: sqlite3.Connection) -> Device:
            device = _get(conn, device_id)
            changes: dict[str, Any] = {}
            for name in ("device_name", "description"):
                if name in request.model_fields_set:
                    changes[name] = getattr(request, name)
            if "extension_info" in request.model_fields_set:
                changes["extension_info"] = _json_or_none(request.extension_info)
            if request.auth_info is not None:
                changes.update(_auth_changes(device, request))
            if changes:
                assignments = ", ".join(f"{k} = ?" for k in changes)
                conn.execute(
                    f"UPDATE devices SET {assignments} WHERE device_id = ?",  # noqa: S608
                    (*changes.values(), device_id),
                )
            return _get(conn, device_id)

        return await self._db.transact(work)

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
            return _get(conn, device_id)

        return await self._db.transact(work)

    async def delete(self, device_id: str, *, cascade: bool = False) -> list[str]:
        """Delete a device (and with cascade, everything below it); returns the deleted ids.

        Raises:
            DeviceNotFound: no such device.
            ProtectedDevice: it is the gateway itself.
            HasChildren: it has children and cascade is false.
        """

        def work(conn: sqlite3.Connection) -> list[str]:
            device = _get(conn, device_id)
            if device.node_type is NodeType.GATEWAY:
                raise ProtectedDevice("device_id", "the gateway itself cannot be deleted")
            below = _descendants(conn, device_id)
            if below and not cascade:
                raise HasChildren(
                    "device_id",
                    f"device {device_id!r} has {len(below)} device(s) below it; "
                    "delete them first or ask for cascade=true",
                )
            doomed = [*below, device_id]
            conn.executemany("DELETE FROM devices WHERE device_id = ?", [(d,) for d in doomed])
            return doomed

        return await self._db.transact(work)

    async def set_status(self, device_id: str, status: DeviceStatus) -> Device:
        """Record a connection status reported by the field (ONLINE, OFFLINE, ABNORMAL).

        Raises:
            DeviceNotFound: no such device.
            InvalidField: INACTIVE cannot be set; it only describes a device never heard from.
        """
        if status is DeviceStatus.INACTIVE:
            raise InvalidField("status", "INACTIVE is not a status a device can go back to")
        now = self._clock().isoformat()

        def work(conn: sqlite3.Connection) -> Device:
            device = _get(conn, device_id)
            if device.status is not status:
                conn.execute(
                    "UPDATE devices SET status = ?, connection_status_update_time = ?, "
                    "active_time = COALESCE(active_time, CASE WHEN ? = 'ONLINE' "
                    "THEN ? END) WHERE device_id = ?",
                    (status.value, now, status.value, now, device_id),
                )
            return _get(conn, device_id)

        return await self._db.transact(work)

    def _place(self, conn: sqlite3.Connection, gateway_id: str | None) -> tuple[str, int]:
        """The parent's id and the new device's level."""
        parent_id = gateway_id or self.gateway_id
        if parent_id is None:
            raise ParentNotFound("gateway_id", "no gateway is registered yet")
        parent = _find(conn, parent_id)
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


_COLUMNS = (
    "seq, device_id, node_id, product_id, parent_id, level, node_type, device_name, "
    "description, app_id, fw_version, sw_version, device_sdk_version, auth_type, secret, "
    "fingerprint, secure_access, timeout, status, create_time, active_time, "
    "connection_status_update_time, tags, extension_info, origin"
)


def _row_to_device(row: Sequence[Any]) -> Device:
    (seq, device_id, node_id, product_id, parent_id, level, node_type, name, description,
     app_id, fw, sw, sdk, auth_type, secret, fingerprint, secure, timeout, status, created,
     active, changed, tags, ext, origin) = row  # fmt: skip
    return Device(
        device_id=device_id,
        node_id=node_id,
        product_id=product_id,
        gateway_id=parent_id or device_id,
        node_type=NodeType(node_type),
        level=level,
        status=DeviceStatus(status),
        create_time=datetime.fromisoformat(created),
        auth_type=AuthType(auth_type),
        secret=secret,
        fingerprint=fingerprint,
        secure_access=bool(secure),
        timeout=timeout,
        device_name=name,
        description=description,
        app_id=app_id,
        fw_version=fw,
        sw_version=sw,
        device_sdk_version=sdk,
        active_time=datetime.fromisoformat(active) if active else None,
        connection_status_update_time=datetime.fromisoformat(changed) if changed else None,
        tags=tuple((k, v) for k, v in json.loads(tags)),
        extension_info=json.loads(ext) if ext else None,
        origin=origin,
        seq=seq,
    )


def _insert(  # noqa: PLR0913, PLR0917 - the new row's context
    conn: sqlite3.Connection,
    request: DeviceCreate,
    parent_id: str | None,
    level: int,
    node_type: NodeType,
    origin: Origin,
    now: datetime,
) -> None:
    auth = request.auth_info or AuthInfo()
    conn.execute(
        "INSERT INTO devices (device_id, node_id, product_id, parent_id, level, node_type, "
        "device_name, description, app_id, auth_type, secret, fingerprint, secure_access, "
        "timeout, status, create_time, extension_info, origin) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            request.effective_device_id,
            request.node_id,
            request.product_id,
            parent_id,
            level,
            node_type.value,
            request.device_name,
            request.description,
            request.app_id,
            auth.auth_type.value,
            auth.secret,
            auth.fingerprint,
            auth.secure_access,
            auth.timeout,
            DeviceStatus.INACTIVE.value,
            now.isoformat(),
            _json_or_none(request.extension_info),
            origin,
        ),
    )


def _json_or_none(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)


def _exists(conn: sqlite3.Connection, device_id: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        is not None
    )


def _find(conn: sqlite3.Connection, device_id: str) -> Device | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE device_id = ?",  # noqa: S608
        (device_id,),
    ).fetchone()
    return _row_to_device(row) if row else None


def _get(conn: sqlite3.Connection, device_id: str) -> Device:
    device = _find(conn, device_id)
    if device is None:
        raise DeviceNotFound("device_id", f"no device {device_id!r}")
    return device


def _descendants(conn: sqlite3.Connection, device_id: str) -> list[str]:
    """Everything below a device, deepest first (so deleting in order keeps parents valid)."""
    rows = conn.execute(
        "WITH RECURSIVE below(id, level) AS ("
        " SELECT device_id, level FROM devices WHERE parent_id = ?"
        " UNION ALL SELECT d.device_id, d.level FROM devices d JOIN below b ON d.parent_id = b.id"
        ") SELECT id FROM below ORDER BY level DESC",
        (device_id,),
    )
    return [r[0] for r in rows]


def _all(conn: sqlite3.Connection, origin: Origin | None) -> list[Device]:
    sql = f"SELECT {_COLUMNS} FROM devices"  # noqa: S608
    params: tuple[str, ...] = ()
    if origin is not None:
        sql += " WHERE origin = ?"
        params = (origin,)
    return [_row_to_device(r) for r in conn.execute(sql + " ORDER BY level, seq", params)]


def _list(conn: sqlite3.Connection, query: DeviceQuery) -> DevicePage:
    where: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("product_id", query.product_id),
        ("parent_id", query.gateway_id),
        ("node_id", query.node_id),
        ("device_name", query.device_name),
        ("status", query.status.value if query.status else None),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    filters = " AND ".join(where) or "1"
    count = conn.execute(
        f"SELECT COUNT(*) FROM devices WHERE {filters}",  # noqa: S608
        params,
    ).fetchone()[0]
    paged = filters
    page_params = list(params)
    if query.marker is not None:
        paged += " AND seq < ?"
        page_params.append(query.marker)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE {paged} ORDER BY seq DESC LIMIT ? OFFSET ?",  # noqa: S608
        (*page_params, query.limit, query.offset),
    ).fetchall()
    devices = [_row_to_device(r) for r in rows]
    return DevicePage(devices, count, devices[-1].seq if devices else None)


def _auth_changes(device: Device, request: DeviceUpdate) -> dict[str, Any]:
    update = request.auth_info
    assert update is not None  # checked by the caller
    auth_type = update.auth_type or device.auth_type
    secret = device.secret if auth_type is AuthType.SECRET else None
    fingerprint = device.fingerprint if auth_type is AuthType.CERTIFICATES else None
    if update.secret is not None:
        if auth_type is not AuthType.SECRET:
            raise InvalidField("auth_info.secret", "only valid with auth_type SECRET")
        secret = update.secret
    if update.fingerprint is not None:
        if auth_type is not AuthType.CERTIFICATES:
            raise InvalidField("auth_info.fingerprint", "only valid with auth_type CERTIFICATES")
        fingerprint = update.fingerprint
    changes: dict[str, Any] = {
        "auth_type": auth_type.value,
        "secret": secret,
        "fingerprint": fingerprint,
    }
    if update.secure_access is not None:
        changes["secure_access"] = update.secure_access
    if update.timeout is not None:
        changes["timeout"] = update.timeout
    return changes
