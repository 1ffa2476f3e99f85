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

    def summary(self) -> str:
        """One line for systemd's STATUS=."""
        counts: dict[State, int] = {}
        for c in self._components.values():
            counts[c.state] = counts.get(c.state, 0) + 1
        return ", ".join(f"{n} {s.value}" for s, n in sorted(counts.items()))
