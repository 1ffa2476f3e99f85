"""One device's push stream: its advertisements and its notifications, merged.

Both arrive as plain callbacks on the loop (bleak's detection and notification callbacks);
they land in one inbox, which the stream drains. The stream also keeps the device's link:
it reconnects after a drop (the manager rescans and enables notifications again), gives up
its slot after `turn_s` while other devices wait, and declares an advertising device gone
after `offline_after_s` of silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from drivers.ble.cancel import raise_lost_cancel
from drivers.ble.config import BleConnection, BleDevice, BlePoint
from drivers.ble.decode import AdvertDecoder, Complaints, decode_gatt
from drivers.ble.manager import BleManager, NotifyHandler
from drivers.ble.sightings import Sighting
from gatewayd.errors import DeviceUnavailable
from gatewayd.model import Sample

__all__ = ["DeviceWatch"]

log = logging.getLogger(__name__)

_DROPPED = object()
_INBOX_SIZE = 256


class DeviceWatch:
    """Samples pushed by one device, for as long as it stays reachable.

    Args:
        manager: the adapter's manager.
        config: the adapter's configuration.
        device: the device.
        points: its push points (advertised, or GATT with `notify`).
        complaints: where decode failures are remembered.
    """

    def __init__(
        self,
        manager: BleManager,
        config: BleConnection,
        device: BleDevice,
        points: Sequence[BlePoint],
        complaints: Complaints,
    ) -> None:
        self._manager = manager
        self._config = config
        self._device = device
        self._advertised = [p for p in points if p.advertised]
        self._notifying: dict[str, list[BlePoint]] = {}
        for point in points:
            if point.notify and point.characteristic is not None:
                self._notifying.setdefault(point.characteristic, []).append(point)
        self._complaints = complaints
        self._decoder = AdvertDecoder(device, self._advertised, complaints)
        self._inbox: asyncio.Queue[object] = asyncio.Queue(_INBOX_SIZE)
        self._link = contextlib.AsyncExitStack()
        self._held_since: float | None = None
        self._last_heard = 0.0

    async def samples(self) -> AsyncIterator[Sample]:
        """Yield samples as they arrive.

        Raises:
            DeviceUnavailable: a (re)connect failed, or an advertising device fell silent.
        """
        self._last_heard = asyncio.get_running_loop().time()
        with contextlib.ExitStack() as listening:
            if self._advertised:
                listening.enter_context(
                    self._manager.sightings.subscribe(self._device.address, self._offer)
                )
            try:
                while True:
                    raise_lost_cancel()
                    await self._hold_link()
                    item = await self._next()
                    for sample in await self._handle(item):
                        yield sample
            finally:
                await self._link.aclose()

    async def _hold_link(self) -> None:
        """Connect (again) when there are notifications to receive and no link holds them."""
        if not self._notifying or self._held_since is not None:
            return
        address = self._device.address
        await asyncio.sleep(self._manager.retry_in(address))
        handlers = {uuid: self._notification(uuid) for uuid in self._notifying}
        await self._link.enter_async_context(
            self._manager.connection(
                address,
                notify=handlers,
                on_drop=lambda: self._offer(_DROPPED),
                slot_wait_s=None,  # waiting for one's turn is not a failure
            )
        )
        self._held_since = asyncio.get_running_loop().time()

    def _notification(self, uuid: str) -> NotifyHandler:
        def deliver(data: bytes) -> None:
            self._offer((uuid, data))

        return deliver

    def _offer(self, item: object) -> None:
        """Queue an item from a callback; while nobody drains the inbox, keep the newest."""
        if self._inbox.full():
            self._inbox.get_nowait()
        self._inbox.put_nowait(item)

    async def _release_link(self) -> None:
        await self._link.aclose()
        self._held_since = None

    async def _next(self) -> object | None:
        """The next inbox item, or None when a deadline (silence, turn) comes first."""
        now = asyncio.get_running_loop().time()
        deadlines = []
        if self._advertised:
            deadlines.append(self._last_heard + self._device.offline_after_s)
        if self._held_since is not None:
            turn_end = self._held_since + self._config.turn_s
            deadlines.append(turn_end if turn_end > now else now + min(1.0, self._config.turn_s))
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        try:
            async with asyncio.timeout(timeout):
                return await self._inbox.get()
        except TimeoutError:
            return None

    async def _handle(self, item: object | None) -> list[Sample]:
        await self._deadline()  # even while items keep coming: a busy stream still takes turns
        if item is None:
            return []
        if item is _DROPPED:
            await self._release_link()
            return []
        if isinstance(item, Sighting):
            self._last_heard = item.mono
            return self._decoder.samples(item)
        assert isinstance(item, tuple)
        uuid, data = item
        return decode_gatt(
            self._device, self._notifying[uuid], data, datetime.now(UTC), self._complaints
        )

    async def _deadline(self) -> None:
        now = asyncio.get_running_loop().time()
        device = self._device
        if self._advertised and now - self._last_heard >= device.offline_after_s:
            msg = f"{device.id}: no advertisement for {device.offline_after_s:g} s"
            raise DeviceUnavailable(msg)
        held = self._held_since
        if held is not None and now - held >= self._config.turn_s and self._manager.slots.waiting:
            log.debug("%s: giving its connection slot to a waiting device", device.id)
            await self._release_link()
