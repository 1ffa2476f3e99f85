"""One SQLite connection confined to one worker thread: the daemon's only blocking seam.

SQLite calls block. Running them on the event loop would stall every connection runner while
a checkpoint fsyncs; running them on a thread pool would let two threads share a connection.
So every file gets exactly one connection, created on and used only by its own thread, and
coroutines hand it work with `call()`.

Opening tells four troubles apart (`gatewayd.store.access`): a file this user may not open
stops the daemon (`StateAccessDenied`), a lock held by another process too (`StateLocked`),
only damage moves a file aside, and a full disk opens the file for this process alone (a WAL
database needs a shared-memory file SQLite cannot create on a full disk) or, when even that
fails, keeps the data in memory for this run.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

from gatewayd.store.access import (
    SIDE_FILES,
    StateLocked,
    Trouble,
    check_access,
    classify,
    denied,
)

__all__ = ["Damaged", "SqliteWorker", "move_aside", "open_sqlite"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Damaged(Exception):
    """SQLite can open the file, and it fails its integrity check (or is not a database)."""


def open_sqlite(path: Path, pragmas: Sequence[str]) -> tuple[sqlite3.Connection, str | None]:
    """Open `path`, set `pragmas`, run SQLite's quick check.

    Returns the connection and, when the disk refused the shared-memory file, why it was
    opened in exclusive locking mode instead (else None).

    Raises:
        Damaged: the file is not a database or fails the quick check.
        StateAccessDenied: this user may not read or write it.
        StateLocked: another process holds a lock on it.
        sqlite3.Error: of the disk kind (full, I/O) even in exclusive mode.
    """
    check_access(path)
    exclusive: str | None = None
    while True:
        try:
            return _attempt(path, pragmas, exclusive=exclusive is not None), exclusive
        except sqlite3.Error as exc:
            kind = classify(exc)
            if kind is Trouble.DAMAGE:
                raise Damaged(str(exc)) from exc
            if kind is Trouble.ACCESS:
                raise denied(path, str(exc)) from exc
            if kind is Trouble.LOCKED:
                msg = f"{path} is locked by another process ({exc})"
                raise StateLocked(msg) from exc
            if kind is Trouble.DISK and exclusive is None:
                exclusive = str(exc)
                log.warning(
                    "%s: %s; opening it in exclusive mode (no shared-memory file)", path, exc
                )
                continue
            raise


def _attempt(path: Path, pragmas: Sequence[str], *, exclusive: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    try:
        if exclusive:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")  # the WAL index in heap memory
        for pragma in pragmas:
            conn.execute(pragma)
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except BaseException:
        conn.close()
        raise
    if rows != [("ok",)]:
        conn.close()
        raise Damaged("; ".join(str(row[0]) for row in rows[:3]))
    return conn


def move_aside(path: Path, tag: str) -> Path:
    """Rename the file and its WAL files to `<name>.<tag>-<unix time>`; returns the new path."""
    aside = path.with_name(f"{path.name}.{tag}-{int(time.time())}")
    for suffix in ("", *SIDE_FILES):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{aside}{suffix}"))
    return aside


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
        self.moved_aside: Path | None = None  # a damaged file, set aside at open
        self.damage = ""  # what SQLite said about it
        self.was_empty = False  # the file existed with 0 bytes
        self.exclusive: str | None = None  # why it is open for this process alone
        self.in_memory: str | None = None  # why the data is kept in memory for this run

    async def open(self, schema: Callable[[sqlite3.Connection], None]) -> None:
        """Open (checking integrity first) and bring the schema up to date.

        Raises:
            StateAccessDenied: a file this user may not read or write (left untouched).
            StateLocked: another process holds a lock on the file.
        """
        try:
            await self._run(self._open_sync, schema)
        except BaseException:
            self._executor.shutdown(wait=True)
            raise

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
        if self.path.exists() and self.path.stat().st_size == 0:
            self.was_empty = True
            log.warning("%s is empty (0 bytes): starting it as a new file", self.path)
        pragmas = (
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={self._synchronous}",
            "PRAGMA journal_size_limit=67108864",
        )
        new = ("PRAGMA auto_vacuum=INCREMENTAL",)  # a write: only on a new file (a full disk)
        try:
            try:
                fresh = not self.path.exists() or self.path.stat().st_size == 0
                conn, self.exclusive = open_sqlite(self.path, new + pragmas if fresh else pragmas)
            except Damaged as exc:
                self.damage = str(exc)
                self.moved_aside = move_aside(self.path, "damaged")
                log.error(  # noqa: TRY400 - the damage is the message, not a traceback
                    "%s failed its integrity check (%s): moved aside to %s",
                    self.path,
                    exc,
                    self.moved_aside,
                )
                conn, self.exclusive = open_sqlite(self.path, new + pragmas)
        except sqlite3.Error as exc:  # the disk: full or failing, even for this process alone
            self.in_memory = str(exc)
            log.error(  # noqa: TRY400 - weather, not a bug
                "%s cannot be opened (%s): keeping its data in memory for this run", self.path, exc
            )
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=True)
        schema(conn)
        self._conn = conn

    def _close_sync(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # a full disk: the WAL stays, SQLite replays it at open
            log.warning("%s: checkpoint at close failed: %s", self.path, exc)
        finally:
            self._conn.close()
            self._conn = None
