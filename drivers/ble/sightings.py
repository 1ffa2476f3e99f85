"""What the adapter's scanner heard: the latest advertisement per address, and who waits for it.

Fed by bleak's detection callback (plain function calls on the loop), read by connects (wait
for a fresh sighting before connecting), by passive watches (a queue per subscriber) and by
discovery (everything heard that nobody manages).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

__all__ = ["Discovered", "Sighting", "Sightings"]


@dataclass(frozen=True, slots=True)
class Sighting:
    """One advertisement as received."""

    device: BLEDevice
    advertisement: AdvertisementData
    at: datetime  # wall clock, for samples
    mono: float  # loop time, for freshness

    @property
    def address(self) -> str:
        """The sender's address, upper case."""
        return self.device.address.upper()


@dataclass(frozen=True, slots=True)
class Discovered:
    """A device heard in a scan that no configured device claims."""

    address: str
    name: str | None
    rssi: int
    service_uuids: tuple[str, ...]
    last_seen: datetime


class Sightings:
    """The latest advertisement of every address heard, with waiters and subscribers.

    Args:
        forget_after_s: addresses silent this long are dropped, so a busy place full of
            phones with rotating random addresses does not grow the table without end.
    """

    def __init__(self, forget_after_s: float = 600.0) -> None:
        self._forget_after_s = forget_after_s
        self._next_prune = 0.0
        self._latest: dict[str, Sighting] = {}
        self._waiters: dict[str, set[asyncio.Future[Sighting]]] = {}
        self._listeners: dict[str, set[Callable[[Sighting], None]]] = {}

    def heard(self, device: BLEDevice, advertisement: AdvertisementData) -> None:
        """Record an advertisement (bleak's detection callback)."""
        loop = asyncio.get_running_loop()
        sighting = Sighting(device, advertisement, datetime.now(UTC), loop.time())
        address = sighting.address
        self._latest[address] = sighting
        if sighting.mono >= self._next_prune:
            self._prune(sighting.mono)
        for waiter in self._waiters.pop(address, set()):
            if not waiter.done():
                waiter.set_result(sighting)
        for listener in list(self._listeners.get(address, ())):
            listener(sighting)

    def _prune(self, now: float) -> None:
        horizon = now - self._forget_after_s
        for address in [a for a, s in self._latest.items() if s.mono < horizon]:
            del self._latest[address]
        self._next_prune = now + self._forget_after_s / 10

    def __len__(self) -> int:
        return len(self._latest)

    def latest(self, address: str) -> Sighting | None:
        """The newest sighting of an address, if any."""
        return self._latest.get(address.upper())

    async def fresh(self, address: str, newer_than: float, timeout_s: float) -> Sighting:
        """A sighting heard after loop time `newer_than`, waiting at most `timeout_s`.

        Raises:
            TimeoutError: not heard in time.
        """
        address = address.upper()
        current = self._latest.get(address)
        if current is not None and current.mono > newer_than:
            return current
        waiter: asyncio.Future[Sighting] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(address, set()).add(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter
        finally:
            waiting = self._waiters.get(address)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self._waiters[address]

    @contextlib.contextmanager
    def subscribe(self, address: str, listener: Callable[[Sighting], None]) -> Iterator[None]:
        """Call `listener` with every advertisement of `address` while the block runs."""
        address = address.upper()
        self._listeners.setdefault(address, set()).add(listener)
        try:
            yield
        finally:
            listeners = self._listeners[address]
            listeners.discard(listener)
            if not listeners:
                del self._listeners[address]

    def unmanaged(self, managed: set[str], since: float) -> list[Discovered]:
        """Devices heard since loop time `since` whose address is not in `managed`."""
        found = [
            Discovered(
                address=s.address,
                name=s.advertisement.local_name or s.device.name,
                rssi=s.advertisement.rssi,
                service_uuids=tuple(s.advertisement.service_uuids),
                last_seen=s.at,
            )
            for s in self._latest.values()
            if s.mono >= since and s.address not in managed
        ]
        return sorted(found, key=lambda d: d.rssi, reverse=True)
