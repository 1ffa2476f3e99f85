"""Crash for bugs, back off for weather: the one retry loop of the daemon."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from gatewayd.backoff import Backoff
from gatewayd.errors import TransientError
from gatewayd.health import Component

__all__ = ["raise_if_cancelled", "supervise"]

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
            # A cancellation that arrived while `run` failed can come back as the failure
            # alone (Python 3.11's TaskGroup drops it when a child failed too): never retry
            # on the way out.
            raise_if_cancelled()
            if clock() - started >= healthy_after_s:
                attempt = 0
            component.down(str(exc) or type(exc).__name__)
            delay = backoff.delay(attempt, rand)
            attempt += 1
            log.debug("%s: retry %d in %.2f s", component.name, attempt, delay)
            await sleep(delay)
        else:
            raise_if_cancelled()
            return


def raise_if_cancelled() -> None:
    """Raise CancelledError if the current task was asked to stop and has not stopped yet.

    A cancellation is delivered once, as one CancelledError at one await. Code that catches
    it there and goes on (Python 3.11's `asyncio.wait_for` does when the awaited future
    finished in the same loop iteration: aiomqtt's connect waits on the CONNACK with it) leaves
    the task running with the request still counted by `Task.cancelling()`. Called after such
    an await, this turns the swallowed request back into the CancelledError it was. Scopes
    that cancel on purpose (`asyncio.timeout`, TaskGroup) withdraw their requests when they
    end, so a count above zero is always someone waiting for this task to stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
