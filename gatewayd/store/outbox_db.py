"""The outbox's tables and the statements that run on its worker thread.

Everything here is synchronous and runs only on the `SqliteWorker` thread; `gatewayd.store.outbox`
is the asyncio face. One transaction per group commit carries new records, deletions after
PUBACK, dead letters and drop counters together, so they are durable together.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gatewayd.errors import StateTooNew

__all__ = ["Batch", "Committed", "OutboxTables", "Record", "migrate", "new_instance"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_device ON records (device, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    failed_at REAL NOT NULL,
    reason_code INTEGER,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS drops (
    reason TEXT NOT NULL,
    device TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (reason, device)
);
"""


@dataclass(frozen=True, slots=True)
class Record:
    """One message bound for the cloud.

    Args:
        id: position in the outbox; increases with every append, never reused.
        record_id: the application-level id the cloud deduplicates on
            (`{instance}.{boot}-{seq}`, docs/protocol.md).
        device: the device the record belongs to; order is kept per device.
        kind: what it is, in dialect-neutral words (`telemetry`, `commands/update`, ...).
        payload: the encoded body.
        created: wall-clock time of the append (seconds since the epoch).
    """

    id: int
    record_id: str
    device: str
    kind: str
    payload: bytes
    created: float


@dataclass(slots=True)
class Batch:
    """What one group commit writes.

    `inserts` carry their ids: the outbox numbers records as they are appended, before they
    are written (and a record acknowledged before its commit is never written at all).
    `known` holds the acknowledged or dead-lettered records the in-memory tail still had: their
    payload sizes are known, so deleting them needs no read-back.
    """

    inserts: list[tuple[int, str, str, str, bytes, float]] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    dead: list[tuple[int, int | None, str, float]] = field(default_factory=list)
    drops: dict[tuple[str, str], int] = field(default_factory=dict)
    known: dict[int, Record] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Committed:
    """What a group commit did, for the asyncio side.

    Args:
        first: the id of the first inserted record; 0 if none.
        dropped: records dropped for `max_bytes`, per device.
        dropped_through: the largest id dropped for `max_bytes` (every id up to it is gone);
            0 if none.
    """

    first: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_through: int = 0


def migrate(conn: sqlite3.Connection) -> None:
    """Create or upgrade the tables (`PRAGMA user_version` is the schema version)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        path = conn.execute("PRAGMA database_list").fetchone()[2]
        msg = (
            f"{path}: outbox schema {version} is newer than this gatewayd knows "
            f"({SCHEMA_VERSION}): "
            "it was written by a newer version; the file is left as it is, upgrade gatewayd "
            "again to send what it holds"
        )
        raise StateTooNew(msg)
    conn.executescript(_SCHEMA)
    if version != SCHEMA_VERSION:  # no write when there is nothing to change (a full disk)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def new_instance() -> str:
    """A random name for one outbox file: 48 bits, 12 hex digits.

    Chosen when a file is created (a first start, a damaged file set aside, an emptied or
    wiped state directory), so record ids never repeat however often the file starts over.
    """
    return secrets.token_hex(6)


class OutboxTables:
    """Counters kept beside the tables so bounds are checked without scanning.

    Only the worker thread calls its methods; the asyncio side reads `bytes`, `count` (plain
    values, replaced whole) and, once at open, `last_id`, `waiting` and `run_id`.

    `run_id` is `{instance}.{boot}`: the file's random instance (kept in `meta`) and the
    number of starts of this file. Every record id of this run begins with it. When the new
    boot number cannot be written (a full disk), this run gets an instance of its own, so a
    later start that reuses the number still makes new ids.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM records")
        self.count, self.bytes = row.fetchone()
        # The newest id of each device with records in the file at open: the backlog.
        self.waiting: dict[str, int] = dict(
            conn.execute("SELECT device, MAX(id) FROM records GROUP BY device").fetchall()
        )
        # AUTOINCREMENT never reuses an id: every later record is newer than this one.
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        self.last_id: int = max([seq[0] if seq else 0, *self.waiting.values()])
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.boot = int(meta.get("boot", 0)) + 1
        instance = meta.get("instance")
        try:
            conn.execute("BEGIN IMMEDIATE")
            if instance is None:
                instance = new_instance()
                conn.execute("INSERT INTO meta VALUES ('instance', ?)", (instance,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('boot', ?)", (str(self.boot),))
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            instance = new_instance()
            log.warning("outbox: start number not written (%s): ids of this run use %s", exc,
                        instance)  # fmt: skip
        self.instance: str = instance
        self.run_id = f"{instance}.{self.boot}"

    def commit(self, conn: sqlite3.Connection, batch: Batch, max_bytes: int | None) -> Committed:
        """Write one group commit; with `max_bytes`, drop the oldest records beyond it.

        The counters change only once the transaction is committed.
        """
        first = 0
        dropped: dict[str, int] = {}
        through = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            count, size = self.count, self.bytes
            if batch.inserts:
                conn.executemany(
                    "INSERT INTO records (id, record_id, device, kind, payload, created) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    batch.inserts,
                )
                first = batch.inserts[0][0]
                count += len(batch.inserts)
                size += sum(len(r[4]) for r in batch.inserts)
            gone = batch.acks
            if batch.dead:
                gone = gone + [
                    row_id
                    for row_id, code, reason, at in batch.dead
                    if self._dead_letter(conn, row_id, code, reason, at)
                ]
            if gone:
                deleted = self._delete(conn, gone, batch.known)
                if deleted is None:
                    count, size = self._totals(conn)
                else:
                    count, size = count - deleted[0], size - deleted[1]
            if max_bytes is not None and size > max_bytes:
                dropped, through, n, freed = self._drop_oldest(conn, size - max_bytes)
                count, size = count - n, size - freed
                for device, k in dropped.items():
                    key = ("max_bytes", device)
                    batch.drops[key] = batch.drops.get(key, 0) + k
            if batch.drops:
                self._count_drops(conn, batch.drops)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self.count, self.bytes = count, size
        if first:
            self.last_id = max(self.last_id, batch.inserts[-1][0])
        return Committed(first, dropped, through)

    def fetch(
        self,
        conn: sqlite3.Connection,
        after: Mapping[str, int],
        per_device: int,
        skip: frozenset[int],
    ) -> list[Record]:
        """Up to `per_device` records of each device in `after`, oldest first after its cursor.

        Records in `skip` (acknowledged, not yet deleted) are left out, not counted.
        """
        out: list[Record] = []
        for device, cursor in after.items():
            position, wanted = cursor, per_device
            while wanted > 0:
                rows = conn.execute(
                    "SELECT id, record_id, device, kind, payload, created FROM records "
                    "WHERE device = ? AND id > ? ORDER BY id LIMIT ?",
                    (device, position, wanted),
                ).fetchall()
                kept = [Record(*row) for row in rows if row[0] not in skip]
                out.extend(kept)
                if len(rows) < wanted:
                    break
                position, wanted = rows[-1][0], wanted - len(kept)
        return out

    def expire(self, conn: sqlite3.Connection, *, cutoff: float) -> tuple[dict[str, int], int]:
        """Drop records created before `cutoff`.

        Returns the counts per device and the largest id dropped (0 if none).
        """
        first = conn.execute("SELECT created FROM records ORDER BY id LIMIT 1").fetchone()
        if first is None or first[0] >= cutoff:
            return {}, 0
        rows = conn.execute(
            "SELECT device, COUNT(*), SUM(length(payload)), MAX(id) FROM records "
            "WHERE created < ? GROUP BY device",
            (cutoff,),
        ).fetchall()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM records WHERE created < ?", (cutoff,))
            drops = {("max_age", device): n for device, n, _, _ in rows}
            self._count_drops(conn, drops)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self.count -= sum(n for _, n, _, _ in rows)
        self.bytes -= sum(b for _, _, b, _ in rows)
        return {device: n for device, n, _, _ in rows}, max((top for *_, top in rows), default=0)

    def any_through(self, conn: sqlite3.Connection, row_id: int) -> bool:
        """Whether any record with an id up to `row_id` is left."""
        row = conn.execute("SELECT 1 FROM records WHERE id <= ? LIMIT 1", (row_id,))
        return row.fetchone() is not None

    def _delete(
        self, conn: sqlite3.Connection, ids: Sequence[int], known: Mapping[int, Record]
    ) -> tuple[int, int] | None:
        """Delete records; returns (records, payload bytes) deleted.

        Sizes of `known` records come from memory. Returns None if one of them was already gone
        (dropped by a bound while its acknowledgement was on its way): then only a recount can
        say what the counters are.
        """
        count = size = 0
        exact = True
        sized = [row_id for row_id in ids if row_id in known] if known else []
        for chunk in _chunks(sized, 500):
            marks = ",".join("?" * len(chunk))
            deleted = conn.execute(
                f"DELETE FROM records WHERE id IN ({marks})",  # noqa: S608
                chunk,
            ).rowcount
            exact = exact and deleted == len(chunk)
            count += deleted
            size += sum(len(known[row_id].payload) for row_id in chunk)
        unsized = [row_id for row_id in ids if row_id not in known] if known else ids
        n, freed = self._delete_unsized(conn, unsized)
        return (count + n, size + freed) if exact else None

    @staticmethod
    def _delete_unsized(conn: sqlite3.Connection, ids: Sequence[int]) -> tuple[int, int]:
        count = size = 0
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            row = conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM records "  # noqa: S608
                f"WHERE id IN ({marks})",
                chunk,
            ).fetchone()
            conn.execute(f"DELETE FROM records WHERE id IN ({marks})", chunk)  # noqa: S608
            count += row[0]
            size += row[1]
        return count, size

    @staticmethod
    def _totals(conn: sqlite3.Connection) -> tuple[int, int]:
        row = conn.execute("SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM records")
        count, size = row.fetchone()
        return int(count), int(size)

    @staticmethod
    def _dead_letter(
        conn: sqlite3.Connection, row_id: int, code: int | None, reason: str, at: float
    ) -> bool:
        """Copy a record to the dead letters; False if it is gone already."""
        moved = conn.execute(
            "INSERT INTO dead_letters (id, record_id, device, kind, payload, created, failed_at,"
            " reason_code, reason) SELECT id, record_id, device, kind, payload, created, ?, ?, ?"
            " FROM records WHERE id = ?",
            (at, code, reason, row_id),
        ).rowcount
        return bool(moved)

    @staticmethod
    def _drop_oldest(conn: sqlite3.Connection, excess: int) -> tuple[dict[str, int], int, int, int]:
        """Delete the oldest records until `excess` payload bytes are freed.

        Returns the drops per device, the largest id dropped, the records and the bytes freed.
        """
        dropped: dict[str, int] = {}
        through = count = freed = 0
        while freed < excess:
            rows = conn.execute(
                "SELECT id, device, length(payload) FROM records WHERE id > ? ORDER BY id "
                "LIMIT 256",
                (through,),
            ).fetchall()
            if not rows:
                break
            victims: list[int] = []
            for row_id, device, size in rows:
                if freed >= excess:
                    break
                victims.append(row_id)
                freed += size
                dropped[device] = dropped.get(device, 0) + 1
            for chunk in _chunks(victims, 500):
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM records WHERE id IN ({marks})", chunk)  # noqa: S608
            count += len(victims)
            through = victims[-1]
        return dropped, through, count, freed

    @staticmethod
    def _count_drops(conn: sqlite3.Connection, drops: Mapping[tuple[str, str], int]) -> None:
        conn.executemany(
            "INSERT INTO drops VALUES (?, ?, ?) "
            "ON CONFLICT (reason, device) DO UPDATE SET count = count + excluded.count",
            [(reason, device, n) for (reason, device), n in drops.items()],
        )


def _rollback(conn: sqlite3.Connection) -> None:
    # On a full disk SQLite may have rolled the transaction back itself: a second ROLLBACK
    # would raise and hide the error that matters.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
