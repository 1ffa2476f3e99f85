"""The outbox's tables and the statements that run on its worker thread.

Everything here is synchronous and runs only on the `SqliteWorker` thread; `gatewayd.store.outbox`
is the asyncio face. One transaction per group commit carries new records, deletions after
PUBACK, dead letters and drop counters together, so they are durable together.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Batch", "OutboxTables", "Record", "migrate"]

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
        record_id: the application-level id the cloud deduplicates on (`{boot}-{seq}`).
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
    """What one group commit writes."""

    inserts: list[tuple[str, str, str, bytes, float]] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    dead: list[tuple[int, int | None, str, float]] = field(default_factory=list)
    drops: dict[tuple[str, str], int] = field(default_factory=dict)


def migrate(conn: sqlite3.Connection) -> None:
    """Create or upgrade the tables (`PRAGMA user_version` is the schema version)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        msg = f"outbox schema {version} is newer than this gatewayd ({SCHEMA_VERSION})"
        raise RuntimeError(msg)
    conn.executescript(_SCHEMA)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


class OutboxTables:
    """Counters kept beside the tables so bounds are checked without scanning.

    Only the worker thread calls its methods; the asyncio side reads `bytes`, `count` and
    `newest` (plain values, replaced whole).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM records")
        self.count, self.bytes = row.fetchone()
        self.newest: dict[str, int] = dict(
            conn.execute("SELECT device, MAX(id) FROM records GROUP BY device").fetchall()
        )
        boot = conn.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
        self.boot = int(boot[0]) + 1 if boot else 1
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('boot', ?)", (str(self.boot),))

    def commit(
        self, conn: sqlite3.Connection, batch: Batch, max_bytes: int | None
    ) -> list[tuple[str, int]]:
        """Write one group commit; with `max_bytes`, drop the oldest records beyond it.

        Returns the (device, count) of records dropped for space.
        """
        dropped: dict[str, int] = {}
        conn.execute("BEGIN IMMEDIATE")
        try:
            if batch.inserts:
                conn.executemany(
                    "INSERT INTO records (record_id, device, kind, payload, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    batch.inserts,
                )
                # One writer, one transaction: the new ids are consecutive up to the last.
                last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                first = last - len(batch.inserts) + 1
                newest = dict(self.newest)
                newest.update((r[1], first + i) for i, r in enumerate(batch.inserts))
                self.newest = newest
                self.count += len(batch.inserts)
                self.bytes += sum(len(r[3]) for r in batch.inserts)
            for row_id, code, reason, at in batch.dead:
                self._dead_letter(conn, row_id, code, reason, at)
            if batch.acks:
                self._delete(conn, batch.acks)
            if max_bytes is not None and self.bytes > max_bytes:
                dropped = self._drop_oldest(conn, max_bytes)
                for device, n in dropped.items():
                    key = ("max_bytes", device)
                    batch.drops[key] = batch.drops.get(key, 0) + n
            self._count_drops(conn, batch.drops)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return list(dropped.items())

    def fetch(
        self,
        conn: sqlite3.Connection,
        after: Mapping[str, int],
        per_device: int,
        skip: frozenset[int],
    ) -> list[Record]:
        """Up to `per_device` records of each device with records after its cursor."""
        out: list[Record] = []
        for device, newest in self.newest.items():
            cursor = after.get(device, 0)
            if newest <= cursor:
                continue
            rows = conn.execute(
                "SELECT id, record_id, device, kind, payload, created FROM records "
                "WHERE device = ? AND id > ? ORDER BY id LIMIT ?",
                (device, cursor, per_device),
            ).fetchall()
            out.extend(Record(*row) for row in rows if row[0] not in skip)
        return out

    def expire(self, conn: sqlite3.Connection, *, cutoff: float) -> dict[str, int]:
        """Drop records created before `cutoff`; returns counts per device."""
        first = conn.execute("SELECT created FROM records ORDER BY id LIMIT 1").fetchone()
        if first is None or first[0] >= cutoff:
            return {}
        rows = conn.execute(
            "SELECT device, COUNT(*), SUM(length(payload)) FROM records WHERE created < ? "
            "GROUP BY device",
            (cutoff,),
        ).fetchall()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM records WHERE created < ?", (cutoff,))
            drops = {("max_age", device): n for device, n, _ in rows}
            self._count_drops(conn, drops)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.count -= sum(n for _, n, _ in rows)
        self.bytes -= sum(b for _, _, b in rows)
        return {device: n for device, n, _ in rows}

    def _delete(self, conn: sqlite3.Connection, ids: Sequence[int]) -> None:
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            row = conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM records "  # noqa: S608
                f"WHERE id IN ({marks})",
                chunk,
            ).fetchone()
            conn.execute(f"DELETE FROM records WHERE id IN ({marks})", chunk)  # noqa: S608
            self.count -= row[0]
            self.bytes -= row[1]

    def _dead_letter(
        self, conn: sqlite3.Connection, row_id: int, code: int | None, reason: str, at: float
    ) -> None:
        moved = conn.execute(
            "INSERT INTO dead_letters (id, record_id, device, kind, payload, created, failed_at,"
            " reason_code, reason) SELECT id, record_id, device, kind, payload, created, ?, ?, ?"
            " FROM records WHERE id = ?",
            (at, code, reason, row_id),
        ).rowcount
        if moved:
            self._delete(conn, [row_id])

    def _drop_oldest(self, conn: sqlite3.Connection, max_bytes: int) -> dict[str, int]:
        dropped: dict[str, int] = {}
        while self.bytes > max_bytes:
            rows = conn.execute(
                "SELECT id, device, length(payload) FROM records ORDER BY id LIMIT 256"
            ).fetchall()
            if not rows:
                break
            victims: list[int] = []
            freed = 0
            for row_id, device, size in rows:
                if self.bytes - freed <= max_bytes:
                    break
                victims.append(row_id)
                freed += size
                dropped[device] = dropped.get(device, 0) + 1
            self._delete(conn, victims)
        return dropped

    @staticmethod
    def _count_drops(conn: sqlite3.Connection, drops: Mapping[tuple[str, str], int]) -> None:
        conn.executemany(
            "INSERT INTO drops VALUES (?, ?, ?) "
            "ON CONFLICT (reason, device) DO UPDATE SET count = count + excluded.count",
            [(reason, device, n) for (reason, device), n in drops.items()],
        )


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
