"""One SQLite connection confined to one worker thread: the daemon's only blocking seam.

SQLite calls block. Running them on the event loop would stall every connection runner while
a checkpoint fsyncs; running them on a thread pool would let two threads share a connection.
So every file gets exactly one connection, created on and used only by its own thread, and
coroutines hand it work with `call()`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

__all__ = ["SqliteWorker", "StoreCorrupt"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreCorrupt(Exception):
    """The file failed its integrity check; it was moved aside."""


class SqliteWorker:
    """Owns one SQLite file in WAL mode and the thread that uses it.

    Args:
        path: the database file.
        synchronous: `NORMAL` (a commit survives a crash of the process, the WAL is synced at
            checkpoints) or `FULL` (every commit is fsynced).
        name: thread name, for stack dumps.
    """

    def __init__(
        self, path: Path, *, synchronous: Literal["NORMAL", "FULL"], name: str = "sqlite"
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None
        self.moved_aside: Path | None = None

    async def open(self, schema: Callable[[sqlite3.Connection], None]) -> None:
        """Open (checking integrity first) and bring the schema up to date."""
        await self._run(self._open_sync, schema)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the worker thread and return its result."""
        return await self._run(self._with_conn, fn)

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue `fn(connection)`; the work completes even if nobody awaits the future."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._with_conn, fn)

    async def close(self) -> None:
        """Close the connection and stop the thread."""
        try:
            await self._run(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _with_conn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            msg = f"{self.path} is not open"
            raise RuntimeError(msg)
        return fn(self._conn)

    def _open_sync(self, schema: Callable[[sqlite3.Connection], None]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn: sqlite3.Connection | None = self._connect()
        except sqlite3.DatabaseError:
            conn = None
        if conn is None or not _intact(conn):
            if conn is not None:
                conn.close()
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.rename(Path(f"{aside}{suffix}"))
            self.moved_aside = aside
            log.error(
                "%s failed its integrity check: moved aside to %s, starting with an empty store",
                self.path,
                aside,
            )
            conn = self._connect()
        schema(conn)
        self._conn = conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only effective on a new file
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA journal_size_limit=67108864")
        return conn

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None


def _intact(conn: sqlite3.Connection) -> bool:
    try:
        row = conn.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError:
        return False
    return bool(row and row[0] == "ok")
