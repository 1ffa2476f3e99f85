"""A token bucket for the cloud's message quota."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """Allows `rate_per_s` on average and bursts of up to `burst`.

    Args:
        rate_per_s: sustained messages per second.
        burst: tokens the bucket holds; defaults to one second's worth (at least 1).
        clock: monotonic time, injectable for tests.
        sleep: injectable for tests.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0:
            msg = f"rate_per_s must be > 0, got {rate_per_s}"
            raise ValueError(msg)
        self.rate = rate_per_s
        self.burst = burst if burst is not None else max(1.0, rate_per_s)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._at = clock()

    def wait_s(self) -> float:
        """Seconds until one token is available (0 when one is there now)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def try_take(self) -> bool:
        """Take one token if one is there now."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    async def take(self) -> None:
        """Take one token, sleeping until there is one."""
        delay = self.wait_s()
        if delay > 0:
            await self._sleep(delay)
            self._refill()
        self._tokens -= 1

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
