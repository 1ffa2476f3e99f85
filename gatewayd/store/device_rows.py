"""SQL of the devices table: rows to `Device` and back, tree queries, paging.

Every function runs on the database worker thread, inside the caller's transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gatewayd.devices import (
    AuthInfo,
    AuthType,
    Device,
    DeviceCreate,
    DeviceStatus,
    DeviceUpdate,
    NodeType,
)
from gatewayd.store.errors import DeviceNotFound, InvalidField

__all__ = [
    "DevicePage",
    "DeviceQuery",
    "Origin",
    "all_devices",
    "auth_changes",
    "descendants",
    "exists",
    "find",
    "get",
    "insert",
    "json_or_none",
    "page",
]

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
    cascade: bool = False  # with gateway_id: every device below it, not only its children


@dataclass(frozen=True, slots=True)
class DevicePage:
    """One page of devices, the total matching the filters, and the next page's marker."""

    devices: list[Device]
    count: int
    marker: int | None


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


def insert(  # noqa: PLR0913, PLR0917 - the new row's context
    conn: sqlite3.Connection,
    request: DeviceCreate,
    parent_id: str | None,
    level: int,
    node_type: NodeType,
    origin: Origin,
    now: datetime,
) -> None:
    """Insert a new device row (status INACTIVE)."""
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
            json_or_none(request.extension_info),
            origin,
        ),
    )


def json_or_none(value: dict[str, Any] | None) -> str | None:
    """JSON text for a column, NULL for None."""
    return None if value is None else json.dumps(value)


def exists(conn: sqlite3.Connection, device_id: str) -> bool:
    """Whether a device of that id is registered."""
    return (
        conn.execute("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        is not None
    )


def find(conn: sqlite3.Connection, device_id: str) -> Device | None:
    """The device of that id, or None."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE device_id = ?",  # noqa: S608
        (device_id,),
    ).fetchone()
    return _row_to_device(row) if row else None


def get(conn: sqlite3.Connection, device_id: str) -> Device:
    """The device of that id; DeviceNotFound otherwise."""
    device = find(conn, device_id)
    if device is None:
        raise DeviceNotFound("device_id", f"no device {device_id!r}")
    return device


def descendants(conn: sqlite3.Connection, device_id: str) -> list[str]:
    """Everything below a device, deepest first (so deleting in order keeps parents valid)."""
    rows = conn.execute(
        "WITH RECURSIVE below(id, level) AS ("
        " SELECT device_id, level FROM devices WHERE parent_id = ?"
        " UNION ALL SELECT d.device_id, d.level FROM devices d JOIN below b ON d.parent_id = b.id"
        ") SELECT id FROM below ORDER BY level DESC",
        (device_id,),
    )
    return [r[0] for r in rows]


def all_devices(conn: sqlite3.Connection, origin: Origin | None) -> list[Device]:
    """Every device (of one origin), parents before children."""
    sql = f"SELECT {_COLUMNS} FROM devices"  # noqa: S608
    params: tuple[str, ...] = ()
    if origin is not None:
        sql += " WHERE origin = ?"
        params = (origin,)
    return [_row_to_device(r) for r in conn.execute(sql + " ORDER BY level, seq", params)]


_BELOW = (
    "WITH RECURSIVE below(id) AS (SELECT device_id FROM devices WHERE parent_id = ? "
    "UNION ALL SELECT d.device_id FROM devices d JOIN below b ON d.parent_id = b.id) "
    "SELECT id FROM below"
)


def page(conn: sqlite3.Connection, query: DeviceQuery) -> DevicePage:
    """One page of devices matching the query, newest first, and the total count."""
    where: list[str] = []
    params: list[Any] = []
    if query.gateway_id is not None and query.cascade:
        where.append(f"device_id IN ({_BELOW})")
        params.append(query.gateway_id)
    for column, value in (
        ("product_id", query.product_id),
        ("parent_id", None if query.cascade else query.gateway_id),
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


def auth_changes(device: Device, request: DeviceUpdate) -> dict[str, Any]:
    """Column changes for an auth_info update, consistent with the resulting auth_type."""
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
