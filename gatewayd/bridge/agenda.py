"""A connection worker's agenda: submitted jobs in priority order, then polls as they fall due.

Polls are not tasks feeding a queue. Each (device, interval) group is a due time in the
agenda, and the worker itself waits for the earliest one. A poll then costs one timer and one
wake of the worker, where a poller task per group costs its own wake, a queue entry and a
second wake to hand the job over, for about a thousand polls a second on a busy gateway.

Ticks keep their grid: a poll's next due time is its last due time plus its interval, however
long the poll took. A poll that falls due while the worker is busy runs as soon as the worker
is free, and at most one missed tick is made up that way; the ones beyond it are counted as
skipped rather than run as a backlog.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from dataclasses import dataclass

from gatewayd.bridge.jobs import Job

__all__ = ["Agenda", "AgendaFull", "Poll"]

# Timers may fire up to a clock tick early (uvloop counts in milliseconds): a due time this
# close counts as reached rather than costing another timer for a sliver of time.
_EARLY_S = 0.001


class AgendaFull(Exception):
    """More submitted jobs are waiting than the agenda holds."""


@dataclass(slots=True, eq=False)
class Poll:
    """One device's points that share an interval: a repeating job on a fixed grid of ticks.

    Args:
        job: what each poll runs (the same job every time).
        interval_s: time between ticks.
        next_step_s: time from the current tick to the next. The first poll goes out at
            once and the step after it is a phase within the interval, spreading many
            devices with one interval over it so they do not all fall due together; from
            then on the step is the interval.
        due: the current tick.
    """

    job: Job
    interval_s: float
    next_step_s: float
    due: float = 0.0

    def after_run(self, now: float, *, catch_up: bool) -> int:
        """Move to the next tick after a run; returns the ticks skipped on the way.

        One tick that passed during the run is kept, to run at once, when `catch_up`;
        the others are skipped.
        """
        self._step()
        if self.due > now:
            return 0
        passed = math.floor((now - self.due) / self.interval_s) + 1
        skipped = passed - 1 if catch_up else passed
        self.due += skipped * self.interval_s
        return skipped

    def resume_at(self, when: float) -> None:
        """Skip, uncounted, to the first tick at or after `when` (a device that is resting)."""
        self._step()
        if self.due < when:
            self.due += math.ceil((when - self.due) / self.interval_s) * self.interval_s

    def _step(self) -> None:
        self.due += self.next_step_s
        self.next_step_s = self.interval_s


class Agenda:
    """What one worker does next, and the wait until there is something.

    Made inside the event loop that serves it, and kept to that loop: looking the running
    loop up costs a system call per lookup on Python 3.11, several times per poll.

    Args:
        limit: most submitted jobs waiting; polls do not count, they cannot pile up.
    """

    def __init__(self, limit: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._limit = limit
        self._jobs: list[tuple[int, int, Job]] = []
        self._polls: list[tuple[float, int, Poll]] = []
        self._seq = itertools.count()
        self._wake: asyncio.Future[None] | None = None

    def submit(self, job: Job) -> None:
        """Queue a job ahead of every poll; among jobs, by priority, then first come.

        Raises:
            AgendaFull: `limit` jobs are already waiting.
        """
        if len(self._jobs) >= self._limit:
            msg = f"{len(self._jobs)} requests already waiting"
            raise AgendaFull(msg)
        heapq.heappush(self._jobs, (job.priority, next(self._seq), job))
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def schedule(self, poll: Poll) -> None:
        """Put a poll on the agenda at its due time."""
        heapq.heappush(self._polls, (poll.due, next(self._seq), poll))

    async def next(self) -> Job | Poll:
        """The waiting job that goes first, or else the poll that is due, waiting for one.

        A returned poll is off the agenda: the caller puts it back with `schedule`.
        """
        loop = self._loop
        while True:
            if self._jobs:
                return heapq.heappop(self._jobs)[2]
            timer = None
            if self._polls:
                due = self._polls[0][0]
                if due - loop.time() <= _EARLY_S:
                    return heapq.heappop(self._polls)[2]
                timer = loop.call_at(due, self._alarm)
            self._wake = loop.create_future()
            try:
                await self._wake
            finally:
                self._wake = None
                if timer is not None:
                    timer.cancel()

    def drain(self) -> list[Job]:
        """Remove and return the waiting jobs (the connection closed under them)."""
        jobs = [job for _, _, job in sorted(self._jobs)]
        self._jobs.clear()
        self._polls.clear()
        return jobs

    def _alarm(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)
