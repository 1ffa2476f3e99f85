"""Device shadows: desired and reported properties per device and service, versioned.

Desired state comes from people and the cloud; reported state from the field. Every accepted
desired change bumps the (device, service) version; a request that names a version only
applies when it is still current.

Each desired value knows where it came from (`Origin`): asked for (through the API, the cloud's
config or a command), written in the YAML, or only a product default. Only asked values are
ever written to the field (`ServiceShadow.writes()`): a default fills the shadow for the
cloud's view, and once the device has reported that property, the default is shown as what
the device reports. A live meter's CT ratio is never reset to its product's default because
a gateway started, restarted, or lost its state directory.

The core learns of desired changes through `desired_changes()`, an async iterator of
(device_id, service_id) keys. Reported values are written through `gatewayd.store.reported`:
noted in memory on the field's hot path and flushed in batches.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from gatewayd.products import Product, ProductCatalog, ServiceDef
from gatewayd.store.changes import ChangeFeed
from gatewayd.store.db import Database
from gatewayd.store.errors import DeviceNotFound, InvalidField, VersionConflict
from gatewayd.store.reported import ReportedWriter

__all__ = [
    "DesiredUpdate",
    "Origin",
    "ProductDefault",
    "PropertyValue",
    "ServiceShadow",
    "ShadowKey",
    "ShadowStore",
    "initial_desired",
    "insert_shadows",
]

ShadowKey = tuple[str, str]  # (device_id, service_id)

# request: the API, the cloud's config or a command asked for it; config: the YAML's `desired:`;
# default: a product default nobody asked for (or the device's own value standing in for it).
Origin = Literal["request", "config", "default"]
_ASKED: frozenset[str] = frozenset({"request", "config"})


@dataclass(frozen=True, slots=True)
class PropertyValue:
    """One property value, when it was set, and (for desired values) who set it."""

    value: Any
    at: datetime
    origin: Origin = "request"

    @property
    def asked(self) -> bool:
        """Someone asked for this value: it may be written to the field."""
        return self.origin in _ASKED


@dataclass(frozen=True, slots=True)
class ProductDefault:
    """A value of a new device's initial desired state that only a product default gave."""

    value: Any


@dataclass(frozen=True, slots=True)
class ServiceShadow:
    """The shadow of one service of one device."""

    service_id: str
    version: int
    desired: Mapping[str, PropertyValue] = field(default_factory=dict)
    reported: Mapping[str, PropertyValue] = field(default_factory=dict)

    @property
    def desired_time(self) -> datetime | None:
        """When desired last changed (the latest property time)."""
        return max((p.at for p in self.desired.values()), default=None)

    @property
    def reported_time(self) -> datetime | None:
        """When the field last reported (the latest property time)."""
        return max((p.at for p in self.reported.values()), default=None)

    def delta(self) -> dict[str, Any]:
        """Desired properties whose value differs from the reported one (or has none)."""
        out = {}
        for name, want in self.desired.items():
            have = self.reported.get(name)
            if have is None or not _same(have.value, want.value):
                out[name] = want.value
        return out

    def writes(self) -> dict[str, Any]:
        """The delta someone asked for: what may be written to the field.

        A default (`origin == "default"`) is never written: until the device reports the
        property it waits in the delta for the cloud's view, and after it, it is the value
        the device reports.
        """
        out = {}
        for name, want in self.desired.items():
            if not want.asked:
                continue
            have = self.reported.get(name)
            if have is None or not _same(have.value, want.value):
                out[name] = want.value
        return out


@dataclass(frozen=True, slots=True)
class DesiredUpdate:
    """A desired change of one service: `None` deletes a property, `{}` clears them all.

    Args:
        service_id: the service.
        desired: property values.
        version: apply only if the service's version is still this one.
    """

    service_id: str
    desired: Mapping[str, Any]
    version: int | None = None


class ShadowStore:
    """Shadows in the state database.

    Reported values from the field's hot path are noted in memory (`note_reported()`) and
    written by `run()` at most once per `flush_ms`; every read of a device's shadow writes
    that device's noted values first, so readers never see older state than was noted.

    Args:
        db: the state database.
        products: product models that values are checked against.
        clock: current time (injectable for tests).
        flush_ms: the shortest time between two writes of noted reported values.
    """

    def __init__(
        self,
        db: Database,
        products: ProductCatalog,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        flush_ms: int = 1000,
    ) -> None:
        self._db = db
        self._products = products
        self._clock = clock
        self._feed: ChangeFeed[ShadowKey] = ChangeFeed()
        self._reported = ReportedWriter(db, products, flush_ms / 1000)

    async def get(self, device_id: str) -> list[ServiceShadow]:
        """Every service's shadow of the device (the product's services first, in order)."""
        await self._reported.flush(device_id)
        return await self._db.run(lambda conn: self._get(conn, device_id))

    async def delta(self, device_id: str) -> dict[str, dict[str, Any]]:
        """Per service, the desired values the field has not reported yet."""
        shadows = await self.get(device_id)
        return {s.service_id: d for s in shadows if (d := s.delta())}

    async def update_desired(
        self, device_id: str, updates: Sequence[DesiredUpdate], *, field_prefix: str = "shadow"
    ) -> list[ServiceShadow]:
        """Apply desired changes to several services at once (all or none); they are asked for.

        Raises:
            DeviceNotFound: no such device.
            InvalidField: unknown service or property, read-only property, bad value.
            VersionConflict: a given version is not the current one.
        """
        now = self._clock()

        def work(conn: sqlite3.Connection) -> list[ServiceShadow]:
            product = self._product_of(conn, device_id)
            seen: set[str] = set()
            for i, update in enumerate(updates):
                where = f"{field_prefix}.{i}"
                if update.service_id in seen:
                    raise InvalidField(f"{where}.service_id", "service given twice")
                seen.add(update.service_id)
                self._apply_desired(conn, device_id, product, update, where, now)
            return self._get(conn, device_id)

        await self._reported.flush(device_id)  # the reply carries the reported state too
        result = await self._db.transact(work)
        self._feed.notify((device_id, u.service_id) for u in updates)
        return result

    async def configure_desired(
        self, device_id: str, values: Mapping[str, Any], *, field_prefix: str
    ) -> dict[str, Any]:
        """Apply the YAML's `desired:` of a device (property -> value); returns what changed.

        A value is taken when the property's desired value is a default, is absent, or came
        from the YAML with another value (the file changed). A value asked for later through
        the API or the cloud stands: the file does not undo it at the next start. Each
        property goes to the first service of the device's product that has it.

        Raises:
            DeviceNotFound: no such device.
            InvalidField: a property the product does not have or cannot set, or a bad value
                (named `<field_prefix>.<property>`).
        """
        now = self._clock()

        def work(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            product = self._product_of(conn, device_id)
            changed: dict[str, dict[str, Any]] = {}
            for name, value in values.items():
                where = f"{field_prefix}.{name}"
                service = _service_with(product, name)
                if service is None:
                    raise InvalidField(where, "the device's product has no such property")
                checked = _check_desired(service, name, value, where)
                if checked is None:
                    continue
                row = _read_row(conn, device_id, service.service_id, service.defaults())
                have = row.desired.get(name) if row else None
                if have is not None and (
                    have.origin == "request"
                    or (have.origin == "config" and _same(have.value, checked))
                ):
                    continue
                changed.setdefault(service.service_id, {})[name] = checked
            for service_id, props in changed.items():
                service = product.service(service_id) if product else None
                row = _read_row(conn, device_id, service_id, service.defaults() if service else {})
                desired = dict(row.desired) if row else {}
                desired.update({k: PropertyValue(v, now, "config") for k, v in props.items()})
                _write_row(
                    conn, device_id, service_id, (row.version if row else 0) + 1, desired, None
                )
            return changed

        await self._reported.flush(device_id)
        changed = await self._db.transact(work)
        self._feed.notify((device_id, sid) for sid in changed)
        return {k: v for props in changed.values() for k, v in props.items()}

    def add_reported_source(self, pull: Callable[[], None]) -> Callable[[], None]:
        """Register a producer that holds its latest values and notes them when pulled.

        `pull` is called (synchronously, on the loop) before every transaction of reported
        state, so what it held lands before anything written after it; it notes through
        `note_reported`. Returns `wake`: call it when values are held, so a flush follows
        within `flush_ms`.
        """
        return self._reported.add_source(pull)

    def note_reported(
        self,
        device_id: str,
        service_id: str,
        props: Mapping[str, Any],
        at: datetime | None = None,
    ) -> None:
        """Note values read from the field; they are written within `flush_ms`.

        The field's hot path: no await, no check, only dict work; the latest value of each
        property wins, stamped with the time of its note (`at`, default now). The flush
        checks the values against the device's product, merges the accepted ones and
        activates an INACTIVE device; a refused value or a deleted device is dropped and
        logged once per (device, service, kind of refusal), never failing the others.

        Raises:
            RuntimeError: the store is closed.
        """
        self._reported.note(device_id, service_id, props, at or self._clock())

    async def flush(self) -> None:
        """Write every noted reported value now, in one transaction.

        Raises:
            sqlite3.Error: the transaction failed; the values are kept for the next flush.
        """
        await self._reported.flush()

    async def run(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Write noted reported values at most once per `flush_ms`, until cancelled.

        Args:
            sleep: waits between flushes (injectable for tests).
        """
        await self._reported.run(sleep)

    async def close(self) -> None:
        """Write what is noted; notes after this are refused."""
        await self._reported.close()

    async def report(
        self,
        device_id: str,
        service_id: str,
        props: Mapping[str, Any],
        at: datetime | None = None,
    ) -> ServiceShadow:
        """Record values the field confirmed; the first data also activates the device.

        Values are checked against the device's product (all or none); a device whose
        product has no file reports any JSON value under any service and property. Values
        noted for the service before this call are written first, in the same transaction,
        so none of them can land after these.

        Raises:
            DeviceNotFound: no such device.
            InvalidField: unknown service or property, or a value that does not fit.
        """

        def read(conn: sqlite3.Connection) -> ServiceShadow:
            defaults = _defaults(self._product_of(conn, device_id), service_id)
            written = _read_row(conn, device_id, service_id, defaults)
            assert written is not None  # written just before, same transaction
            return written

        return await self._reported.write(
            device_id, service_id, props, at or self._clock(), then=read
        )

    async def record_reported(
        self,
        device_id: str,
        service_id: str,
        props: Mapping[str, Any],
        at: datetime | None = None,
    ) -> None:
        """`report()` without reading the shadow back; returns once the values are committed.

        Concurrent calls share one transaction. For the field's hot path `note_reported()`
        is cheaper: it writes once per `flush_ms`, not once per call.

        Raises:
            DeviceNotFound: no such device.
            InvalidField: unknown service or property, or a value that does not fit.
        """
        await self._reported.write(device_id, service_id, props, at or self._clock(), _nothing)

    def notify_initial(self, device_id: str, service_ids: Iterable[str]) -> None:
        """Announce the initial desired state of a new device (called by the registry)."""
        self._feed.notify((device_id, sid) for sid in service_ids)

    def desired_changes(self) -> AsyncIterator[ShadowKey]:
        """(device_id, service_id) of every desired change, for the one consumer that writes.

        Changes not yet taken are coalesced per key, so a slow consumer costs no memory growth
        beyond one entry per service and always sees the latest state when it reads the shadow.
        """
        return self._feed.changes()

    def _get(self, conn: sqlite3.Connection, device_id: str) -> list[ServiceShadow]:
        product = self._product_of(conn, device_id)
        rows = {r.service_id: r for r in _read_rows(conn, device_id, product)}
        ordered = [s.service_id for s in product.services] if product else []
        ordered += sorted(set(rows) - set(ordered))
        return [rows.get(sid) or ServiceShadow(sid, 0) for sid in ordered]

    def _product_of(self, conn: sqlite3.Connection, device_id: str) -> Product | None:
        row = conn.execute(
            "SELECT product_id FROM devices WHERE device_id = ?", (device_id,)
        ).fetchone()
        if row is None:
            raise DeviceNotFound("device_id", f"no device {device_id!r}")
        return self._products.get(row[0])

    def _apply_desired(  # noqa: PLR0913, PLR0917 - one transaction's context
        self,
        conn: sqlite3.Connection,
        device_id: str,
        product: Product | None,
        update: DesiredUpdate,
        where: str,
        now: datetime,
    ) -> None:
        service = product.service(update.service_id) if product else None
        if service is None:
            raise InvalidField(
                f"{where}.service_id", f"the device's product has no service {update.service_id!r}"
            )
        row = _read_row(conn, device_id, update.service_id, service.defaults())
        version = row.version if row else 0
        if update.version is not None and update.version != version:
            raise VersionConflict(
                f"{where}.version", f"version {update.version} is not current ({version})"
            )
        desired = dict(row.desired) if row and update.desired else {}
        for name, value in update.desired.items():
            checked = _check_desired(service, name, value, f"{where}.desired.{name}")
            if checked is None:
                desired.pop(name, None)
            else:
                desired[name] = PropertyValue(checked, now)
        _write_row(conn, device_id, update.service_id, version + 1, desired, None)


def initial_desired(
    product: Product | None, overrides: Iterable[tuple[str, Mapping[str, Any]]], field: str
) -> dict[str, dict[str, Any]]:
    """A new device's desired state: product defaults, overridden where the request differs.

    A value that only the product's default gave is a `ProductDefault`: `insert_shadows`
    stores it as such, and it is never written to the field.

    Raises:
        InvalidField: an override names an unknown service or property, or a bad value.
    """
    desired: dict[str, dict[str, Any]] = (
        {
            s.service_id: {k: ProductDefault(v) for k, v in s.defaults().items()}
            for s in product.services
        }
        if product
        else {}
    )
    for i, (service_id, values) in enumerate(overrides):
        service = product.service(service_id) if product else None
        if service is None:
            raise InvalidField(
                f"{field}.{i}.service_id", f"the product has no service {service_id!r}"
            )
        current = desired[service_id]
        if not values:
            current.clear()
        for name, value in values.items():
            checked = _check_desired(service, name, value, f"{field}.{i}.desired.{name}")
            if checked is None:
                current.pop(name, None)
            else:
                current[name] = checked
    return desired


def _check_desired(service: ServiceDef, name: str, value: Any, where: str) -> Any:
    """The stored form of one desired value, None to delete it; InvalidField names `where`."""
    prop = service.property(name)
    if prop is None:
        raise InvalidField(where, f"service {service.service_id} has no such property")
    if value is None:
        return None
    if not prop.writable:
        raise InvalidField(where, "the property is read-only")
    try:
        return prop.check(value)
    except ValueError as exc:
        raise InvalidField(where, str(exc)) from None


def insert_shadows(
    conn: sqlite3.Connection,
    device_id: str,
    desired: Mapping[str, Mapping[str, Any]],
    now: datetime,
) -> None:
    """Create the shadow rows of a new device (inside the caller's transaction)."""
    for service_id, values in desired.items():
        props = {
            k: PropertyValue(v.value, now, "default")
            if isinstance(v, ProductDefault)
            else PropertyValue(v, now)
            for k, v in values.items()
        }
        conn.execute(
            "INSERT OR IGNORE INTO shadows (device_id, service_id, version, desired) "
            "VALUES (?, ?, 0, ?)",
            (device_id, service_id, _dump(props)),
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def _service_with(product: Product | None, name: str) -> ServiceDef | None:
    for service in product.services if product else ():
        if service.property(name) is not None:
            return service
    return None


def _dump(props: Mapping[str, PropertyValue]) -> str:
    """`{name: [value, time]}`, with the origin as a third item when it is not a request."""
    return json.dumps(
        {
            k: [p.value, p.at.isoformat()]
            if p.origin == "request"
            else [p.value, p.at.isoformat(), p.origin]
            for k, p in props.items()
        }
    )


def _load(text: str) -> tuple[dict[str, PropertyValue], set[str]]:
    """The stored values, and the names stored without an origin (before origins were)."""
    out, legacy = {}, set()
    for name, (value, at, *origin) in json.loads(text).items():
        out[name] = PropertyValue(value, datetime.fromisoformat(at), *origin)
        if not origin:
            legacy.add(name)
    return out, legacy


_COLUMNS = "service_id, version, desired, reported"


def _from_row(row: tuple[Any, ...], defaults: Mapping[str, Any]) -> ServiceShadow:
    """A stored row as readers see it: a default stands aside for what the device reports.

    `defaults` (the service's product defaults) place values stored before origins were:
    in a row no request has changed yet (version 0), a value equal to its default is one.
    """
    version = row[1]
    desired, legacy = _load(row[2])
    reported, _ = _load(row[3])
    for name, want in desired.items():
        unasked = want.origin == "default" or (
            version == 0
            and name in legacy
            and name in defaults
            and _same(want.value, defaults[name])
        )
        if unasked:
            have = reported.get(name) or want
            desired[name] = PropertyValue(have.value, have.at, "default")
    return ServiceShadow(row[0], version, desired, reported)


def _read_row(
    conn: sqlite3.Connection, device_id: str, service_id: str, defaults: Mapping[str, Any]
) -> ServiceShadow | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM shadows WHERE device_id = ? AND service_id = ?",  # noqa: S608
        (device_id, service_id),
    ).fetchone()
    return _from_row(row, defaults) if row else None


def _read_rows(
    conn: sqlite3.Connection, device_id: str, product: Product | None
) -> list[ServiceShadow]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM shadows WHERE device_id = ? ORDER BY service_id",  # noqa: S608
        (device_id,),
    )
    return [_from_row(r, _defaults(product, r[0])) for r in rows]


def _defaults(product: Product | None, service_id: str) -> Mapping[str, Any]:
    service = product.service(service_id) if product else None
    return service.defaults() if service else {}


def _write_row(  # noqa: PLR0913, PLR0917 - the row's columns
    conn: sqlite3.Connection,
    device_id: str,
    service_id: str,
    version: int,
    desired: Mapping[str, PropertyValue] | None,
    reported: Mapping[str, PropertyValue] | None,
) -> None:
    """Upsert one row; a None map keeps the stored one."""
    conn.execute(
        "INSERT INTO shadows (device_id, service_id, version, desired, reported) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id, service_id) DO UPDATE SET "
        "version = excluded.version, "
        "desired = CASE WHEN ?6 THEN excluded.desired ELSE shadows.desired END, "
        "reported = CASE WHEN ?7 THEN excluded.reported ELSE shadows.reported END",
        (
            device_id,
            service_id,
            version,
            _dump(desired or {}),
            _dump(reported or {}),
            desired is not None,
            reported is not None,
        ),
    )


def _nothing(conn: sqlite3.Connection) -> None:
    del conn
