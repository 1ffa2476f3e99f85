import pytest

from gatewayd.backoff import Backoff
from gatewayd.errors import DeviceUnavailable
from gatewayd.health import Component, State
from gatewayd.supervise import supervise


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay


async def test_retries_transient_errors_with_growing_backoff():
    clock = Clock()
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise DeviceUnavailable("port gone")

    comp = Component("c")
    await supervise(
        flaky, comp, Backoff(initial_s=1, max_s=8), sleep=clock.sleep, clock=clock, rand=lambda: 1.0
    )
    assert calls == 4
    assert clock.sleeps == [1, 2, 4]
    assert comp.state is State.DOWN  # the child marks itself up; supervise only marks down


async def test_attempts_reset_after_a_healthy_run():
    clock = Clock()
    calls = 0

    async def drops_after_a_while() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            clock.now += 100  # this run stayed healthy for 100 s
        if calls < 5:
            raise DeviceUnavailable("drop")

    await supervise(
        drops_after_a_while,
        Component("c"),
        Backoff(initial_s=1, max_s=60),
        healthy_after_s=30,
        sleep=clock.sleep,
        clock=clock,
        rand=lambda: 1.0,
    )
    assert clock.sleeps == [1, 2, 1, 2]


async def test_bugs_propagate():
    async def buggy() -> None:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await supervise(buggy, Component("c"), Backoff())


def test_component_logs_transitions_once(caplog):
    comp = Component("uplink")
    with caplog.at_level("DEBUG"):
        comp.down("refused")
        comp.down("refused")
        comp.down("refused")
        comp.up()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    infos = [r for r in caplog.records if r.levelname == "INFO"]
    assert len(warnings) == 1
    assert len(infos) == 1
    assert "recovered" in infos[0].getMessage()
