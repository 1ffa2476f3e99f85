"""What a connection runner runs: prioritised jobs, and how polls are phased."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from gatewayd.driver import DeviceConfig, PointConfig, Session
from gatewayd.model import Value

__all__ = ["Job", "Priority", "phase", "settle"]


class Priority(IntEnum):
    """Queue order: lower goes first."""

    WRITE = 0
    READ = 1
    POLL = 2


@dataclass(slots=True)
class Job:
    """One request for the resource's worker: a poll, an on-demand read, a write or a call."""

    priority: Priority
    device: DeviceConfig[Any]
    points: Sequence[PointConfig]
    value: Value | None = None
    done: asyncio.Future[Any] | None = None
    call: Callable[[Session[Any, Any]], Awaitable[Any]] | None = None


def phase(key: str, interval: float) -> float:
    """A stable offset in (0, interval] for a device's polls."""
    return interval * (1 + zlib.crc32(key.encode()) % 1000) / 1000


def settle(job: Job, exc: BaseException) -> None:
    """Fail a job's waiter, if it has one still waiting."""
    if job.done is not None and not job.done.done():
        job.done.set_exception(exc)
