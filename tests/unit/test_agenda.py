"""A worker's agenda: submitted jobs first, polls on their grid of ticks."""

from __future__ import annotations

import asyncio

import pytest

from gatewayd.bridge.agenda import Agenda, AgendaFull, Poll
from gatewayd.bridge.jobs import Job, Priority
from gatewayd.driver import DeviceConfig


def job(priority: Priority, name: str = "d") -> Job:
    return Job(priority, DeviceConfig(id=name), [])


def poll(due: float, *, interval_s: float = 0.1, phase_s: float = 0.05) -> Poll:
    return Poll(job(Priority.POLL), interval_s, phase_s, due=due)


def test_a_poll_on_time_moves_one_step_and_the_first_step_is_the_phase():
    p = poll(0.0)
    assert p.after_run(0.01, catch_up=True) == 0
    assert p.due == pytest.approx(0.05)
    assert p.after_run(0.06, catch_up=True) == 0
    assert p.due == pytest.approx(0.15)


def test_a_late_poll_keeps_one_missed_tick_to_run_at_once_and_skips_the_rest():
    p = poll(0.0)
    p.after_run(0.01, catch_up=True)  # due 0.05
    # Ran from 0.05 to 0.38: the ticks at 0.15, 0.25 and 0.35 passed meanwhile.
    assert p.after_run(0.38, catch_up=True) == 2
    assert p.due == pytest.approx(0.35)  # the one kept, already due
    assert p.after_run(0.39, catch_up=True) == 0
    assert p.due == pytest.approx(0.45)  # back on the grid


def test_a_late_poll_of_a_failed_device_makes_up_nothing():
    p = poll(0.0)
    p.after_run(0.01, catch_up=True)
    assert p.after_run(0.38, catch_up=False) == 3
    assert p.due == pytest.approx(0.45)


def test_a_resting_device_resumes_at_the_first_tick_after_its_pause():
    p = poll(0.0)
    p.after_run(0.01, catch_up=True)  # due 0.05
    p.resume_at(0.5)
    assert p.due == pytest.approx(0.55)
    p.resume_at(0.0)  # a pause already over: just the next tick
    assert p.due == pytest.approx(0.65)


async def test_submitted_jobs_go_before_due_polls_by_priority_then_arrival():
    agenda = Agenda(10)
    due = poll(asyncio.get_running_loop().time())
    agenda.schedule(due)
    read_1, write, read_2 = job(Priority.READ, "r1"), job(Priority.WRITE), job(Priority.READ, "r2")
    for j in (read_1, write, read_2):
        agenda.submit(j)
    assert [await agenda.next() for _ in range(4)] == [write, read_1, read_2, due]


async def test_polls_come_in_due_order_and_not_before_they_are_due():
    loop = asyncio.get_running_loop()
    agenda = Agenda(10)
    now = loop.time()
    later, sooner = poll(now + 0.08), poll(now + 0.04)
    agenda.schedule(later)
    agenda.schedule(sooner)
    assert await agenda.next() is sooner
    assert loop.time() >= now + 0.04 - 0.001
    assert await agenda.next() is later
    assert loop.time() >= now + 0.08 - 0.001


async def test_a_submitted_job_wakes_a_worker_waiting_for_a_distant_poll():
    agenda = Agenda(10)
    agenda.schedule(poll(asyncio.get_running_loop().time() + 3600))
    waiting = asyncio.create_task(agenda.next())
    await asyncio.sleep(0)  # let it start waiting
    write = job(Priority.WRITE)
    agenda.submit(write)
    assert await asyncio.wait_for(waiting, 5) is write


async def test_jobs_beyond_the_limit_are_refused_and_drain_hands_back_the_rest():
    agenda = Agenda(2)
    first, second = job(Priority.READ, "a"), job(Priority.WRITE, "b")
    agenda.submit(first)
    agenda.submit(second)
    with pytest.raises(AgendaFull, match="2 requests already waiting"):
        agenda.submit(job(Priority.WRITE, "c"))
    agenda.schedule(poll(0.0))
    assert agenda.drain() == [second, first]
    assert agenda.drain() == []
