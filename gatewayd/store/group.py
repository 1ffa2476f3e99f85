"""Group commit for the state database: many small writes, one transaction.

Every poll of every device reports its values; one transaction each would cost a BEGIN, a
COMMIT and a thread hop per poll. Writers queue their item and wait; whoever holds the turn
writes everything queued so far in one transaction, so under load a transaction carries many
items, and with a single writer nothing waits longer than its own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from gatewayd.store.db import Database
from gatewayd.store.errors import RegistryError

__all__ = ["GroupWriter"]

T = TypeVar("T")


class GroupWriter(Generic[T]):
    """Writes queued items in shared transactions, in the order they were queued.

    Args:
        db: the state database.
        apply: writes one item; a RegistryError it raises fails that item alone.
    """

    def __init__(self, db: Database, apply: Callable[[sqlite3.Connection, T], None]) -> None:
        self._db = db
        self._apply = apply
        self._queued: list[tuple[T, asyncio.Future[None]]] = []
        self.turn = asyncio.Lock()  # FIFO: callers that queue first write (or are written) first

    async def write(self, item: T) -> None:
        """Queue `item` and return once the transaction holding it is committed.

        Raises:
            RegistryError: `apply` refused the item.
            sqlite3.Error: the transaction failed.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((item, done))
        try:
            async with self.turn:
                if not done.done():
                    batch, self._queued = self._queued, []
                    work = functools.partial(self._all, batch)
                    flush = asyncio.ensure_future(self._db.transact(work))
                    flush.add_done_callback(functools.partial(_settle, batch))
                    # Shielded: a transaction under way finishes and tells its writers even
                    # if the caller that started it is cancelled. Its outcome, good or bad,
                    # arrives through `done` like everyone else's.
                    with contextlib.suppress(Exception):
                        await asyncio.shield(flush)
            await done
        except asyncio.CancelledError:
            done.cancel()  # a queued item is still written; nobody waits for it any more
            raise

    def _all(
        self, batch: Sequence[tuple[T, asyncio.Future[None]]], conn: sqlite3.Connection
    ) -> list[RegistryError | None]:
        refused: list[RegistryError | None] = []
        for item, _ in batch:
            try:
                self._apply(conn, item)
            except RegistryError as exc:
                refused.append(exc)
            else:
                refused.append(None)
        return refused


def _settle(
    batch: Sequence[tuple[object, asyncio.Future[None]]],
    flush: asyncio.Future[list[RegistryError | None]],
) -> None:
    error = flush.exception() if not flush.cancelled() else asyncio.CancelledError()
    outcomes: Sequence[BaseException | None] = (
        [error] * len(batch) if error is not None else flush.result()
    )
    for (_, done), outcome in zip(batch, outcomes, strict=True):
        if done.done():  # its writer was cancelled
            continue
        if outcome is None:
            done.set_result(None)
        else:
            done.set_exception(outcome)
