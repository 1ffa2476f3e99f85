"""Retry policy as a value, so reconnect timing is testable without waiting."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with full jitter. Pure: no sleeping, no state.

    Args:
        initial_s: ceiling of the first delay.
        factor: growth of the ceiling per attempt.
        max_s: the ceiling never exceeds this.
    """

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.factor < 1:
            msg = f"invalid backoff {self!r}: need 0 < initial_s <= max_s and factor >= 1"
            raise ValueError(msg)

    def ceiling(self, attempt: int) -> float:
        """Largest delay for this attempt (0-based)."""
        return min(self.max_s, self.initial_s * self.factor ** min(max(attempt, 0), 64))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Delay before retry number `attempt`, uniformly jittered in [0, ceiling)."""
        return self.ceiling(attempt) * rand()
