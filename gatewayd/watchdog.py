"""A time bound on each of a task's awaits in turn, kept with one timer for all of them.

`asyncio.timeout()` arms a timer on entry and cancels it on exit. A connection's worker
guards about a thousand short driver calls a second with a bound of many seconds, a safety
net that almost never fires, and arming and cancelling a timer for each call was a visible
share of the daemon's CPU. A `Watchdog` keeps one timer: entering only records the deadline.
When the timer fires before the current deadline (it was armed for a call that ended long
ago) it re-arms for that deadline, so while the task is busy it fires about once per bound,
and while the task is idle not at all.

On expiry it cancels the task and turns the cancellation into `TimeoutError` at the guard's
exit, as `asyncio.timeout()` does, so a cancellation from outside still propagates as one.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

__all__ = ["Watchdog"]

# Timers may fire up to a clock tick early (uvloop counts in milliseconds): a deadline this
# close counts as reached rather than re-arming for a sliver of time.
_EARLY_S = 0.001


class Watchdog:
    """Guards one await at a time of one task; reusable.

    Args:
        bound_s: how long one guarded await may take.
        task: the task whose awaits it guards (the one that enters it).
    """

    __slots__ = ("_bound_s", "_cancelling", "_deadline", "_fired", "_handle", "_loop", "_task")

    def __init__(self, bound_s: float, task: asyncio.Task[Any]) -> None:
        self._bound_s = bound_s
        self._task = task
        self._loop = task.get_loop()
        self._deadline: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False
        self._cancelling = 0

    def __enter__(self) -> None:
        if self._deadline is not None:
            msg = "a Watchdog guards one await at a time"
            raise RuntimeError(msg)
        loop = self._loop
        self._cancelling = self._task.cancelling()
        self._deadline = deadline = loop.time() + self._bound_s
        if self._handle is None:
            self._handle = loop.call_at(deadline, self._expire, loop)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._deadline = None
        if self._fired:
            self._fired = False
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def close(self) -> None:
        """Drop the timer (the task is done with the watchdog)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        deadline = self._deadline
        if deadline is None:
            return  # idle: the next guard arms a new timer
        if deadline - loop.time() > _EARLY_S:
            self._handle = loop.call_at(deadline, self._expire, loop)
            return
        self._fired = True
        self._task.cancel()
