"""Crash for bugs, back off for weather: the one retry loop of the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator

from gatewayd.backoff import Backoff
from gatewayd.errors import TransientError
from gatewayd.health import Component

__all__ = ["CancelWatch", "keep_cancellation", "supervise"]

log = logging.getLogger(__name__)


async def supervise(  # noqa: PLR0913 - the injected clock, sleep and rand make it testable
    run: Callable[[], Awaitable[None]],
    component: Component,
    backoff: Backoff,
    *,
    healthy_after_s: float = 30.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rand: Callable[[], float] = random.random,
) -> None:
    """Run `run` until it returns; retry after a TransientError with backoff.

    Any other exception is a bug: it propagates so the task group, and then the process,
    stop, and systemd restarts the daemon. The attempt counter resets after a run that
    lasted `healthy_after_s`, so a link that drops once a day reconnects quickly.
    """
    attempt = 0
    while True:
        started = clock()
        try:
            await run()
        except TransientError as exc:
            if clock() - started >= healthy_after_s:
                attempt = 0
            component.down(str(exc) or type(exc).__name__)
            delay = backoff.delay(attempt, rand)
            attempt += 1
            log.debug("%s: retry %d in %.2f s", component.name, attempt, delay)
            await sleep(delay)
        else:
            return


class CancelWatch:
    """Notices a cancellation that an await swallowed, from the moment it is made.

    A cancellation is delivered once, as one CancelledError at one await. Python 3.11's
    `asyncio.wait_for` returns the result instead when the awaited future finishes in the
    loop iteration the cancellation comes in, and aiomqtt waits for the CONNACK and the SUBACK
    with it: the task then runs on as if it had never been asked to stop. The request is still
    counted by `Task.cancelling()`, so a count higher than when the watch was made is one that
    was swallowed.

    Only the difference counts: in 3.11 a TaskGroup whose child fails after the group's body
    has ended cancels the parent task without withdrawing the request, so a task that has
    been through one (the uplink, after any dropped session) carries a count that means
    nothing.
    """

    __slots__ = ("_before", "_task")

    def __init__(self) -> None:
        self._task = asyncio.current_task()
        self._before = self._task.cancelling() if self._task is not None else 0

    def check(self) -> None:
        """Raise the CancelledError an await since the watch was made swallowed, if any."""
        if self._task is not None and self._task.cancelling() > self._before:
            raise asyncio.CancelledError


@contextlib.contextmanager
def keep_cancellation() -> Iterator[None]:
    """Around an await that may swallow a cancellation (see `CancelWatch`): raise it after.

    Never around code that runs a TaskGroup, whose leftover count would read as a request.
    """
    watch = CancelWatch()
    yield
    watch.check()
