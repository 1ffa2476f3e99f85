"""The bounds a connection runner keeps, and how a connection's config sets them."""

from __future__ import annotations

from dataclasses import dataclass, field

from gatewayd.backoff import Backoff
from gatewayd.driver import ConnectionConfig

__all__ = ["RunnerLimits"]


@dataclass(frozen=True, slots=True)
class RunnerLimits:
    """Bounds that keep one bad device from costing the others.

    A dead device costs at most `(1 + retries) x` its request timeout per failed job, and
    after `breaker_failures` failed jobs in a row only one probe per breaker pause.

    Args:
        queue_size: most writes and on-demand reads waiting; more fail fast instead of
            piling up. Polls do not count: there is never more than one per device and
            interval waiting.
        request_gap_s: pause between two requests on the resource (bus turnaround).
        breaker_failures: consecutive failures before a device is skipped for a while.
        breaker: how long a tripped device is skipped, growing while it stays dead.
        job_timeout_s: bound on any single driver call.
        retries: extra attempts of a job whose device did not answer; a device's own
            `retries` field, when set, wins.
    """

    queue_size: int = 1000
    request_gap_s: float = 0.0
    breaker_failures: int = 3
    breaker: Backoff = field(default_factory=lambda: Backoff(initial_s=2.0, max_s=60.0))
    job_timeout_s: float = 30.0
    retries: int = 0

    @classmethod
    def from_config(cls, config: ConnectionConfig) -> RunnerLimits:
        """Limits from the optional fields a connection model may declare.

        Read when present: `request_gap_s`, `retries`, `breaker_failures`,
        `breaker_initial_s`, `breaker_max_s`, `job_timeout_s`. Anything absent keeps its
        default, so drivers add only the knobs their medium needs.
        """
        base = cls()
        initial = float(getattr(config, "breaker_initial_s", base.breaker.initial_s))
        return cls(
            queue_size=base.queue_size,
            request_gap_s=float(getattr(config, "request_gap_s", base.request_gap_s)),
            breaker_failures=int(getattr(config, "breaker_failures", base.breaker_failures)),
            breaker=Backoff(
                initial_s=initial,
                max_s=max(initial, float(getattr(config, "breaker_max_s", base.breaker.max_s))),
            ),
            job_timeout_s=float(getattr(config, "job_timeout_s", base.job_timeout_s)),
            retries=int(getattr(config, "retries", base.retries)),
        )
