"""Reported state from the field: noted in memory, written in batches, never out of order.

The reported shadow is a latest-value table: a reader wants each property's last value, not
every reading. So the field's hot path only notes values (`note()`: dict work on the event
loop, nothing checked), and a flush writes each (device, service) key's latest values in one
transaction, at most once per flush interval: 100 devices polled every 100 ms cost one
transaction a second instead of 1,000 merges.

Writes whose caller needs the commit (`write()`, behind `ShadowStore.report()` and
`record_reported()`) are group-committed: concurrent ones share a transaction. Ordering is
by call: every transaction writes, in this order, what a failed transaction kept, then the
queued writes (each preceded by the older values noted for its key, taken from the buffer
when it was called), then the noted values it flushes. So a value noted before a write can
never land after it, and a failed transaction (disk full, I/O error) keeps what it carried
for the next one, which writes it first. Memory stays bounded: the buffer holds one value
per property.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from gatewayd.products import Product, ProductCatalog, PropertyDef, ServiceDef
from gatewayd.store.db import Database
from gatewayd.store.errors import DeviceNotFound, InvalidField, RegistryError

__all__ = ["ReportedWriter", "check_reported"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[str, str]  # (device_id, service_id)
Stamped = tuple[Any, str]  # a value and its time (ISO 8601): the stored [value, time] pair

_FREE = PropertyDef(name="value", type="json")  # any JSON value, for a device without product


@dataclass(slots=True)
class _Entry:
    """The latest noted values of one key; `since` (its first note) activates a new device.

    Values and their stamps are two dicts with the same keys, so a note is two C-level
    `dict.update` calls and no object per value.
    """

    values: dict[str, Any]
    stamps: dict[str, str]
    since: datetime


@dataclass(slots=True)
class _Write:
    """A write whose caller waits for its commit (and `then`'s result, read in the same one)."""

    key: Key
    props: dict[str, Any]
    when: datetime
    older: _Entry | None  # values noted for the key before this call: written just before it
    then: Callable[[sqlite3.Connection], Any]
    done: asyncio.Future[Any]


@dataclass(slots=True)
class _Batch:
    """What one transaction carries, in the order it is written."""

    kept: dict[Key, _Entry]
    writes: list[_Write]
    noted: dict[Key, _Entry]

    def __bool__(self) -> bool:
        return bool(self.kept or self.writes or self.noted)


@dataclass(slots=True)
class _Outcome:
    """What the worker thread hands back: per write its result or refusal, and dropped values."""

    results: list[tuple[bool, Any]] = field(default_factory=list)
    refused: list[tuple[Key, RegistryError]] = field(default_factory=list)


class ReportedWriter:
    """The reported half of the shadow store: the buffer of noted values and its writer.

    Args:
        db: the state database.
        products: product models that values are checked against.
        interval_s: the shortest time between two flushes of noted values by `run()`.
    """

    def __init__(self, db: Database, products: ProductCatalog, interval_s: float) -> None:
        self._db = db
        self._products = products
        self._interval_s = interval_s
        self._noted: dict[Key, _Entry] = {}
        self._kept: dict[Key, _Entry] = {}  # from a failed transaction; written first
        self._queued: list[_Write] = []
        self._turn = asyncio.Lock()  # one transaction at a time, held until it has settled
        self._wake = asyncio.Event()
        self._sources: list[Callable[[], None]] = []
        self._warned: set[tuple[str, str, str]] = set()
        self._failing = False
        self._closed = False

    def note(
        self, device_id: str, service_id: str, props: Mapping[str, Any], when: datetime
    ) -> None:
        """Remember the latest value of each property; the next flush writes them."""
        if self._closed:
            msg = "the shadow store is closed"
            raise RuntimeError(msg)
        stamp = when.isoformat()
        key = (device_id, service_id)
        entry = self._noted.get(key)
        if entry is None:
            self._noted[key] = _Entry(dict(props), dict.fromkeys(props, stamp), when)
        else:
            entry.values.update(props)
            entry.stamps.update(dict.fromkeys(props, stamp))
        self._wake.set()

    def add_source(self, pull: Callable[[], None]) -> Callable[[], None]:
        """Register `pull`, which notes a producer's held values; returns the producer's wake.

        A producer that sees values many times per flush interval (the field: ten polls a
        second) holds only its latest ones and calls the returned wake; every transaction
        pulls first, so what was held is written in the order it was seen.
        """
        self._sources.append(pull)
        return self._wake.set

    def _pull(self) -> None:
        for pull in self._sources:
            pull()

    async def write(
        self,
        device_id: str,
        service_id: str,
        props: Mapping[str, Any],
        when: datetime,
        then: Callable[[sqlite3.Connection], T],
    ) -> T:
        """Write `props` now (all or none) and return `then(conn)` from the same transaction.

        Raises:
            RegistryError: no such device, or a value the product refuses.
            sqlite3.Error: the transaction failed.
        """
        key = (device_id, service_id)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pull()  # values seen before this call are older than it
        self._queued.append(_Write(key, dict(props), when, self._noted.pop(key, None), then, done))
        try:
            if not done.done():
                # Its outcome, good or bad, arrives through `done` like every other write's.
                with contextlib.suppress(Exception):
                    await self._flush(noted=False)
            result: T = await done
        except asyncio.CancelledError:
            done.cancel()  # a queued write is still written; nobody waits for it any more
            raise
        return result

    async def flush(self, device_id: str | None = None) -> None:
        """Write the noted values now: every device's, or only `device_id`'s.

        Raises:
            sqlite3.Error: the transaction failed; its values are kept for the next one.
        """
        await self._flush(noted=True, device_id=device_id)

    async def run(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Flush noted values at most once per interval, as long as the store is open."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            with contextlib.suppress(sqlite3.Error):  # logged when it settled; values kept
                await self.flush()
            await sleep(self._interval_s)

    async def close(self) -> None:
        """Flush what is noted; later notes are refused."""
        self._pull()  # the last values producers hold, before notes are refused
        self._closed = True
        with contextlib.suppress(sqlite3.Error):
            await self.flush()
        if self._kept:
            log.error(
                "reported values of %d device services could not be written at close",
                len(self._kept),
            )

    async def _flush(self, *, noted: bool, device_id: str | None = None) -> None:
        """Write kept values, queued writes and noted ones (all or a device's) in one transaction.

        The turn is held until the transaction has settled, even if this caller is
        cancelled: the next transaction must see what a failed one kept.
        """
        await self._turn.acquire()
        try:
            if noted:
                self._pull()
            batch = self._take(noted=noted, device_id=device_id)
            if not batch:
                self._turn.release()
                return
            work = functools.partial(self._write_batch, batch)
            flush = asyncio.ensure_future(self._db.transact(work))
        except BaseException:
            self._turn.release()
            raise
        flush.add_done_callback(functools.partial(self._settle, batch))
        await asyncio.shield(flush)

    def _take(self, *, noted: bool, device_id: str | None) -> _Batch:
        kept, self._kept = self._kept, {}
        writes, self._queued = self._queued, []
        taken: dict[Key, _Entry] = {}
        if noted and device_id is None:
            taken, self._noted = self._noted, {}
        elif noted:
            for key in [k for k in self._noted if k[0] == device_id]:
                taken[key] = self._noted.pop(key)
        return _Batch(kept, writes, taken)

    def _settle(self, batch: _Batch, flush: asyncio.Future[_Outcome]) -> None:
        try:
            error = flush.exception() if not flush.cancelled() else asyncio.CancelledError()
            if error is None:
                self._settled(batch, flush.result())
            else:
                self._failed(batch, error)
        finally:
            self._turn.release()

    def _settled(self, batch: _Batch, outcome: _Outcome) -> None:
        if self._failing:
            self._failing = False
            self._db.writes_ok()
            log.info("reported state is written again")
        for write, (ok, result) in zip(batch.writes, outcome.results, strict=True):
            if write.done.done():  # its caller was cancelled
                continue
            if ok:
                write.done.set_result(result)
            else:
                write.done.set_exception(result)
        for (device_id, service_id), exc in outcome.refused:
            self._warn_once(device_id, service_id, exc)

    def _failed(self, batch: _Batch, error: BaseException) -> None:
        kept: dict[Key, _Entry] = {}
        for key, entry in batch.kept.items():  # oldest first: newer values win
            _absorb(kept, key, entry)
        for write in batch.writes:
            if write.older is not None:
                _absorb(kept, write.key, write.older)
            if write.done.done():
                continue
            if isinstance(error, asyncio.CancelledError):
                write.done.cancel()
            else:
                write.done.set_exception(error)
        for key, entry in batch.noted.items():
            _absorb(kept, key, entry)
        for key, entry in self._kept.items():  # empty: only a settling transaction adds
            _absorb(kept, key, entry)
        self._kept = kept
        self._wake.set()  # try again after the interval
        if not self._failing:
            self._failing = True
            self._db.writes_failing(str(error))
            log.error(
                "reported state not written, kept for the next flush: %s",
                error,
                exc_info=None if isinstance(error, sqlite3.Error) else error,
            )

    def _warn_once(self, device_id: str, service_id: str, exc: RegistryError) -> None:
        kind = (device_id, service_id, exc.code)
        if kind in self._warned:
            return
        self._warned.add(kind)
        log.warning(
            "reported values of %s, service %s, dropped: %s: %s (later ones like it are dropped "
            "without a warning)",
            device_id,
            service_id,
            exc.field,
            exc.reason,
        )

    # On the worker thread, inside the transaction.

    def _write_batch(self, batch: _Batch, conn: sqlite3.Connection) -> _Outcome:
        outcome = _Outcome()
        for key, entry in batch.kept.items():
            self._merge_noted(conn, key, entry, outcome)
        for write in batch.writes:
            if write.older is not None:
                self._merge_noted(conn, write.key, write.older, outcome)
            try:
                self._merge(conn, *write.key, write.props, write.when)
            except RegistryError as exc:
                outcome.results.append((False, exc))
            else:
                outcome.results.append((True, write.then(conn)))
        for key, entry in batch.noted.items():
            self._merge_noted(conn, key, entry, outcome)
        return outcome

    def _merge(
        self,
        conn: sqlite3.Connection,
        device_id: str,
        service_id: str,
        props: Mapping[str, Any],
        when: datetime,
    ) -> None:
        """Check all of `props` (or refuse them all) and merge them, stamped `when`."""
        product, inactive = self._device(conn, device_id)
        values = check_reported(product, service_id, props)  # JSON values only: no NaN
        stamp = when.isoformat()  # what the shadow store writes, formatted once for all
        _patch(conn, device_id, service_id, {k: (v, stamp) for k, v in values.items()})
        if inactive:  # read in this transaction: an active device needs no UPDATE per write
            _activate(conn, device_id, when)

    def _merge_noted(
        self, conn: sqlite3.Connection, key: Key, entry: _Entry, outcome: _Outcome
    ) -> None:
        """Merge the values the product accepts; the refused ones go to `outcome.refused`."""
        device_id, service_id = key
        try:
            product, inactive = self._device(conn, device_id)
            service = _service_of(product, service_id)
        except RegistryError as exc:
            outcome.refused.append((key, exc))
            return
        values: dict[str, Stamped] = {}
        stamps = entry.stamps
        for name, value in entry.values.items():
            try:
                values[name] = (_check_one(service, service_id, name, value), stamps[name])
            except InvalidField as exc:
                outcome.refused.append((key, exc))
        if values:
            _patch(conn, device_id, service_id, values)
            if inactive:
                _activate(conn, device_id, entry.since)

    def _device(self, conn: sqlite3.Connection, device_id: str) -> tuple[Product | None, bool]:
        """The device's product and whether it is still INACTIVE."""
        row = conn.execute(
            "SELECT product_id, status = 'INACTIVE' FROM devices WHERE device_id = ?",
            (device_id,),
        ).fetchone()
        if row is None:
            raise DeviceNotFound("device_id", f"no device {device_id!r}")
        return self._products.get(row[0]), bool(row[1])


def check_reported(
    product: Product | None, service_id: str, props: Mapping[str, Any]
) -> dict[str, Any]:
    """The stored form of reported values; a device without product reports any JSON value.

    Raises:
        InvalidField: unknown service or property, or a value that does not fit (the first).
    """
    service = _service_of(product, service_id)
    return {name: _check_one(service, service_id, name, v) for name, v in props.items()}


def _service_of(product: Product | None, service_id: str) -> ServiceDef | None:
    """The service values are checked against; None for a device without product."""
    if product is None:
        return None
    service = product.service(service_id)
    if service is None:
        raise InvalidField("service_id", f"the product has no service {service_id!r}")
    return service


def _check_one(service: ServiceDef | None, service_id: str, name: str, value: Any) -> Any:
    prop = _FREE if service is None else service.property(name)
    if prop is None:
        raise InvalidField(name, f"service {service_id} has no property {name!r}")
    try:
        return prop.check(value)
    except ValueError as exc:
        raise InvalidField(name, str(exc)) from None


def _absorb(into: dict[Key, _Entry], key: Key, newer: _Entry) -> None:
    """Merge `newer` into the entry of `key`: its values win, the earlier first note stays."""
    have = into.get(key)
    if have is None:
        into[key] = newer
    else:
        have.values.update(newer.values)
        have.stamps.update(newer.stamps)
        have.since = min(have.since, newer.since)


def _patch(
    conn: sqlite3.Connection, device_id: str, service_id: str, values: Mapping[str, Stamped]
) -> None:
    """Merge stamped values into the stored reported state.

    A property's stored value is an array `[value, time]`, so the merge patch replaces it
    whole; keys keep their order and new ones come last, as a dict merge would. SQLite merges
    (`json_patch`), so the stored row is never decoded and re-encoded in Python.
    """
    conn.execute(
        "INSERT INTO shadows (device_id, service_id, version, desired, reported) "
        "VALUES (?, ?, 0, '{}', ?) ON CONFLICT (device_id, service_id) DO UPDATE SET "
        "reported = json_patch(shadows.reported, excluded.reported)",
        (device_id, service_id, json.dumps(values)),
    )


def _activate(conn: sqlite3.Connection, device_id: str, at: datetime) -> None:
    """First data from the field: INACTIVE becomes ONLINE."""
    stamp = at.isoformat()
    conn.execute(
        "UPDATE devices SET status = 'ONLINE', active_time = ?, "
        "connection_status_update_time = ? WHERE device_id = ? AND status = 'INACTIVE'",
        (stamp, stamp, device_id),
    )
