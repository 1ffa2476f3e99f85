"""A per-device circuit breaker, as a small value: how long a failing device is skipped.

Closed: every poll goes to the device. After `failures_to_trip` failed jobs in a row it opens
for `backoff.ceiling(trips)` seconds (growing while the device stays dead), so a dead slave
costs a bounded share of a shared bus. When the pause ends, one probe is let through
(half-open): a success closes the breaker, a failure opens it again at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gatewayd.backoff import Backoff

__all__ = ["Breaker"]


@dataclass(slots=True)
class Breaker:
    """State of one device's breaker; time is passed in, nothing sleeps here.

    Args:
        failures_to_trip: consecutive failures that open a closed breaker.
        backoff: pause after each trip, by trip number.
    """

    failures_to_trip: int = 3
    backoff: Backoff = field(default_factory=lambda: Backoff(initial_s=2.0, max_s=60.0))
    failures: int = 0
    trips: int = 0
    open_until: float = 0.0

    def allows(self, now: float) -> bool:
        """Whether a job for the device may be queued now."""
        return now >= self.open_until

    def succeeded(self) -> None:
        """The device answered: close the breaker and forget past trips."""
        self.failures = 0
        self.trips = 0
        self.open_until = 0.0

    def failed(self, now: float) -> float | None:
        """The device failed a job; returns the pause when this opens the breaker."""
        self.failures += 1
        half_open = self.trips > 0
        if not half_open and self.failures < self.failures_to_trip:
            return None
        pause = self.backoff.ceiling(self.trips)
        self.open_until = now + pause
        self.trips += 1
        self.failures = 0
        return pause
