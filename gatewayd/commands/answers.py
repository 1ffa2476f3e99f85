"""Each status of a command, recorded in its persisted record and told on `commands/update`."""

from __future__ import annotations

import logging
from typing import Any

from gatewayd.cloud.dialects import native
from gatewayd.store.cloud_state import CloudState
from gatewayd.store.outbox import Outbox, OutboxFull

__all__ = ["CommandAnswers"]

log = logging.getLogger(__name__)


class CommandAnswers:
    """Records a status, then queues its answer through the outbox (sent in order, durably).

    Args:
        state: the commands table.
        outbox: where `commands/update` goes.
    """

    def __init__(self, state: CloudState, outbox: Outbox) -> None:
        self._state = state
        self._outbox = outbox

    async def answer(
        self,
        device_id: str,
        command_id: str,
        status: str,
        message: str,
        response: dict[str, Any] | None = None,
    ) -> None:
        """Record `status` for the command and queue its `commands/update`."""
        await self._state.set_command_status(command_id, status, message, response)
        payload = native.command_update(command_id, status, message, response)
        try:
            await self._outbox.append(device_id, "commands/update", payload)
        except OutboxFull as exc:
            log.error("%s: commands/update not queued: %s", device_id, exc)  # noqa: TRY400
