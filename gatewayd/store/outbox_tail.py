"""The outbox's tail: unacknowledged records kept in memory for the pump.

When the uplink keeps up, the pump sends records appended milliseconds ago. Reading them back
from SQLite costs a query per device on every wake; the tail hands them over from memory
instead, at the cost of the new records only. Records enter the tail as they are appended,
before their commit; SQLite stays the truth for everything the tail gives up, and the tail
gives up only records already in the file (up to `settled`).

The invariant that makes that safe: every record in the file that is not in the tail (and is
not being deleted) has an id at most `backlog[device]`, and at most `floor`. A device whose
cursor is at or beyond its backlog mark is therefore served from memory alone; one behind it
(a backlog from before a restart, a new session starting over at 0, records trimmed from a
full tail) is read from SQLite. Only the asyncio side touches a tail.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice

from gatewayd.store.outbox_db import Record

__all__ = ["RECORD_OVERHEAD", "TAIL_BYTES", "Tail"]

# Memory a tail may hold: enough for several seconds of lag at a thousand records a second.
TAIL_BYTES = 8 * 1024 * 1024
# Python objects per record beyond its payload (Record, ids, dict entries), measured.
RECORD_OVERHEAD = 320


class Tail:
    """Records newer than `floor`, by id and by device, each in id order.

    Args:
        floor: every record with a larger id will be added (the newest id in the file at open).
        backlog: device -> the newest id of its records that are in the file and not here.
        max_bytes: bound on payload plus `RECORD_OVERHEAD` per record; beyond it the oldest
            quarter moves to the backlog.
    """

    def __init__(self, *, floor: int, backlog: Mapping[str, int], max_bytes: int) -> None:
        self.floor = floor
        # Records up to this id are committed (or gone); newer ones may still be on their way
        # to the file, so they are never handed to the backlog.
        self.settled = floor
        self.backlog: dict[str, int] = dict(backlog)
        self.bytes = 0
        self._max_bytes = max_bytes
        # OrderedDict: popping the oldest stays O(1) however many were deleted before it.
        self._records: OrderedDict[int, Record] = OrderedDict()
        self._devices: dict[str, dict[int, Record]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def add(self, records: Iterable[Record]) -> None:
        """Appended records, in id order."""
        for record in records:
            if record.id <= self.floor:  # its range was given up before it arrived
                self._cover(record)
                continue
            self._records[record.id] = record
            lane = self._devices.get(record.device)
            if lane is None:
                self._devices[record.device] = lane = {}
            lane[record.id] = record
            self.bytes += len(record.payload) + RECORD_OVERHEAD
        if self.bytes > self._max_bytes:
            self._trim(self._max_bytes * 3 // 4)

    def pop(self, row_id: int) -> Record | None:
        """Take a record out (acknowledged or dead-lettered); None if it is not here."""
        record = self._records.pop(row_id, None)
        if record is not None:
            self._unlink(record)
        return record

    def drop_through(self, row_id: int) -> None:
        """Every record up to `row_id` was deleted from the file (the oldest, for space)."""
        while self._records and next(iter(self._records)) <= row_id:
            self._pop_oldest()
        self.prune(row_id)
        self.floor = max(self.floor, row_id)

    def forget_through(self, row_id: int) -> None:
        """Stop vouching for ids up to `row_id`: what is left of them is read from SQLite.

        Used when some rows up to it were deleted behind the tail's back (expired by age).
        """
        while self._records and next(iter(self._records)) <= row_id:
            self._cover(self._pop_oldest())
        self.floor = max(self.floor, row_id)

    def disown(self, records: Sequence[Record]) -> None:
        """Records taken out with `pop` are in the file after all: read them from SQLite."""
        if records:
            self.forget_through(max(record.id for record in records))
            for record in records:
                self._cover(record)

    def prune(self, floor: int) -> None:
        """No record up to `floor` is left in the file: backlog marks up to it are void."""
        self.backlog = {device: mark for device, mark in self.backlog.items() if mark > floor}

    def fetch(
        self, after: Mapping[str, int], per_device: int
    ) -> tuple[list[list[Record]], dict[str, int]]:
        """Per device, up to `per_device` records after its cursor, oldest first.

        Returns the lanes served from memory and the devices (with their cursors) that have
        to be read from SQLite. The cost is the number of new records plus one look per device
        with records here or in the backlog; in steady state the backlog is empty.
        """
        behind: dict[str, int] = {}
        for device, mark in self.backlog.items():
            cursor = after.get(device, 0)
            if cursor < mark:
                behind[device] = cursor
        lanes: list[list[Record]] = []
        for device, lane in self._devices.items():
            cursor = after.get(device, 0)
            if next(reversed(lane)) <= cursor or device in behind:
                continue
            fresh: list[Record] = []
            # Bounded by the lane's length: a scan never walks over slots of deleted entries.
            for record in islice(reversed(lane.values()), len(lane)):
                if record.id <= cursor:
                    break
                fresh.append(record)
            fresh.reverse()
            lanes.append(fresh[:per_device])
        return lanes, behind

    def _trim(self, target: int) -> None:
        """Hand the oldest committed records to the backlog, down to `target` bytes held."""
        while self._records and self.bytes > target:
            if next(iter(self._records)) > self.settled:
                return  # the rest is not in the file yet: it stays here until it is
            self._cover(self._pop_oldest())

    def _pop_oldest(self) -> Record:
        _, record = self._records.popitem(last=False)
        self._unlink(record)
        return record

    def _unlink(self, record: Record) -> None:
        lane = self._devices[record.device]
        del lane[record.id]
        if not lane:
            del self._devices[record.device]  # a fresh dict later: no deleted slots to skip
        self.bytes -= len(record.payload) + RECORD_OVERHEAD

    def _cover(self, record: Record) -> None:
        if self.backlog.get(record.device, 0) < record.id:
            self.backlog[record.device] = record.id
        self.floor = max(self.floor, record.id)
