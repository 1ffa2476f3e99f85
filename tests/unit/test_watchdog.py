"""One timer bounding a task's awaits in turn."""

from __future__ import annotations

import asyncio

import pytest

from gatewayd.watchdog import Watchdog


def mine(bound_s: float) -> Watchdog:
    """A watchdog of the running task."""
    task = asyncio.current_task()
    assert task is not None
    return Watchdog(bound_s, task)


async def test_an_await_that_outlives_the_bound_times_out_and_the_task_goes_on():
    dog = mine(0.05)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError), dog:
        await never
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    with dog:
        await asyncio.sleep(0)  # the task and the watchdog are usable again
    dog.close()


async def test_short_awaits_in_a_row_never_fire_though_together_they_outlast_the_bound():
    dog = mine(0.3)
    loop = asyncio.get_running_loop()
    start = loop.time()
    rounds = 0
    while loop.time() - start < 1.0:  # over three bounds in all
        with dog:
            await asyncio.sleep(0.005)
        rounds += 1
    assert rounds > 10
    dog.close()


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


async def test_after_idling_past_the_bound_a_new_guard_gets_the_whole_bound():
    loop = asyncio.get_running_loop()
    dog = mine(0.2)
    with dog:
        await asyncio.sleep(0)
    idle = loop.create_future()
    loop.call_later(0.3, idle.set_result, None)  # longer than the bound, nothing guarded
    await idle
    with dog:
        await asyncio.sleep(0.1)  # half the bound: must not be cut short
    dog.close()


async def test_one_await_at_a_time():
    dog = mine(1)
    with dog, pytest.raises(RuntimeError, match="one await at a time"), dog:
        pass
    dog.close()
