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

__all__ = ["supervise"]

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
