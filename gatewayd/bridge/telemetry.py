"""A BridgeSink that turns each device's readings into one telemetry record in the outbox.

One batch (one read or push of one device) becomes one `telemetry` record: the points'
values at the batch's latest timestamp. Device availability becomes the child's status for
`children/status`. A reading without a value (quality BAD) is left out of the record; a
device whose whole batch is bad sends nothing and is reported by its status instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from gatewayd.batch import ReadingBatch
from gatewayd.cloud.children import ChildrenSource, StatusBoard
from gatewayd.cloud.dialects import native
from gatewayd.model import Availability, Quality, Reading
from gatewayd.store.outbox import Outbox, OutboxFull

__all__ = ["TelemetrySink"]

log = logging.getLogger(__name__)


class TelemetrySink:
    """Readings to outbox records, availability to child status.

    Args:
        outbox: where telemetry records go.
        children: maps (connection, device key) to the device id.
        board: children's latest status.
    """

    def __init__(self, outbox: Outbox, children: ChildrenSource, board: StatusBoard) -> None:
        self._outbox = outbox
        self._children = children
        self._board = board
        self._refusing: set[str] = set()
        self.refused = 0

    async def readings(self, connection: str, device: str, batch: Sequence[Reading]) -> None:
        """Put one telemetry record for the batch into the outbox (see `Outbox.put`)."""
        values = _values(batch)
        if not values:
            return
        device_id = self._device_id(connection, device)
        at = max(batch.at) if isinstance(batch, ReadingBatch) else max(r.at for r in batch)
        try:
            await self._outbox.put(device_id, "telemetry", native.telemetry(at, values))
        except OutboxFull as exc:
            self.refused += 1
            if device_id not in self._refusing:
                self._refusing.add(device_id)
                log.error("%s: telemetry not stored: %s", device_id, exc)  # noqa: TRY400
            return
        if device_id in self._refusing:
            self._refusing.discard(device_id)
            log.info("%s: telemetry stored again", device_id)

    async def availability(
        self, connection: str, device: str, state: Availability, reason: str
    ) -> None:
        """The device's status, for `children/status`."""
        del reason
        self._board.set(self._device_id(connection, device), state.value)

    def _device_id(self, connection: str, device: str) -> str:
        device_id = self._children.device_id(connection, device)
        if device_id is None:
            msg = f"{connection}/{device} is not a configured device"
            raise KeyError(msg)
        return device_id


def _values(batch: Sequence[Reading]) -> dict[str, Any]:
    """Point -> value of the readings that have a usable value."""
    if isinstance(batch, ReadingBatch):
        if batch.good():
            return dict(zip(batch.points, batch.values, strict=True))
        quality = batch.quality or [Quality.GOOD] * len(batch)
        return {
            p: v
            for p, v, q in zip(batch.points, batch.values, quality, strict=True)
            if v is not None and q is not Quality.BAD
        }
    return {
        r.ref.point: r.value for r in batch if r.value is not None and r.quality is not Quality.BAD
    }
