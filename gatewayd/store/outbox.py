"""The store-and-forward outbox: durable, ordered per device, bounded, deleted after PUBACK.

`append()` returns once the record is committed to SQLite. With `durability: full` that commit
is fsynced; with `batched` a commit survives a crash of the daemon at once, and the WAL is
fsynced at least every `batch_window_ms`, which is therefore the most a power cut can lose.
Concurrent appends share one transaction (group commit), so the rate grows with the number of
producers rather than being bound by one fsync each.

Records leave only by `ack()` (the broker accepted them), `dead_letter()` (the broker refused
them), or a bound (`max_bytes`, `max_age_s`, the memory bound while the disk takes nothing);
every drop is counted by reason and device, logged at most every 10 s, and shown as a problem
of the `store` component in /healthz until no record was dropped for 10 s.

Below the free-disk floor (`min_free_bytes`), or while the disk refuses writes (full, I/O
errors), new records are not written: they are held in memory (`held_max_bytes` at most, the
outbox policy applied beyond that) and sent from there; those the broker acknowledges are
never written, the others are written once the disk takes them again. Housekeeping that
fails (the age bound, the WAL sync) is retried; the daemon goes on.

Records also go to an in-memory tail (`gatewayd.store.outbox_tail`) as they are appended, until
they are acknowledged, so `fetch()` serves a pump that keeps up without reading SQLite. With
`batched` durability, records from `put()` wait up to `batch_window_ms` before their insert
(counted from their own append, so a crash loses at most that window of them, and a power cut
twice it: the wait, then the WAL sync); one the broker acknowledges meanwhile is dropped from
the commit and never written. The file
is always a prefix of what was appended: a commit writes the oldest waiting records, and all
of them when someone waits for one (`append()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from gatewayd.settings import OutboxConfig
from gatewayd.store.outbox_db import Batch, Committed, OutboxTables, Record, migrate
from gatewayd.store.outbox_tail import TAIL_BYTES, Tail
from gatewayd.store.salvage import Salvage, salvage
from gatewayd.store.sqlite_worker import SqliteWorker

if TYPE_CHECKING:
    from gatewayd.health import Component

__all__ = ["DeadLetter", "Outbox", "OutboxFull", "OutboxStats", "Record", "open_outbox"]

log = logging.getLogger(__name__)

MAINTENANCE_S = 1.0
PUT_AHEAD_BYTES = 4 * 1024 * 1024  # records put() without waiting for their commit
RETRY_S = 1.0  # a write the disk refused is tried again after this long
DROPS_QUIET_S = 10.0  # drops are reported (log, /healthz) until this long without one
FLOOR_FRACTION = 50  # the automatic floor: 1/50 of the file system ...
FLOOR_CAP = 64 * 1024 * 1024  # ... and never more than this


def auto_floor(total_bytes: int) -> int:
    """The free-disk floor when `min_free_bytes` is not set: 2 % of the file system, 64 MiB at most.

    A fixed 64 MiB would exceed the free space of a small data partition, and every record
    would be refused on a disk that is nearly empty.
    """
    return min(FLOOR_CAP, total_bytes // FLOOR_FRACTION)


class OutboxFull(Exception):
    """A record was refused: the outbox is at `max_bytes` (reject_new) or the disk floor."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the broker refused or that kept breaking the connection."""

    id: int
    record_id: str
    device: str
    kind: str
    payload: bytes
    created: float
    failed_at: float
    reason_code: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Depth, size and drops, for the API and /metrics."""

    records: int
    bytes: int
    oldest_age_s: float | None
    dead_letters: int
    drops: dict[str, dict[str, int]]
    devices: dict[str, dict[str, int | str]]


class Outbox:
    """The asyncio face of the outbox file; `open_outbox()` makes and runs one.

    Args:
        worker: the SQLite file, already open with the outbox schema.
        tables: counters over the tables.
        config: bounds and durability.
        disk_free: free bytes on the store's file system (injectable for tests).
        clock: wall clock for record ages.
        tail_bytes: memory bound of the tail of unacknowledged records.
        floor: the free-disk floor in bytes (`min_free_bytes`, resolved).
        health: the `store` component, for problems (disk, drops); None in tests.
        memory_bytes: bound of the records held in memory while the disk takes nothing
            (`held_max_bytes` unless given).
    """

    def __init__(  # noqa: PLR0913 - collaborators and bounds, all injected
        self,
        worker: SqliteWorker,
        tables: OutboxTables,
        config: OutboxConfig,
        *,
        disk_free: Callable[[], int],
        clock: Callable[[], float] = time.time,
        tail_bytes: int = TAIL_BYTES,
        floor: int | None = None,
        health: Component | None = None,
        memory_bytes: int | None = None,
    ) -> None:
        self.worker = worker
        self._tables = tables
        self._config = config
        self._disk_free = disk_free
        self._clock = clock
        self._seq = 0
        # Appended, not yet in a commit, by id: (record, monotonic time of the append).
        self._pending: dict[int, tuple[Record, float]] = {}
        self._next_id = tables.last_id + 1
        self._waiters: list[asyncio.Future[None]] = []
        self._pending_bytes = 0
        self._hold_s = config.batch_window_ms / 1000 if config.durability == "batched" else 0.0
        self._hurry = asyncio.Event()  # a record someone waits for: no holding back
        self.unwritten = 0  # records acknowledged before their commit, never written
        self._acks: list[int] = []
        self._acked: set[int] = set()
        self._known: dict[int, Record] = {}  # acknowledged or dead records taken from the tail
        self._tail = Tail(floor=tables.last_id, backlog=tables.waiting, max_bytes=tail_bytes)
        self._dead: list[tuple[int, int | None, str, float]] = []
        self._drops: dict[tuple[str, str], int] = {}
        self._wake = asyncio.Event()
        self._closed = False
        self._dirty = False
        self.changed = asyncio.Event()
        self._prefix = f"{tables.run_id}-"
        self.floor: int = floor if floor is not None else config.min_free_bytes or 0
        self._health = health
        self._memory_bytes = config.held_max_bytes if memory_bytes is None else memory_bytes
        # Why new records are held in memory and not written: None (they are written),
        # "disk_floor" (free disk below the floor) or "disk_full" (the disk refused a write).
        self._memory: str | None = None
        self._retry_at = 0.0
        self.held_dropped = 0  # records held in memory and dropped for the memory bound
        self._recent: dict[str, int] = {}  # drops not yet reported, by reason
        self._episode: dict[str, int] = {}  # drops since the last quiet time, by reason
        self._unlogged: dict[str, int] = {}
        self._last_drop = self._next_drop_log = 0.0
        self.salvage: Salvage | None = None

    @property
    def boot(self) -> str:
        """This run's id, `{instance}.{start}`: every record id appended in it is `{boot}-{seq}`."""
        return self._tables.run_id

    @property
    def held(self) -> int:
        """Records appended and not written yet (held back, or held while the disk takes none)."""
        return len(self._pending)

    @property
    def holding(self) -> str | None:
        """Why new records are held in memory instead of written (None: they are written)."""
        return self._memory

    @property
    def depth(self) -> int:
        """Records waiting (committed, not yet acknowledged)."""
        return int(self._tables.count)

    async def append(self, device: str, kind: str, payload: bytes) -> str:
        """Store one record; returns its record id once it is committed.

        While the disk takes nothing (below the floor, full), it returns once the record is
        held in memory: it is sent from there, and written when the disk takes writes again.

        Raises:
            OutboxFull: at `max_bytes` with `reject_new`, or, while records are held in
                memory, at the memory bound with `reject_new`.
        """
        if self._memory is not None:
            return self._enqueue(device, kind, payload, None)
        done = asyncio.get_running_loop().create_future()
        record_id = self._enqueue(device, kind, payload, done)
        await done
        return record_id

    async def put(self, device: str, kind: str, payload: bytes) -> str:
        """Store one record without waiting for its commit, unless too much waits already.

        For the field's telemetry: a poll must not wait for the disk. A commit that takes
        long (a checkpoint's fsync on a busy disk) would otherwise hold every connection's
        next poll, and a reading never taken is lost for good. Records put here are sent at
        once and written within `batch_window_ms` unless acknowledged first (see the module
        doc); while `PUT_AHEAD_BYTES` of records wait for a commit, `put()` waits like
        `append()`. A failed commit is logged; its records are not stored, as with `append()`.

        Raises:
            OutboxFull: at `max_bytes` with `reject_new`, or, while records are held in
                memory, at the memory bound with `reject_new`.
        """
        if self._pending_bytes >= PUT_AHEAD_BYTES and self._memory is None:
            return await self.append(device, kind, payload)
        return self._enqueue(device, kind, payload, None)

    def _enqueue(
        self, device: str, kind: str, payload: bytes, done: asyncio.Future[None] | None
    ) -> str:
        if self._closed:
            msg = "outbox is closed"
            raise RuntimeError(msg)
        size = len(payload)
        if self._memory is not None and self._pending_bytes + size > self._memory_bytes:
            self._make_room(size, device, kind)
        if (
            self._config.policy == "reject_new"
            and self._tables.bytes + self._pending_bytes + size > self._config.max_bytes
        ):
            self._count_drop("rejected", device)
            msg = (
                f"outbox refused a {kind} record of {device}: outbox.max_bytes "
                f"({self._config.max_bytes}) reached and outbox.policy is reject_new"
            )
            raise OutboxFull(msg)
        self._seq += 1
        record_id = f"{self._prefix}{self._seq}"
        record = Record(self._next_id, record_id, device, kind, payload, self._clock())
        self._next_id += 1
        self._pending[record.id] = (record, time.monotonic())
        self._tail.add((record,))
        if done is not None:
            self._waiters.append(done)
            self._hurry.set()
        self._pending_bytes += size
        self._wake.set()
        self.changed.set()
        return record_id

    def _make_room(self, size: int, device: str, kind: str) -> None:
        """At the memory bound: drop the oldest held records, or refuse this one (the policy)."""
        reason = self._memory or "disk_full"
        if self._config.policy == "reject_new":
            self._count_drop(reason, device)
            msg = (
                f"outbox refused a {kind} record of {device}: the disk takes no records "
                f"({reason}) and {self._memory_bytes} bytes are held in memory already"
            )
            raise OutboxFull(msg)
        pending = self._pending
        while pending and self._pending_bytes + size > self._memory_bytes:
            record, _ = pending.pop(next(iter(pending)))
            self._tail.pop(record.id)
            self._pending_bytes -= len(record.payload)
            self.held_dropped += 1
            self._count_drop(reason, record.device)

    def ack(self, row_id: int) -> None:
        """The broker accepted the record: delete it in the next commit.

        A record not yet written is dropped from the next commit instead: it never reaches
        the disk.
        """
        entry = self._pending.pop(row_id, None)
        if entry is not None:
            self._tail.pop(row_id)
            self._pending_bytes -= len(entry[0].payload)
            self.unwritten += 1
            return
        self._take(row_id)
        self._acks.append(row_id)
        self._wake.set()

    def dead_letter(self, row_id: int, reason_code: int | None, reason: str) -> None:
        """Move a record the broker refused to the dead-letter table."""
        if row_id in self._pending:
            if self._memory is not None:  # not to be written: nowhere to keep it
                record, _ = self._pending.pop(row_id)
                self._tail.pop(row_id)
                self._pending_bytes -= len(record.payload)
                self._count_drop(self._memory, record.device)
                log.warning("outbox record %d refused while held in memory: %s", row_id, reason)
                return
            self._hurry.set()  # written in the next commit, moved in the same transaction
        self._take(row_id)
        self._dead.append((row_id, reason_code, reason, self._clock()))
        self._wake.set()
        log.warning("outbox record %d moved to dead letters: %s", row_id, reason)

    def _take(self, row_id: int) -> None:
        # Out of the tail at once, so no fetch hands it out again.
        self._acked.add(row_id)
        record = self._tail.pop(row_id)
        if record is not None:
            self._known[row_id] = record

    async def fetch(self, after: Mapping[str, int], per_device: int) -> list[Record]:
        """The oldest records of each device beyond its cursor (`after[device]`, a row id).

        Up to `per_device` per device, oldest first within a device; devices in the order of
        their oldest record returned. Devices caught up with the tail are served from memory,
        the others (a backlog, a session starting over) from SQLite.
        """
        lanes, behind = self._tail.fetch(after, per_device)
        if behind:
            skip = frozenset(self._acked)
            # Records not yet written follow the file's (the file is a prefix). Taken before
            # the read: a commit that writes some of them runs after it on the worker.
            held: dict[str, list[Record]] = {}
            for record, _ in self._pending.values():
                if record.device in behind and record.id > behind[record.device]:
                    held.setdefault(record.device, []).append(record)
            rows = await self.worker.call(
                lambda conn: self._tables.fetch(conn, behind, per_device, skip)
            )
            read = {lane[0].device: lane for lane in _lanes(rows)}
            for device in behind:
                lane = read.get(device, []) + held.get(device, [])
                if lane:
                    lanes.append(lane[:per_device])
        if len(lanes) == 1:
            return lanes[0]
        lanes.sort(key=lambda lane: lane[0].id)
        return [record for lane in lanes for record in lane]

    async def dead_letters(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Dead letters, newest first."""

        def query(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT id, record_id, device, kind, payload, created, failed_at, reason_code,"
                " reason FROM dead_letters ORDER BY failed_at DESC, id DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
            return [DeadLetter(*row) for row in rows]

        return await self.worker.call(query)

    async def stats(self) -> OutboxStats:
        """Depth, bytes, oldest age, drops by reason and device, and per-device depth."""
        now = self._clock()

        def query(conn: sqlite3.Connection) -> OutboxStats:
            oldest = conn.execute("SELECT created FROM records ORDER BY id LIMIT 1").fetchone()
            dead = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
            drops: dict[str, dict[str, int]] = {}
            for reason, device, n in conn.execute("SELECT reason, device, count FROM drops"):
                drops.setdefault(reason, {})[device] = n
            devices: dict[str, dict[str, int | str]] = {}
            for device, n, newest in conn.execute(
                "SELECT device, COUNT(*), MAX(id) FROM records GROUP BY device"
            ):
                rid = conn.execute("SELECT record_id FROM records WHERE id = ?", (newest,))
                devices[device] = {"records": n, "newest_record_id": rid.fetchone()[0]}
            return OutboxStats(
                records=self._tables.count,
                bytes=self._tables.bytes,
                oldest_age_s=None if oldest is None else max(0.0, now - oldest[0]),
                dead_letters=dead,
                drops=drops,
                devices=devices,
            )

        await self.flush()
        stats = await self.worker.call(query)
        # Drops not written yet (the disk refused them), read after the query: a commit that
        # failed before it has put its drops back by now.
        for (reason, device), n in self._drops.items():
            by_device = stats.drops.setdefault(reason, {})
            by_device[device] = by_device.get(device, 0) + n
        return stats

    async def flush(self) -> None:
        """Commit everything buffered now."""
        await self._commit(everything=True)

    async def run(self) -> None:
        """Group-commit loop and maintenance (age bound, disk floor, WAL sync); runs forever."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._committer(), name="outbox.commit")
            tg.create_task(self._maintenance(), name="outbox.maintenance")

    async def _committer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._hold_s and not self._hurry.is_set():
                # Hold new records back for a moment: the broker acknowledges most of them
                # meanwhile, and those are never written. Someone waiting cuts it short.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self._hold_left())
            await self._commit()
            if self._pending and self._memory is None:
                self._wake.set()  # the ones still held go in a later commit

    def _hold_left(self) -> float:
        """Seconds until the oldest record held has waited the whole window.

        Measured from that record's append, not from the wake: a record appended just after
        a commit would otherwise wait out one hold for nothing and be written only in the
        next, so a crash could lose two windows of readings instead of one.
        """
        if not self._pending:
            return self._hold_s  # only deletions to write: they can wait a window
        oldest_at = next(iter(self._pending.values()))[1]
        return max(0.0, oldest_at + self._hold_s - time.monotonic())

    def _due(self, everything: bool) -> list[Record]:
        """The records the next commit writes: the oldest, in order, up to the last one due.

        Everything when asked, when someone waits, without holding, or near the put-ahead
        bound; otherwise those appended at least half the hold time ago. The committer runs
        when the oldest has been held the whole window, so every record is written within one
        window of its append, and commits come at least half a window apart. Always a prefix,
        so every record in the file is older than every record still pending.
        """
        pending = self._pending
        if (
            everything
            or self._hurry.is_set()
            or not self._hold_s
            or self._pending_bytes >= PUT_AHEAD_BYTES
        ):
            due = [record for record, _ in pending.values()]
            pending.clear()
            self._pending_bytes = 0
            self._hurry.clear()
            return due
        cutoff = time.monotonic() - self._hold_s / 2
        due = []
        for record, at in pending.values():
            if at > cutoff:
                break
            due.append(record)
        for record in due:
            del pending[record.id]
            self._pending_bytes -= len(record.payload)
        return due

    async def _commit(self, *, everything: bool = False, final: bool = False) -> bool:
        """Write what is due; False when the disk refused it (then it is kept, see `_failed`)."""
        memory = None if final else self._memory
        if memory == "disk_full" and time.monotonic() < self._retry_at:
            return False
        if memory == "disk_floor" or not self._pending:
            due = []  # below the floor nothing new is written
        else:
            due = self._due(everything or memory is not None or final)
        if not (due or self._acks or self._dead or self._drops):
            if memory == "disk_full":  # nothing to try it with: the floor decides
                self._leave_memory()
            return True
        inserts = [(r.id, r.record_id, r.device, r.kind, r.payload, r.created) for r in due]
        batch = Batch(inserts, self._acks, self._dead, self._drops, self._known)
        drops = dict(self._drops)  # the commit adds its own max_bytes drops to the batch's
        waiters = self._waiters
        self._waiters, self._acks, self._dead, self._drops = [], [], [], {}
        self._known = {}
        max_bytes = self._config.max_bytes if self._config.policy == "drop_oldest" else None
        done = self.worker.submit(lambda conn: self._tables.commit(conn, batch, max_bytes))
        done.add_done_callback(lambda fut: self._committed(fut, batch, waiters, drops))
        # Shielded: a commit under way finishes (and tells its appenders) even at shutdown.
        try:
            await asyncio.shield(done)
        except sqlite3.Error:  # handled by `_committed`
            return False
        return True

    def _committed(
        self,
        fut: asyncio.Future[Committed],
        batch: Batch,
        waiters: list[asyncio.Future[None]],
        drops: dict[tuple[str, str], int],
    ) -> None:
        error = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or error is not None:
            failure = error if isinstance(error, Exception) else RuntimeError("commit cancelled")
            if _weather(failure) and not self._closed:
                self._keep(batch, waiters, drops, failure)
            else:
                self._failed(batch, waiters, failure)
            return
        if self._memory == "disk_full":
            self._leave_memory()
        self._acked.difference_update(batch.acks)
        self._acked.difference_update(row for row, *_ in batch.dead)
        done = fut.result()
        if batch.inserts:
            self._tail.settled = max(self._tail.settled, batch.inserts[-1][0])
        if done.dropped_through:
            self._tail.drop_through(done.dropped_through)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if done.dropped:
            self._recent["max_bytes"] = self._recent.get("max_bytes", 0) + sum(
                done.dropped.values()
            )
        if batch.inserts:
            self._dirty = True

    def _keep(
        self,
        batch: Batch,
        waiters: list[asyncio.Future[None]],
        drops: dict[tuple[str, str], int],
        failure: Exception,
    ) -> None:
        """The disk refused a commit: keep all of it in memory and try again later.

        Its records go back in front of those appended since (the file stays a prefix), but
        those the broker acknowledged meanwhile, which are never written; its deletions, dead
        letters and drop counts wait for the next commit. Its appenders are told their
        records are held.
        """
        acked = set(self._acks)
        back: dict[int, tuple[Record, float]] = {}
        now = time.monotonic()
        for row in batch.inserts:
            if row[0] in acked:
                acked.discard(row[0])
                self._acked.discard(row[0])
                self._known.pop(row[0], None)
                self.unwritten += 1
                continue
            back[row[0]] = (Record(*row), now)
        gone = {row[0] for row in batch.inserts} - set(back)
        self._acks = batch.acks + [row for row in self._acks if row not in gone]
        self._pending_bytes += sum(len(record.payload) for record, _ in back.values())
        self._pending = back | self._pending
        self._dead = batch.dead + self._dead
        for key, n in drops.items():
            self._drops[key] = self._drops.get(key, 0) + n
        self._known = batch.known | self._known
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._storage_failed(failure)

    def _storage_failed(self, failure: Exception) -> None:
        self._retry_at = time.monotonic() + RETRY_S
        if self._memory == "disk_full":
            return
        self._memory = "disk_full"
        self._release_waiters()
        reason = (
            f"outbox writes fail ({failure}): new records held in memory "
            f"(up to {self._memory_bytes} bytes) and sent from there, written once the disk "
            f"takes them again"
        )
        log.error("%s", reason)
        if self._health is not None:
            self._health.degrade("outbox.disk", reason)

    def _enter_floor(self, free: int) -> None:
        self._memory = "disk_floor"
        self._release_waiters()
        reason = (
            f"free disk {free} bytes, below outbox.min_free_bytes ({self.floor}): new records "
            f"held in memory (up to {self._memory_bytes} bytes) and sent from there, not written"
        )
        log.error("outbox: %s", reason)
        if self._health is not None:
            self._health.degrade("outbox.disk", reason)

    def _release_waiters(self) -> None:
        """Appenders still waiting for a commit: their records are held now, like new ones."""
        waiters, self._waiters = self._waiters, []
        self._hurry.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _leave_memory(self) -> None:
        was, self._memory = self._memory, None
        log.info("outbox: the disk takes records again (%s over); %d held records to write",
                 was, len(self._pending))  # fmt: skip
        if self._health is not None:
            self._health.clear("outbox.disk")
        self._wake.set()

    def _failed(
        self, batch: Batch, waiters: list[asyncio.Future[None]], failure: Exception
    ) -> None:
        log.error("outbox commit failed: %s", failure)
        unwaited = len(batch.inserts) - len(waiters)
        if unwaited:
            log.error("outbox: %d records put without waiting were not stored", unwaited)
        for row in batch.inserts:
            self._tail.pop(row[0])  # not stored: not to be sent either
        if batch.inserts:
            self._tail.settled = max(self._tail.settled, batch.inserts[-1][0])
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(failure)
        self._acked.difference_update(batch.acks)  # not deleted: they may be sent again
        self._tail.disown(list(batch.known.values()))  # still in the file: read from there

    async def _maintenance(self) -> None:
        window_s = self._config.batch_window_ms / 1000
        next_sweep = 0.0
        while True:
            await asyncio.sleep(window_s if self._config.durability == "batched" else MAINTENANCE_S)
            now = time.monotonic()
            try:
                if self._dirty and self._config.durability == "batched":
                    self._dirty = False
                    await self.worker.call(_sync_wal)
                if now < next_sweep:
                    continue
                next_sweep = now + MAINTENANCE_S
                self.check_disk()
                self._report_drops(now)
                if self._memory is None:
                    await self.sweep()
            except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
                if not _weather(exc):
                    raise
                self._storage_failed(exc)

    def _report_drops(self, now: float) -> None:
        """Drops degrade the store at once; logged at most every 10 s; cleared after quiet.

        Cleared once none happened for `DROPS_QUIET_S`.
        """
        recent, self._recent = self._recent, {}
        if recent:
            self._last_drop = now
            for reason, n in recent.items():
                self._episode[reason] = self._episode.get(reason, 0) + n
                self._unlogged[reason] = self._unlogged.get(reason, 0) + n
            if self._health is not None:
                counts = ", ".join(f"{r} {n}" for r, n in sorted(self._episode.items()))
                self._health.degrade("outbox.drops", f"outbox dropping records ({counts})")
            if now >= self._next_drop_log:
                counts = ", ".join(f"{n} for {r}" for r, n in sorted(self._unlogged.items()))
                log.warning("outbox dropped records: %s", counts)
                self._unlogged = {}
                self._next_drop_log = now + DROPS_QUIET_S
        elif self._episode and now - self._last_drop >= DROPS_QUIET_S:
            if self._unlogged:
                counts = ", ".join(f"{n} for {r}" for r, n in sorted(self._unlogged.items()))
                log.warning("outbox dropped records: %s", counts)
            self._episode, self._unlogged = {}, {}
            if self._health is not None:
                self._health.clear("outbox.drops")

    async def sweep(self) -> None:
        """Drop records older than `max_age_s`; forget the backlog once the file holds none.

        Maintenance runs it every second.
        """
        cutoff = self._clock() - self._config.max_age_s
        expired, through = await self.worker.call(partial(self._tables.expire, cutoff=cutoff))
        if through:
            self._tail.forget_through(through)
        if expired:
            self._recent["max_age"] = self._recent.get("max_age", 0) + sum(expired.values())
        if self._tail.backlog:
            floor = self._tail.floor
            if not await self.worker.call(partial(self._tables.any_through, row_id=floor)):
                self._tail.prune(floor)

    def check_disk(self) -> None:
        """Compare free disk with the floor: below it, new records are held in memory.

        While writes fail (`disk_full`), a free disk at the floor lets the next commit try
        again; below it, the floor holds records instead of a write bound to fail.
        """
        try:
            free = self._disk_free()
        except OSError as exc:
            log.warning("outbox: free disk unknown: %s", exc)
            return
        low = free < self.floor
        if low and self._memory != "disk_floor":
            self._enter_floor(free)
        elif not low and self._memory == "disk_floor":
            self._leave_memory()
        elif not low and self._memory == "disk_full" and time.monotonic() >= self._retry_at:
            self._wake.set()

    def _count_drop(self, reason: str, device: str) -> None:
        key = (reason, device)
        self._drops[key] = self._drops.get(key, 0) + 1
        self._recent[reason] = self._recent.get(reason, 0) + 1
        self._wake.set()

    async def close(self) -> None:
        """Commit what is buffered (held records too, if the disk takes them) and close."""
        self._closed = True
        held = len(self._pending)
        if not await self._commit(everything=True, final=True) and held:
            log.error("outbox: %d records held in memory could not be written at close", held)
        await self.worker.close()


def _lanes(records: Sequence[Record]) -> list[list[Record]]:
    """Split records that come device by device into one list per device."""
    lanes: list[list[Record]] = []
    for record in records:
        if lanes and lanes[-1][0].device == record.device:
            lanes[-1].append(record)
        else:
            lanes.append([record])
    return lanes


def _weather(exc: BaseException) -> bool:
    """A failure of the disk (full, I/O, read-only, locked), not of the statements."""
    return isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError
    )


def _sync_wal(conn: sqlite3.Connection) -> None:
    # A passive checkpoint fsyncs the WAL first: this bounds what a power cut can lose.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


@contextlib.asynccontextmanager
async def open_outbox(  # noqa: PLR0913 - the file, its bounds and test seams
    path: Path,
    config: OutboxConfig,
    *,
    health: Component | None = None,
    disk_free: Callable[[], int] | None = None,
    schema: Callable[[sqlite3.Connection], None] | None = None,
    clock: Callable[[], float] = time.time,
    tail_bytes: int = TAIL_BYTES,
    memory_bytes: int | None = None,
) -> AsyncIterator[Outbox]:
    """Open the file, run the commit loop while the block runs, then flush and close.

    A damaged file is set aside (kept as `outbox.db.damaged-<time>`) and what SQLite can
    still read of it is copied into the new file (`gatewayd.store.salvage`); the counts are
    logged and shown in /healthz for the rest of the run.

    Args:
        path: the SQLite file (`outbox.db` in the state directory).
        config: bounds and durability.
        health: the `store` component: the outbox notes its problems there.
        disk_free: free bytes on the file system; defaults to `shutil.disk_usage`.
        schema: more tables kept in the same file (downlink state), created at open.
        clock: wall clock for record ages (injectable for tests).
        tail_bytes: memory bound of the tail of unacknowledged records (small in tests).
        memory_bytes: bound of records held in memory while the disk takes none
            (`held_max_bytes` unless given).

    Raises:
        StateAccessDenied: the file exists and this user may not read or write it.
        StateLocked: another process holds a lock on it.
    """
    worker = SqliteWorker(
        path, synchronous="FULL" if config.durability == "full" else "NORMAL", name="outbox"
    )
    holder: list[OutboxTables] = []
    salvaged: list[Salvage] = []

    def setup(conn: sqlite3.Connection) -> None:
        migrate(conn)
        if schema is not None:
            schema(conn)
        if worker.moved_aside is not None:
            salvaged.append(salvage(worker.moved_aside, conn))
        holder.append(OutboxTables(conn))

    await worker.open(setup)
    floor = config.min_free_bytes
    if floor is None:
        floor = auto_floor(shutil.disk_usage(path.parent).total)
    outbox = Outbox(
        worker,
        holder[0],
        config,
        disk_free=disk_free or (lambda: shutil.disk_usage(path.parent).free),
        clock=clock,
        tail_bytes=tail_bytes,
        floor=floor,
        health=health,
        memory_bytes=memory_bytes,
    )
    _report_open(outbox, salvaged[0] if salvaged else None, health)
    outbox.check_disk()
    try:
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(outbox.run(), name="outbox")
            try:
                yield outbox
            finally:
                runner.cancel()
    finally:
        await outbox.close()


def _report_open(outbox: Outbox, salvaged: Salvage | None, health: Component | None) -> None:
    worker = outbox.worker
    outbox.salvage = salvaged
    if salvaged is not None:
        log.error(
            "%s (%s); %d other rows salvaged", salvaged.describe(), worker.damage, salvaged.rows
        )
        if health is not None:
            health.degrade("outbox.salvaged", salvaged.describe())
    if worker.in_memory is not None and health is not None:
        health.degrade(
            "outbox.memory",
            f"{worker.path} cannot be opened ({worker.in_memory}): records kept in memory for "
            "this run; restart gatewayd once the disk has room",
        )
    log.info(
        "outbox %s: %d records (%d bytes) waiting, run %s, free-disk floor %d bytes",
        worker.path,
        outbox.depth,
        outbox._tables.bytes,  # noqa: SLF001 - the same module
        outbox.boot,
        outbox.floor,
    )
