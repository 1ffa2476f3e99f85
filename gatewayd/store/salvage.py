"""Copy what SQLite can still read from a damaged outbox into the new one.

A damaged page costs the rows on it, not the file: the rows of every page SQLite can still
read are copied, table by table, in rowid order. A scan that hits a damaged page resumes
after it: the next rowid whose page can be read is found by doubling steps, then a binary
search back, so a damaged region costs a few dozen probes, however sparse the ids are.

Records keep their ids and record ids, so a record the cloud already had is still a
duplicate it drops. The count of records lost comes from the `records_by_device` index when
it can be read whole (it lives on other pages) and counts more records than were read;
otherwise, when the records table was damaged, it is unknown (a page past the end of a
truncated file reads as empty, so a count can be too small but never too large).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Salvage", "salvage"]

log = logging.getLogger(__name__)

_SKIP_TABLES = {"meta"}  # the new file's own: a new instance, its start counter
_TOP = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Salvage:
    """What was copied from a damaged file.

    Args:
        source: the damaged file (kept where it was set aside).
        records: records copied.
        lost: records the file held and that could not be read; None when not known.
        rows: rows copied from the other tables (dead letters, downlink state).
    """

    source: Path
    records: int
    lost: int | None
    rows: int

    def describe(self) -> str:
        """One line for the log and /healthz."""
        lost = "an unknown number" if self.lost is None else str(self.lost)
        return (
            f"damaged outbox set aside as {self.source}: {self.records} records salvaged, "
            f"{lost} lost"
        )


def salvage(source: Path, target: sqlite3.Connection) -> Salvage:
    """Copy the readable rows of every table `target` shares with the damaged `source`."""
    try:
        old = _open_damaged(source)
    except sqlite3.Error as exc:
        log.error("%s cannot be read at all (%s): nothing salvaged", source, exc)  # noqa: TRY400
        return Salvage(source, 0, None, 0)
    try:
        copied: dict[str, int] = {}
        damaged: set[str] = set()
        for table in _tables(target):
            columns = _common_columns(old, target, table)
            if columns:
                copied[table] = _copy(old, target, table, columns, damaged)
        known = _indexed_records(old)
    finally:
        old.close()
    records = copied.pop("records", 0)
    lost = None if known is None else known - records
    if lost is not None and "records" in damaged and (lost < 0 or known == 0):
        lost = None
    return Salvage(source, records, lost, sum(copied.values()))


def _open_damaged(source: Path) -> sqlite3.Connection:
    # Read-only: nothing is written into a file kept as evidence. With its WAL beside it, the
    # WAL is read too; without, immutable: no lock and no shared-memory file.
    has_wal = Path(f"{source}-wal").exists()
    mode = "ro" if has_wal else "ro&immutable=1"
    conn = sqlite3.connect(f"file:{source}?mode={mode}", uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA cell_size_check=ON")  # find damage in a page, not past it
        # A truncated file is shorter than its header says: SQLite refuses it whole unless
        # the schema is "writable" (the connection is read-only, nothing is written).
        conn.execute("PRAGMA writable_schema=ON")
        conn.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()
    except BaseException:
        conn.close()
        raise
    return conn


def _tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "AND sql NOT LIKE '%WITHOUT ROWID%' ORDER BY name"
    ).fetchall()
    return [name for (name,) in rows if name not in _SKIP_TABLES]


def _common_columns(old: sqlite3.Connection, new: sqlite3.Connection, table: str) -> list[str]:
    try:
        theirs = {row[1] for row in old.execute(f'PRAGMA table_info("{table}")')}
    except sqlite3.Error:
        return []
    return [row[1] for row in new.execute(f'PRAGMA table_info("{table}")') if row[1] in theirs]


def _copy(
    old: sqlite3.Connection,
    new: sqlite3.Connection,
    table: str,
    columns: list[str],
    damaged: set[str],
) -> int:
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" * len(columns))
    insert = f'INSERT OR IGNORE INTO "{table}" ({names}) VALUES ({marks})'  # noqa: S608
    copied = 0
    new.execute("BEGIN IMMEDIATE")
    try:
        for row in _readable(old, table, names, damaged):
            try:
                copied += new.execute(insert, row).rowcount
            except sqlite3.Error:  # a row read from a damaged page that breaks the schema
                continue
        new.execute("COMMIT")
    except BaseException:
        if new.in_transaction:
            new.execute("ROLLBACK")
        raise
    return copied


def _readable(
    old: sqlite3.Connection, table: str, names: str, damaged: set[str]
) -> Iterator[tuple[object, ...]]:
    """The rows SQLite can read, in rowid order, skipping damaged pages (noted in `damaged`)."""
    query = f'SELECT rowid, {names} FROM "{table}" WHERE rowid > ? ORDER BY rowid'  # noqa: S608
    cursor: int | None = -_TOP - 1
    while cursor is not None:
        try:
            for row in old.execute(query, (cursor,)):
                cursor = row[0]
                yield row[1:]
        except sqlite3.DatabaseError:
            damaged.add(table)
            cursor = _skip(old, table, cursor)
        else:
            return


def _skip(old: sqlite3.Connection, table: str, cursor: int) -> int | None:
    """The smallest position after `cursor` from which the table reads again; None if none."""
    probe = f'SELECT rowid FROM "{table}" WHERE rowid > ? ORDER BY rowid LIMIT 1'  # noqa: S608

    def readable(position: int) -> bool:
        try:
            old.execute(probe, (position,)).fetchall()
        except sqlite3.DatabaseError:
            return False
        return True

    bad, step = cursor, 1
    good = None
    while good is None:
        position = min(cursor + step, _TOP)
        if readable(position):
            good = position
        elif position == _TOP:
            return None
        else:
            bad, step = position, step * 2
    while good - bad > 1:
        middle = (good + bad) // 2
        if readable(middle):
            good = middle
        else:
            bad = middle
    return good


def _indexed_records(old: sqlite3.Connection) -> int | None:
    """How many records the damaged file held, from its device index; None if unreadable."""
    try:
        row = old.execute(
            "SELECT COUNT(*) FROM records INDEXED BY records_by_device WHERE device >= ''"
        ).fetchone()
    except sqlite3.Error:
        return None
    return int(row[0])
