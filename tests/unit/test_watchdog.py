"""One timer bounding a task's awaits in turn.

The timing tests run on virtual time (tests/virtual_clock.py): every timer fires exactly when
due, so a bound is checked to the tick, not with margins on a real clock.
"""

from __future__ import annotations

import asyncio

import pytest

from gatewayd.watchdog import Watchdog
from tests.virtual_clock import run_virtual


def mine(bound_s: float) -> Watchdog:
    """A watchdog of the running task."""
    task = asyncio.current_task()
    assert task is not None
    return Watchdog(bound_s, task)


def test_an_await_that_outlives_the_bound_times_out_at_the_bound_and_the_task_goes_on():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        dog = mine(0.05)
        never: asyncio.Future[None] = loop.create_future()
        start = loop.time()
        with pytest.raises(TimeoutError), dog:
            await never
        assert loop.time() - start == pytest.approx(0.05)
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        with dog:
            await asyncio.sleep(0)  # the task and the watchdog are usable again
        dog.close()

    run_virtual(main())


def test_short_awaits_in_a_row_never_fire_though_together_they_outlast_the_bound():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        dog = mine(0.3)
        start = loop.time()
        rounds = 0
        while loop.time() - start < 1.0:  # over three bounds in all
            with dog:
                await asyncio.sleep(0.005)
            rounds += 1
        assert rounds == pytest.approx(200, abs=1)
        dog.close()

    run_virtual(main())


def test_an_await_just_inside_the_bound_is_not_cut_short_and_one_just_past_it_is():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        dog = mine(0.3)
        with dog:
            await asyncio.sleep(0.25)
        start = loop.time()
        with pytest.raises(TimeoutError), dog:
            await asyncio.sleep(0.35)
        assert loop.time() - start == pytest.approx(0.3)
        dog.close()

    run_virtual(main())


async def test_a_cancellation_from_outside_stays_a_cancellation():
    started = asyncio.Event()

    async def guarded() -> None:
        dog = mine(10)
        with dog:
            started.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(guarded())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_after_idling_past_the_bound_a_new_guard_gets_the_whole_bound():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        dog = mine(0.2)
        with dog:
            await asyncio.sleep(0)
        await asyncio.sleep(0.3)  # longer than the bound, nothing guarded: the timer fires idle
        start = loop.time()
        with dog:
            await asyncio.sleep(0.19)  # just inside a whole bound: must not be cut short
        with pytest.raises(TimeoutError), dog:
            await asyncio.sleep(1)
        assert loop.time() - start == pytest.approx(0.39)
        dog.close()

    run_virtual(main())


async def test_one_await_at_a_time():
    dog = mine(1)
    with dog, pytest.raises(RuntimeError, match="one await at a time"), dog:
        pass
    dog.close()
