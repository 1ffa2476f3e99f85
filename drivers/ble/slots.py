"""Connection slots of one adapter: a counted resource handed out first come, first served.

A plain semaphore would do the counting; the pool also hands a released slot straight to the
oldest waiter (so a device that gives up its slot and asks again queues behind the others)
and tells holders whether anyone is waiting (so notifying devices take turns).
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["SlotPool"]


class SlotPool:
    """Counts the GATT connections an adapter may hold.

    Args:
        size: how many connections at once.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """How many are queued for a slot."""
        return sum(1 for w in self._waiters if not w.done())

    @property
    def in_use(self) -> int:
        """Slots held now."""
        return self.size - self._free

    async def acquire(self, timeout_s: float | None) -> None:
        """Take a slot, waiting in line at most `timeout_s` (None: no limit).

        Raises:
            TimeoutError: no slot came free in time.
        """
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over just as we gave up: pass it on
            else:
                waiter.cancel()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self) -> None:
        """Give a slot back: to the oldest waiter, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free = min(self.size, self._free + 1)
