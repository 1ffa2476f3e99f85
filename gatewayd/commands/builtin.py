"""The commands the daemon runs itself: `ping` (every device) and `resync` (the gateway)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gatewayd.commands.engine import Builtin

__all__ = ["builtins"]


async def ping(device_id: str, parameters: dict[str, Any]) -> tuple[str, str]:
    """Answered by the daemon for any device: proves the command path end to end."""
    del device_id, parameters
    return "done", "pong"


def builtins(resync: Callable[[], Awaitable[int]]) -> Mapping[str, Builtin]:
    """The daemon's own commands; `resync` reports everything again and says how much."""

    async def run_resync(device_id: str, parameters: dict[str, Any]) -> tuple[str, str]:
        del device_id, parameters
        count = await resync()
        return "done", f"reported {count} device(s) again"

    return {"ping": ping, "resync": run_resync}
