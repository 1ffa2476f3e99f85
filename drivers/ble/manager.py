"""One BLE manager per adapter: the only code that touches the radio.

It keeps one scanner running, serialises connects with it (the scanner pauses while a connect
is under way: cheap adapters cannot do both), limits how many GATT connections are held at
once (slots), and remembers per device when it may try again (backoff). A connect happens only
after a fresh advertisement from the device, so an absent device costs a bounded wait for that
device alone and never holds the radio. Notification subscriptions belong to the device's
link, so every reconnect enables them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner
from bleak.exc import BleakError

from drivers.ble.cancel import raise_lost_cancel
from drivers.ble.config import BleConnection
from drivers.ble.sightings import Discovered, Sighting, Sightings
from drivers.ble.slots import SlotPool
from gatewayd.errors import ConnectionLost, DeviceUnavailable

__all__ = ["BleManager", "Link", "NotifyHandler"]

log = logging.getLogger(__name__)

NotifyHandler = Callable[[bytes], None]


@dataclass(eq=False)
class Link:
    """One device's GATT connection, shared by everyone using that device."""

    address: str
    client: BleakClient | None = None
    users: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    subscriptions: dict[str, NotifyHandler] = field(default_factory=dict)
    enabled: set[str] = field(default_factory=set)
    on_drop: set[Callable[[], None]] = field(default_factory=set)
    left_at: float = float("-inf")  # loop time the last link ended
    tried_at: float = float("-inf")  # loop time of the last connect attempt
    has_slot: bool = False

    @property
    def connected(self) -> bool:
        """Whether a connection is open now."""
        return self.client is not None and self.client.is_connected


@dataclass(slots=True)
class _Retry:
    attempt: int = 0
    not_before: float = 0.0


class BleManager:
    """Owns one adapter: its scanner, its connection slots and every device link.

    Args:
        config: the adapter's configuration.
        scanner_backend: bleak scanner backend class; None picks the platform's (BlueZ).
        client_backend: bleak client backend class; None picks the platform's (BlueZ).
    """

    def __init__(
        self,
        config: BleConnection,
        *,
        scanner_backend: type[BaseBleakScanner] | None = None,
        client_backend: type[BaseBleakClient] | None = None,
    ) -> None:
        self.config = config
        longest_silence = max((d.offline_after_s for d in config.devices.values()), default=0.0)
        self.sightings = Sightings(forget_after_s=max(600.0, 2 * longest_silence))
        self.slots = SlotPool(config.slots)
        self._client_backend = client_backend
        self._scanner = BleakScanner(
            self.sightings.heard, backend=scanner_backend, bluez={"adapter": config.adapter}
        )
        self._managed = {d.address for d in config.devices.values()}
        self._radio = asyncio.Lock()
        self._scanning = False
        self._scan_began = 0.0
        self._scan_paused = asyncio.Event()
        self._stopping = False
        self._links: dict[str, Link] = {}
        self._retry: dict[str, _Retry] = {}
        self.connects = 0

    # --- adapter lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start scanning.

        Raises:
            DeviceUnavailable: the adapter cannot scan (missing, powered off, BlueZ down).
        """
        try:
            await self._start_scan()
        except ConnectionLost as exc:
            raise DeviceUnavailable(str(exc)) from exc
        self._scan_began = asyncio.get_running_loop().time()

    async def run(self) -> None:
        """Resume scanning after every connect, until `stop()`.

        Raises:
            ConnectionLost: scanning cannot resume: the adapter is gone.
        """
        while not self._stopping:
            await self._scan_paused.wait()
            async with self._radio:
                self._scan_paused.clear()
                if not self._scanning and not self._stopping:
                    await self._start_scan()

    def stop(self) -> None:
        """End `run()`, even if a radio library swallowed its cancellation."""
        self._stopping = True
        self._scan_paused.set()

    async def close(self) -> None:
        """Disconnect every device and stop scanning; never raises for the radio's sake."""
        for link in list(self._links.values()):
            await self._disconnect(link)
        if self._scanning:
            self._scanning = False
            with contextlib.suppress(BleakError, TimeoutError):
                async with asyncio.timeout(self.config.io_timeout_s):
                    await self._scanner.stop()

    async def _start_scan(self) -> None:
        try:
            async with asyncio.timeout(self.config.io_timeout_s):
                await self._scanner.start()
        except (BleakError, TimeoutError, OSError) as exc:
            msg = f"adapter {self.config.adapter}: cannot scan: {exc or type(exc).__name__}"
            raise ConnectionLost(msg) from exc
        self._scanning = True

    async def _stop_scan(self) -> None:
        if not self._scanning:
            return
        self._scanning = False
        self._scan_paused.set()
        try:
            async with asyncio.timeout(self.config.io_timeout_s):
                await self._scanner.stop()
        except (BleakError, TimeoutError) as exc:
            log.debug("adapter %s: stopping the scan failed: %s", self.config.adapter, exc)

    @contextlib.asynccontextmanager
    async def _radio_turn(self) -> AsyncIterator[None]:
        """Exclusive use of the radio for one connect; scanning resumes afterwards."""
        async with self._radio:
            await self._stop_scan()
            yield

    # --- discovery ---------------------------------------------------------------------

    async def discover(self, duration_s: float) -> list[Discovered]:
        """Devices heard during the next `duration_s` that no configured device claims."""
        since = asyncio.get_running_loop().time()
        await asyncio.sleep(duration_s)
        return self.sightings.unmanaged(self._managed, since)

    # --- device links ------------------------------------------------------------------

    def retry_in(self, address: str) -> float:
        """Seconds until the device may be tried again (0: now)."""
        retry = self._retry.get(address)
        if retry is None:
            return 0.0
        return max(0.0, retry.not_before - asyncio.get_running_loop().time())

    @contextlib.asynccontextmanager
    async def connection(
        self,
        address: str,
        *,
        notify: Mapping[str, NotifyHandler] | None = None,
        on_drop: Callable[[], None] | None = None,
        slot_wait_s: float | None,
    ) -> AsyncIterator[BleakClient]:
        """Use a device's connection, connecting first if needed.

        While the block runs, `notify` handlers receive the values of their characteristics
        (enabled again after every reconnect) and `on_drop` is called if the link drops.
        The last user to leave disconnects, which frees the slot. A free slot is awaited at
        most `slot_wait_s` (None: as long as it takes, for devices that wait their turn).

        Raises:
            DeviceUnavailable: backing off, not seen, no slot, or the connect failed.
        """
        link = self._links.setdefault(address, Link(address))
        link.users += 1
        if notify:
            link.subscriptions.update(notify)
        if on_drop is not None:
            link.on_drop.add(on_drop)
        try:
            await self._lock(link, slot_wait_s)
            try:
                if not link.connected:
                    await self._connect(link, slot_wait_s)
                await self._enable_subscriptions(link)
            finally:
                link.lock.release()
            assert link.client is not None
            yield link.client
        finally:
            link.users -= 1
            for uuid in notify or ():
                link.subscriptions.pop(uuid, None)
            if on_drop is not None:
                link.on_drop.discard(on_drop)
            if link.users == 0:
                await self._disconnect(link)

    async def _lock(self, link: Link, wait_s: float | None) -> None:
        """Take the link's lock; someone else may be connecting it or waiting for a slot."""
        try:
            async with asyncio.timeout(wait_s):
                await link.lock.acquire()
        except TimeoutError:
            msg = f"{link.address}: still waiting for a connection slot"
            raise DeviceUnavailable(msg) from None

    async def _connect(self, link: Link, slot_wait_s: float | None) -> None:
        address = link.address
        wait = self.retry_in(address)
        if wait > 0:
            msg = f"{address}: backing off after a failed attempt; next in {wait:.1f} s"
            raise DeviceUnavailable(msg)
        # Rescan before (re)connecting: only an advertisement heard after the last link and
        # the last attempt counts, so a connect never goes to a device that has left. It is
        # awaited until scan_timeout_s after the last link ended (or scanning began): an
        # absolute deadline, so a device that stays away costs the wait once, not per retry.
        loop = asyncio.get_running_loop()
        deadline = max(self._scan_began, link.left_at) + self.config.scan_timeout_s
        try:
            sighting = await self.sightings.fresh(
                address, max(link.left_at, link.tried_at), max(0.0, deadline - loop.time())
            )
        except TimeoutError:
            self._failed(address)
            msg = f"{address}: not advertising (not heard within {self.config.scan_timeout_s:g} s)"
            raise DeviceUnavailable(msg) from None
        try:
            await self.slots.acquire(slot_wait_s)
        except TimeoutError:
            msg = f"{address}: all {self.slots.size} connection slots stayed busy"
            raise DeviceUnavailable(msg) from None
        link.has_slot = True
        link.tried_at = loop.time()
        try:
            await self._open(link, sighting)
        except BaseException:
            self._release_slot(link)
            raise

    async def _open(self, link: Link, sighting: Sighting) -> None:
        address = link.address
        client: BleakClient | None = None

        def dropped(gone: BleakClient) -> None:
            self._dropped(link, gone)

        try:
            async with self._radio_turn():
                client = BleakClient(
                    sighting.device,
                    dropped,
                    timeout=self.config.connect_timeout_s,
                    backend=self._client_backend,
                    bluez={"adapter": self.config.adapter},
                )
                async with asyncio.timeout(self.config.connect_timeout_s + 1.0):
                    await client.connect()
                    raise_lost_cancel()
            self.connects += 1
            link.client = client
            link.enabled = set()
        except (BleakError, TimeoutError, OSError) as exc:
            self._failed(address)
            if client is not None:
                await _quietly_disconnect(client, self.config.io_timeout_s)
            msg = f"{address}: connect failed: {exc or type(exc).__name__}"
            raise DeviceUnavailable(msg) from exc
        self._retry.pop(address, None)
        log.debug("%s: connected (%d of %d slots)", address, self.slots.in_use, self.slots.size)

    async def _enable_subscriptions(self, link: Link) -> None:
        client = link.client
        assert client is not None
        for uuid in list(link.subscriptions):
            if uuid in link.enabled:
                continue

            def deliver(_char: BleakGATTCharacteristic, data: bytearray, uuid: str = uuid) -> None:
                handler = link.subscriptions.get(uuid)
                if handler is not None:
                    handler(bytes(data))

            try:
                async with asyncio.timeout(self.config.io_timeout_s):
                    await client.start_notify(uuid, deliver)
                    raise_lost_cancel()
            except (BleakError, TimeoutError) as exc:
                await self._disconnect(link)
                msg = f"{link.address}: cannot enable notifications of {uuid}: {exc}"
                raise DeviceUnavailable(msg) from exc
            link.enabled.add(uuid)

    def _dropped(self, link: Link, client: BleakClient) -> None:
        """Bleak's disconnected callback: the peripheral (or the air) ended the link."""
        if link.client is not client:
            return  # an old client, or our own disconnect
        log.info("%s: link lost", link.address)
        self._forget(link)
        for callback in list(link.on_drop):
            callback()

    async def _disconnect(self, link: Link) -> None:
        client = link.client
        self._forget(link)
        if client is not None:
            await _quietly_disconnect(client, self.config.io_timeout_s)

    def _forget(self, link: Link) -> None:
        link.client = None
        link.enabled = set()
        link.left_at = asyncio.get_running_loop().time()
        self._release_slot(link)

    def _release_slot(self, link: Link) -> None:
        if link.has_slot:
            link.has_slot = False
            self.slots.release()

    def _failed(self, address: str) -> None:
        retry = self._retry.setdefault(address, _Retry())
        delay = self.config.retry.ceiling(retry.attempt)
        retry.not_before = asyncio.get_running_loop().time() + delay
        retry.attempt += 1


async def _quietly_disconnect(client: BleakClient, timeout_s: float) -> None:
    """Disconnect, accepting that the link may already be gone."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.disconnect()
    except (BleakError, TimeoutError, OSError) as exc:
        log.debug("%s: disconnect: %s", client.address, exc)
