"""The BLE driver: one session per adapter, reads, writes and watches through its manager."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner
from bleak.exc import BleakCharacteristicNotFoundError, BleakError, BleakGATTProtocolError

from drivers.ble.cancel import raise_lost_cancel
from drivers.ble.config import BleConnection, BleDevice, BlePoint
from drivers.ble.decode import Complaints, decode_advertised, decode_gatt
from drivers.ble.manager import BleManager
from drivers.ble.sightings import Discovered, Sighting
from drivers.ble.watch import DeviceWatch
from gatewayd.errors import DeviceUnavailable, WriteRejected
from gatewayd.model import Sample, Value

__all__ = ["BleDriver", "BleSession"]

log = logging.getLogger(__name__)


class BleSession:
    """An open adapter: reads, writes and watches of the devices configured on it.

    Args:
        manager: the adapter's manager (scanner, slots, links).
        config: the connection's configuration.
    """

    def __init__(self, manager: BleManager, config: BleConnection) -> None:
        self._manager = manager
        self._config = config
        self._complaints = Complaints()

    async def read(self, device: BleDevice, points: Sequence[BlePoint]) -> list[Sample]:
        """Read once: advertised points from the latest advertisement, GATT points over a link.

        Points sharing a characteristic cost one GATT read.

        Raises:
            DeviceUnavailable: not heard lately, or the device did not answer.
        """
        advertised = [p for p in points if p.advertised]
        by_characteristic: dict[str, list[BlePoint]] = {}
        for point in points:
            if point.characteristic is not None and point.readable:
                by_characteristic.setdefault(point.characteristic, []).append(point)
        samples: list[Sample] = []
        if advertised:
            samples += decode_advertised(device, advertised, self._heard(device), self._complaints)
        if not by_characteristic:
            return samples
        async with self._manager.connection(
            device.address, slot_wait_s=self._config.turn_s
        ) as client:
            for uuid, group in by_characteristic.items():
                try:
                    async with asyncio.timeout(self._config.io_timeout_s):
                        data = bytes(await client.read_gatt_char(uuid))
                        raise_lost_cancel()
                except BleakCharacteristicNotFoundError:
                    msg = f"{device.id}: characteristic {uuid} not found on the device"
                    raise DeviceUnavailable(msg) from None
                except (BleakError, TimeoutError) as exc:
                    msg = f"{device.id}: reading {uuid} failed: {exc or type(exc).__name__}"
                    raise DeviceUnavailable(msg) from exc
                samples += decode_gatt(device, group, data, datetime.now(UTC), self._complaints)
        return samples

    def _heard(self, device: BleDevice) -> Sighting:
        sighting = self._manager.sightings.latest(device.address)
        now = asyncio.get_running_loop().time()
        if sighting is None or now - sighting.mono > device.offline_after_s:
            msg = f"{device.id}: no advertisement for {device.offline_after_s:g} s"
            raise DeviceUnavailable(msg)
        return sighting

    async def write(self, device: BleDevice, point: BlePoint, value: Value) -> None:
        """Write a characteristic (with or without response, as the point says).

        Raises:
            WriteRejected: the point is not writable, the value does not fit, or the device
                refused it.
            DeviceUnavailable: the device did not answer.
        """
        if not point.writable or point.characteristic is None or point.field is None:
            msg = f"{device.id}/{point.id} is not writable"
            raise WriteRejected(msg)
        try:
            data = point.field.encode(value)
        except ValueError as exc:
            msg = f"{device.id}/{point.id}: {exc}"
            raise WriteRejected(msg) from exc
        async with self._manager.connection(
            device.address, slot_wait_s=self._config.turn_s
        ) as client:
            try:
                async with asyncio.timeout(self._config.io_timeout_s):
                    await client.write_gatt_char(
                        point.characteristic, data, response=point.write_response
                    )
                    raise_lost_cancel()
            except BleakGATTProtocolError as exc:
                msg = f"{device.id}/{point.id}: the device refused {value!r}: {exc}"
                raise WriteRejected(msg) from exc
            except BleakCharacteristicNotFoundError:
                msg = f"{device.id}: characteristic {point.characteristic} not found"
                raise DeviceUnavailable(msg) from None
            except (BleakError, TimeoutError) as exc:
                msg = f"{device.id}/{point.id}: write failed: {exc or type(exc).__name__}"
                raise DeviceUnavailable(msg) from exc

    def watch(self, device: BleDevice, points: Sequence[BlePoint]) -> AsyncIterator[Sample]:
        """Yield advertised values and notifications as they arrive (see DeviceWatch)."""
        return DeviceWatch(self._manager, self._config, device, points, self._complaints).samples()

    async def discover(self, duration_s: float) -> list[Discovered]:
        """Scan for `duration_s` and list devices no configured device claims."""
        return await self._manager.discover(duration_s)


class BleDriver:
    """Builds sessions over one adapter.

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
        self._config = config
        self._scanner_backend = scanner_backend
        self._client_backend = client_backend
        self._session: BleSession | None = None

    def connect(self) -> AbstractAsyncContextManager[BleSession]:
        """Open the adapter: scanning starts, devices connect on demand."""
        return self._open()

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[BleSession]:
        manager = BleManager(
            self._config,
            scanner_backend=self._scanner_backend,
            client_backend=self._client_backend,
        )
        await manager.start()
        try:
            async with asyncio.TaskGroup() as tg:
                keeper = tg.create_task(manager.run(), name=f"ble[{self._config.adapter}].scan")
                self._session = BleSession(manager, self._config)
                try:
                    yield self._session
                finally:
                    self._session = None
                    keeper.cancel()
                    manager.stop()
        finally:
            await manager.close()

    async def discover(self, duration_s: float = 5.0) -> list[Discovered]:
        """Devices heard during `duration_s` that no configured device claims.

        Raises:
            DeviceUnavailable: the adapter is not open.
        """
        session = self._session
        if session is None:
            msg = f"adapter {self._config.adapter} is not open"
            raise DeviceUnavailable(msg)
        return await session.discover(duration_s)
