"""The state database: one SQLite file, one connection, one worker thread.

SQLite calls block, so every statement runs on a single dedicated worker thread; the event
loop only awaits the result. One thread also means one connection and no locking between
writers. The schema is versioned with `PRAGMA user_version` and migrated forward at open.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from gatewayd.errors import StateTooNew
from gatewayd.store.access import Trouble, classify
from gatewayd.store.sqlite_worker import Damaged, move_aside, open_sqlite

if TYPE_CHECKING:
    from gatewayd.health import Component

__all__ = ["MIGRATIONS", "Database", "open_database"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Each entry moves the schema from version i to i + 1. Never edit a shipped entry: append one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE devices (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL UNIQUE,
        node_id TEXT NOT NULL,
        product_id TEXT NOT NULL,
        parent_id TEXT REFERENCES devices (device_id) ON UPDATE CASCADE,
        level INTEGER NOT NULL CHECK (level BETWEEN 0 AND 2),
        node_type TEXT NOT NULL,
        device_name TEXT,
        description TEXT,
        app_id TEXT,
        fw_version TEXT,
        sw_version TEXT,
        device_sdk_version TEXT,
        auth_type TEXT NOT NULL,
        secret TEXT,
        secondary_secret TEXT,
        fingerprint TEXT,
        secondary_fingerprint TEXT,
        secure_access INTEGER NOT NULL,
        timeout INTEGER NOT NULL,
        status TEXT NOT NULL,
        create_time TEXT NOT NULL,
        active_time TEXT,
        connection_status_update_time TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        extension_info TEXT,
        origin TEXT NOT NULL,
        cloud_state TEXT NOT NULL DEFAULT 'pending',
        cloud_reason TEXT
    );
    CREATE INDEX devices_parent ON devices (parent_id, seq);
    CREATE INDEX devices_product ON devices (product_id, seq);
    CREATE INDEX devices_node ON devices (node_id, seq);
    CREATE INDEX devices_name ON devices (device_name, seq);
    CREATE INDEX devices_status ON devices (status, seq);
    CREATE TABLE shadows (
        device_id TEXT NOT NULL
            REFERENCES devices (device_id) ON UPDATE CASCADE ON DELETE CASCADE,
        service_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        desired TEXT NOT NULL DEFAULT '{}',
        reported TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (device_id, service_id)
    ) WITHOUT ROWID;
    """,
)


class Database:
    """An open state database; use `open_database()` to get one.

    Args:
        path: the SQLite file.
        executor: the single worker thread every statement runs on.
        connection: opened on that worker thread.
    """

    def __init__(
        self,
        path: Path,
        executor: ThreadPoolExecutor,
        connection: sqlite3.Connection,
        moved_aside: Path | None = None,
    ) -> None:
        self.path = path
        self._executor = executor
        self._conn = connection
        self.moved_aside = moved_aside  # where a corrupt file went when this one was created
        self.health: Component | None = None  # the `store` component, told of failing writes
        self.in_memory: str | None = None  # why the data lives in memory for this run

    def writes_failing(self, reason: str) -> None:
        """Writes fail (a full disk): the daemon goes on, degraded, until `writes_ok()`."""
        if self.health is not None:
            self.health.degrade(
                "state.writes",
                f"state database {self.path}: writes fail ({reason}); kept in memory and retried",
            )

    def writes_ok(self) -> None:
        """Writes succeed again."""
        if self.health is not None:
            self.health.clear("state.writes")

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(connection)` on the worker thread (autocommit) and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, work, self._conn)

    async def transact(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(connection)` as one transaction: committed if it returns, else rolled back."""
        return await self.run(functools.partial(_in_transaction, work))

    async def schema_version(self) -> int:
        """The schema version stored in the file."""
        return await self.run(_user_version)


@asynccontextmanager
async def open_database(
    path: Path, migrations: Sequence[str] = MIGRATIONS
) -> AsyncIterator[Database]:
    """Open (creating and migrating when needed) the database at `path`; close it on exit.

    A file that is not a database or fails SQLite's quick check is moved aside (named in
    `Database.moved_aside` and logged as an error) and a fresh one is created: the daemon keeps
    running, and the registry is rebuilt from the configuration. Only damage does that: a
    file this user may not open, or one another process locks, stops the daemon untouched,
    and a full disk opens it for this process alone (`gatewayd.store.sqlite_worker`).

    Raises:
        StateAccessDenied: the file exists and this user may not read or write it.
        StateLocked: another process holds a lock on it.
        StateTooNew: the file was written by a newer gatewayd.

    A new file the disk cannot take even for this process alone (a wiped state directory on a
    full disk) is kept in memory for the run (`Database.in_memory` says why).
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatewayd-db")
    loop = asyncio.get_running_loop()
    try:
        conn, aside, in_memory = await loop.run_in_executor(
            executor, _connect, path, tuple(migrations)
        )
    except BaseException:
        executor.shutdown(wait=True)
        raise
    try:
        db = Database(path, executor, conn, aside)
        db.in_memory = in_memory
        yield db
    finally:
        # Closing waits for any statement still queued on the worker: nothing half-written.
        await asyncio.shield(loop.run_in_executor(executor, conn.close))
        executor.shutdown(wait=True)


def _connect(
    path: Path, migrations: tuple[str, ...]
) -> tuple[sqlite3.Connection, Path | None, str | None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = None
    pragmas = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")
    try:
        try:
            conn, _ = open_sqlite(path, pragmas)
        except Damaged as exc:
            aside = move_aside(path, "damaged")
            log.error(  # noqa: TRY400 - the damage is the message, not a traceback
                "state database %s is damaged (%s): moved to %s; starting with a fresh one",
                path,
                exc,
                aside,
            )
            conn, _ = open_sqlite(path, pragmas)
    except sqlite3.Error as exc:  # the disk, even for this process alone
        return _in_memory(path, migrations, exc), aside, str(exc)
    try:
        _private(path)
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        _migrate(conn, path, migrations)
    except sqlite3.OperationalError as exc:
        conn.close()
        if classify(exc) is not Trouble.DISK:
            raise
        return _in_memory(path, migrations, exc), aside, str(exc)
    except BaseException:
        conn.close()
        raise
    return conn, aside, None


def _in_memory(path: Path, migrations: tuple[str, ...], exc: sqlite3.Error) -> sqlite3.Connection:
    """A new state database on a disk that takes nothing: this run keeps it in memory.

    The registry is built from the configuration at every start, so the daemon runs; what
    the API adds is lost at the next start.
    """
    log.error("state database %s cannot be created (%s): kept in memory for this run", path, exc)
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=True)
    conn.execute("PRAGMA foreign_keys=ON")
    _migrate(conn, path, migrations)
    return conn


def _private(path: Path) -> None:
    """Mode 0600: the file holds device secrets. Not the owner: say so, go on (it is usable)."""
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError as exc:
        log.warning("state database %s: cannot make it private (mode 0600): %s", path, exc)


def _in_transaction(work: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        conn.execute("COMMIT")  # can fail too (a full disk): then rolled back, never left open
    except BaseException:
        if conn.in_transaction:  # SQLite rolls back by itself on a full disk, or not
            conn.execute("ROLLBACK")
        raise
    return result


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _migrate(conn: sqlite3.Connection, path: Path, migrations: tuple[str, ...]) -> None:
    current = _user_version(conn)
    if current > len(migrations):
        msg = (
            f"state database {path} has schema version {current}; this gatewayd knows "
            f"up to {len(migrations)}: it was written by a newer version (downgrades are not "
            "supported); the file is left as it is"
        )
        raise StateTooNew(msg)
    for version in range(current, len(migrations)):
        # The script and its version bump form one transaction: a crash leaves either.
        try:
            conn.executescript(
                f"BEGIN;\n{migrations[version]}\nPRAGMA user_version = {version + 1};\nCOMMIT;"
            )
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        log.info("state database %s migrated to schema version %d", path, version + 1)
