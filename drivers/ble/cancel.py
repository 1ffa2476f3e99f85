"""A guard against radio libraries that lose a cancellation.

On Python 3.11, `asyncio.wait_for` returns the inner result when it completes in the same
loop iteration as a cancel, and the cancel is gone (bumble's GATT client waits that way).
A task that was asked to stop would then go on. The request count survives in
`Task.cancelling()`, so after each call into the library the loss can be noticed and the
cancellation raised again.
"""

from __future__ import annotations

import asyncio

__all__ = ["raise_lost_cancel"]


def raise_lost_cancel() -> None:
    """Raise CancelledError if this task was cancelled and nothing raised it yet.

    Call only on the normal path after an await, never in cleanup code that runs while a
    cancellation is already propagating.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
