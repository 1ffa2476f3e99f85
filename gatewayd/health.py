"""Component health: one place that knows what is up, and that logs only transitions."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Component", "Health", "State"]

log = logging.getLogger(__name__)


class State(StrEnum):
    """Where a component stands."""

    STARTING = "starting"
    UP = "up"
    DOWN = "down"  # weather: expected to clear, retried
    FAILED = "failed"  # a bug or a fatal condition
    STOPPED = "stopped"


@dataclass(slots=True)
class Component:
    """The state of one named part of the daemon.

    Args:
        name: e.g. `api`, `uplink`, `connection[rs485-1]`.
        critical: the watchdog stops petting systemd while a critical component has failed.
    """

    name: str
    critical: bool = False
    state: State = State.STARTING
    detail: str = ""
    since: float = field(default_factory=time.time)
    problems: dict[str, str] = field(default_factory=dict)

    def up(self, detail: str = "") -> None:
        """Mark it working; logs once on recovery."""
        if self.state is State.DOWN:
            log.info("%s recovered", self.name)
        self._set(State.UP, detail)

    def down(self, reason: str) -> None:
        """Mark it unavailable for an expected reason; logs the first time only."""
        if self.state is not State.DOWN:
            log.warning("%s unavailable: %s", self.name, reason)
        else:
            log.debug("%s still unavailable: %s", self.name, reason)
        self._set(State.DOWN, reason)

    def failed(self, reason: str) -> None:
        """Mark it broken."""
        log.error("%s failed: %s", self.name, reason)
        self._set(State.FAILED, reason)

    def degrade(self, key: str, reason: str) -> None:
        """Note a problem that leaves the component working but the daemon degraded.

        A full disk or a salvaged outbox is not a component that is down: the API, the link
        and the field go on, yet an operator must be told. Each problem has a key, so the
        component can hold several and clear them one by one; a new reason for the same key
        replaces the old one and is logged only when the key was clear.
        """
        if key not in self.problems:
            log.warning("%s degraded: %s", self.name, reason)
        self.problems[key] = reason

    def clear(self, key: str) -> None:
        """The problem `key` is over; logs once."""
        if self.problems.pop(key, None) is not None:
            log.info("%s: %s cleared", self.name, key)

    def stopped(self) -> None:
        """Mark it stopped on purpose."""
        self._set(State.STOPPED, "")

    def _set(self, state: State, detail: str) -> None:
        if state is not self.state:
            self.since = time.time()
        self.state = state
        self.detail = detail


class Health:
    """All components, for /healthz, STATUS= lines and the watchdog."""

    def __init__(self) -> None:
        self._components: dict[str, Component] = {}

    def component(self, name: str, *, critical: bool = False) -> Component:
        """The component of that name, created on first use."""
        if name not in self._components:
            self._components[name] = Component(name, critical=critical)
        return self._components[name]

    def components(self) -> list[Component]:
        """All components, by name."""
        return [self._components[k] for k in sorted(self._components)]

    def critical_ok(self) -> bool:
        """No critical component has failed."""
        return not any(c.critical and c.state is State.FAILED for c in self._components.values())

    def problems(self) -> list[str]:
        """Every open problem as `component: reason`, by component name."""
        return [
            f"{c.name}: {reason}"
            for c in self.components()
            for _, reason in sorted(c.problems.items())
        ]

    def summary(self) -> str:
        """One line for systemd's STATUS=."""
        counts: dict[State, int] = {}
        for c in self._components.values():
            counts[c.state] = counts.get(c.state, 0) + 1
        text = ", ".join(f"{n} {s.value}" for s, n in sorted(counts.items()))
        problems = self.problems()
        return f"{text}; degraded: {'; '.join(problems)}" if problems else text
