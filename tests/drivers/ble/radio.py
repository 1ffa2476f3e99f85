"""An emulated radio space for tests: adapters and bumble peripherals on one link."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner
from bumble.att import ATT_Error, ErrorCode
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.link import LocalLink

from tests.drivers.ble.bumble_backend import backends_for, make_device


class World:
    """One radio space: a link, adapters (centrals) and peripherals, all emulated."""

    def __init__(self) -> None:
        self.link = LocalLink()
        self._count = 0
        self.links = 0  # connections open to peripherals now
        self.most_links = 0  # the most ever open at once

    def _address(self) -> str:
        self._count += 1
        return f"C0:00:00:00:00:{self._count:02X}"

    async def adapter(self) -> tuple[type[BaseBleakScanner], type[BaseBleakClient]]:
        """A powered central; returns the bleak backends bound to it."""
        device = make_device(self.link, self._address(), "adapter")
        await device.power_on()
        return backends_for(device)


class Peripheral:
    """A bumble peripheral: advertising data, optional GATT service, link control.

    Args:
        world: the radio space it lives in.
        address: its (random static) address.
        name: its local name.
    """

    def __init__(self, world: World, address: str, name: str = "") -> None:
        self.address = address
        self.name = name
        self.world = world
        self.device = make_device(world.link, address, name or "peripheral")
        self.connections: list[Connection] = []
        self.connected = asyncio.Event()
        self.connect_count = 0
        self.values: dict[str, bytes] = {}
        self.writes: list[tuple[str, bytes]] = []
        self._chars: dict[str, Characteristic[Any]] = {}
        self._services: dict[str, list[Characteristic[Any]]] = {}
        self.device.on(Device.EVENT_CONNECTION, self._on_connection)

    def _on_connection(self, connection: Connection) -> None:
        self.connections.append(connection)
        self.connect_count += 1
        self.world.links += 1
        self.world.most_links = max(self.world.most_links, self.world.links)
        self.connected.set()
        connection.on(Connection.EVENT_DISCONNECTION, lambda *_: self._on_gone(connection))

    def _on_gone(self, connection: Connection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
            self.world.links -= 1
        if not self.connections:
            self.connected.clear()

    def add_characteristic(
        self,
        service_uuid: str,
        uuid: str,
        value: bytes,
        *,
        read: bool = True,
        notify: bool = False,
        write: bool = False,
        write_without_response: bool = False,
        refuse: Callable[[bytes], bool] = lambda _data: False,
    ) -> None:
        """Declare one characteristic (call before `start`); `refuse` vetoes writes."""
        props = Characteristic.Properties(0)
        if read:
            props |= Characteristic.Properties.READ
        if notify:
            props |= Characteristic.Properties.NOTIFY
        if write:
            props |= Characteristic.Properties.WRITE
        if write_without_response:
            props |= Characteristic.Properties.WRITE_WITHOUT_RESPONSE
        self.values[uuid] = value

        def on_read(_connection: Any) -> bytes:
            if not read:
                raise ATT_Error(ErrorCode.READ_NOT_PERMITTED)
            return self.values[uuid]

        def on_write(_connection: Any, data: bytes) -> None:
            if refuse(bytes(data)):
                raise ATT_Error(ErrorCode.VALUE_NOT_ALLOWED)
            self.values[uuid] = bytes(data)
            self.writes.append((uuid, bytes(data)))

        char: Characteristic[Any] = Characteristic(
            uuid,
            props,
            Characteristic.READABLE | Characteristic.WRITEABLE,
            CharacteristicValue(read=on_read, write=on_write),
        )
        self._chars[uuid] = char
        self._services.setdefault(service_uuid, []).append(char)

    async def start(self, advertising_data: bytes = b"", interval_ms: float = 50) -> None:
        """Power on, publish the GATT services and advertise (again after every disconnect)."""
        for service_uuid, chars in self._services.items():
            self.device.add_service(Service(service_uuid, chars))
        await self.device.power_on()
        self.device.advertising_data = advertising_data or _name_ad(self.name)
        await self.device.start_advertising(
            auto_restart=True,
            advertising_interval_min=interval_ms,
            advertising_interval_max=interval_ms,
        )

    async def set_advertising_data(self, data: bytes) -> None:
        """Change what is advertised."""
        self.device.advertising_data = data
        await self.device.start_advertising(
            auto_restart=True, advertising_interval_min=50, advertising_interval_max=50
        )

    async def notify(self, uuid: str, value: bytes) -> None:
        """Set a value and notify every subscriber."""
        self.values[uuid] = value
        await self.device.notify_subscribers(self._chars[uuid], value)

    async def drop_links(self) -> None:
        """Disconnect every central from the peripheral side."""
        for connection in list(self.connections):
            await connection.disconnect()

    async def stop(self) -> None:
        """Stop advertising and drop links: the device vanishes."""
        await self.device.stop_advertising()
        await self.drop_links()


def _name_ad(name: str) -> bytes:
    raw = name.encode()
    return bytes([len(raw) + 1, 0x09]) + raw if raw else b"\x02\x01\x06"


def ad_structure(kind: int, body: bytes) -> bytes:
    """One advertising data structure: length, type, body."""
    return bytes([len(body) + 1, kind]) + body
