"""A coalescing change feed: how one task learns that keys changed, without callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["ChangeFeed"]

K = TypeVar("K", bound=Hashable)


class ChangeFeed(Generic[K]):
    """Keys of changed things, coalesced until the one consumer takes them.

    A key marked again before it is taken is delivered once, so memory is bounded by the
    number of distinct keys, whatever the consumer's pace.
    """

    def __init__(self) -> None:
        self._pending: dict[K, None] = {}
        self._wake = asyncio.Event()

    def notify(self, keys: Iterable[K]) -> None:
        """Mark keys as changed."""
        for key in keys:
            self._pending[key] = None
        if self._pending:
            self._wake.set()

    async def changes(self) -> AsyncIterator[K]:
        """Yield changed keys, oldest first, waiting when there are none."""
        while True:
            await self._wake.wait()
            while self._pending:
                key = next(iter(self._pending))
                del self._pending[key]
                yield key
            self._wake.clear()
