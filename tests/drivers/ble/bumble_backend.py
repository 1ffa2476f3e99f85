"""A bleak backend over bumble's emulated controllers: BLE end to end without a radio.

Every adapter and every peripheral is a `bumble.device.Device` on one `LocalLink`. The
scanner and client classes below are bleak backends bound to one central device, so code
under test uses bleak's public `BleakScanner` / `BleakClient` unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bleak.uuids import normalize_uuid_str
from bumble import core, hci
from bumble.att import ATT_Error
from bumble.controller import Controller
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt import Characteristic
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

_PROPERTY_NAMES = {
    Characteristic.Properties.BROADCAST: "broadcast",
    Characteristic.Properties.READ: "read",
    Characteristic.Properties.WRITE_WITHOUT_RESPONSE: "write-without-response",
    Characteristic.Properties.WRITE: "write",
    Characteristic.Properties.NOTIFY: "notify",
    Characteristic.Properties.INDICATE: "indicate",
}


class CancellingController(Controller):
    """bumble's controller, plus LE Create Connection Cancel (which it otherwise ignores)."""

    def on_hci_le_create_connection_cancel_command(self, _command: Any) -> Any:
        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        event = hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
            connection_handle=0,
            role=hci.Role.CENTRAL,
            peer_address_type=pending.peer_address_type,
            peer_address=pending.peer_address,
            connection_interval=0,
            peripheral_latency=0,
            supervision_timeout=0,
            central_clock_accuracy=0,
        )
        asyncio.get_running_loop().call_soon(self.send_hci_packet, event)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)


def make_device(link: LocalLink, address: str, name: str) -> Device:
    """A bumble device with its own emulated controller on `link` (power it on before use)."""
    controller = CancellingController(name, link=link, public_address=address)
    device = Device(
        name=name,
        address=hci.Address(address),
        host=Host(controller, AsyncPipeSink(controller)),
    )
    device.le_enabled = True
    return device


def backends_for(central: Device) -> tuple[type[BaseBleakScanner], type[BaseBleakClient]]:
    """Scanner and client backend classes bound to one central device (one adapter)."""

    class Scanner(BumbleScanner):
        device = central

    class Client(BumbleClient):
        device = central

    return Scanner, Client


def parse_ad(
    data: bytes,
) -> tuple[str | None, dict[int, bytes], dict[str, bytes], list[str], int | None]:
    """Split raw advertising data into bleak's fields."""
    name: str | None = None
    manufacturer: dict[int, bytes] = {}
    service_data: dict[str, bytes] = {}
    uuids: list[str] = []
    tx_power: int | None = None
    i = 0
    while i + 1 < len(data):
        length = data[i]
        if length == 0:
            break
        kind, body = data[i + 1], data[i + 2 : i + 1 + length]
        i += 1 + length
        if kind in (0x08, 0x09):
            name = body.decode("utf-8", "replace")
        elif kind == 0xFF and len(body) >= 2:
            manufacturer[int.from_bytes(body[:2], "little")] = body[2:]
        elif kind == 0x16 and len(body) >= 2:
            service_data[_uuid16(body[:2])] = body[2:]
        elif kind == 0x21 and len(body) >= 16:
            service_data[_uuid128(body[:16])] = body[16:]
        elif kind in (0x02, 0x03):
            uuids += [_uuid16(body[j : j + 2]) for j in range(0, len(body) - 1, 2)]
        elif kind in (0x06, 0x07):
            uuids += [_uuid128(body[j : j + 16]) for j in range(0, len(body) - 15, 16)]
        elif kind == 0x0A and body:
            tx_power = struct.unpack("b", body[:1])[0]
    return name, manufacturer, service_data, uuids, tx_power


def _uuid16(raw: bytes) -> str:
    return normalize_uuid_str(raw[::-1].hex())


def _uuid128(raw: bytes) -> str:
    h = raw[::-1].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class BumbleScanner(BaseBleakScanner):
    """Reports the advertisements the bound central device hears."""

    device: Device

    def __init__(
        self,
        detection_callback: Any,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        del scanning_mode, kwargs

    async def start(self) -> None:
        self.seen_devices = {}
        self.device.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        await self.device.start_scanning(filter_duplicates=False)

    async def stop(self) -> None:
        self.device.remove_listener(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        if self.device.is_scanning:
            await self.device.stop_scanning()

    def _on_advertisement(self, adv: Advertisement) -> None:
        name, manufacturer, service_data, uuids, tx_power = parse_ad(adv.data_bytes)
        if not self.is_allowed_uuid(uuids):
            return
        address = adv.address.to_string(with_type_qualifier=False)
        data = AdvertisementData(
            local_name=name,
            manufacturer_data=manufacturer,
            service_data=service_data,
            service_uuids=uuids,
            tx_power=tx_power,
            rssi=adv.rssi,
            platform_data=(adv,),
        )
        device = self.create_or_update_device(address, address, name, adv, data)
        self.call_detection_callbacks(device, data)


class BumbleClient(BaseBleakClient):
    """A GATT client over the bound central device."""

    device: Device

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        del kwargs
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._subscribers: dict[int, Callable[[bytes], None]] = {}

    @property
    def mtu_size(self) -> int:
        return 23

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        del pair, kwargs
        try:
            connection = await self.device.connect(hci.Address(self.address), timeout=self._timeout)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.device.cancel_connection()
            raise
        except (core.BaseBumbleError, core.TimeoutError) as exc:
            raise BleakError(f"connect to {self.address} failed: {exc!r}") from exc
        self._connection = connection
        connection.on(Connection.EVENT_DISCONNECTION, self._on_disconnection)
        peer = Peer(connection)
        self._peer = peer
        self.services = await self._discover(peer)

    async def _discover(self, peer: Peer) -> BleakGATTServiceCollection:
        collection = BleakGATTServiceCollection()
        for svc in await peer.discover_services():
            service = BleakGATTService(
                svc, svc.handle, normalize_uuid_str(svc.uuid.to_hex_str("-"))
            )
            collection.add_service(service)
            for chr_ in await svc.discover_characteristics():
                props = [n for flag, n in _PROPERTY_NAMES.items() if chr_.properties & flag]
                char = BleakGATTCharacteristic(
                    chr_,
                    chr_.handle,
                    normalize_uuid_str(chr_.uuid.to_hex_str("-")),
                    props,  # type: ignore[arg-type]
                    lambda: 20,
                    service,
                )
                collection.add_characteristic(char)
                for desc in await chr_.discover_descriptors():
                    collection.add_descriptor(
                        BleakGATTDescriptor(
                            desc, desc.handle, normalize_uuid_str(desc.type.to_hex_str("-")), char
                        )
                    )
        return collection

    def _on_disconnection(self, _reason: int) -> None:
        self._connection = None
        self._peer = None
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    def _require_peer(self) -> Peer:
        if self._peer is None:
            raise BleakError("Not connected")
        return self._peer

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is None:
            return
        callback, self._disconnected_callback = self._disconnected_callback, None
        try:
            await connection.disconnect()
        except core.BaseBumbleError as exc:
            raise BleakError(f"disconnect failed: {exc!r}") from exc
        finally:
            self._disconnected_callback = callback
            self._connection = None
            self._peer = None

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    async def unpair(self) -> None:
        raise NotImplementedError

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        try:
            return bytearray(await self._require_peer().read_value(characteristic.obj))
        except ATT_Error as exc:  # the peripheral answered with an ATT error
            raise BleakGATTProtocolError(exc.error_code) from exc
        except core.BaseBumbleError as exc:
            raise BleakError(f"read {characteristic.uuid} failed: {exc!r}") from exc

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return bytearray(await self._require_peer().read_value(descriptor.obj))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        try:
            await self._require_peer().write_value(
                characteristic.obj, bytes(data), with_response=response
            )
        except ATT_Error as exc:  # the peripheral answered with an ATT error
            raise BleakGATTProtocolError(exc.error_code) from exc
        except core.BaseBumbleError as exc:
            raise BleakError(f"write {characteristic.uuid} failed: {exc!r}") from exc

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        await self._require_peer().write_value(descriptor.obj, bytes(data), with_response=True)

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        def subscriber(value: bytes) -> None:
            callback(bytearray(value))

        self._subscribers[characteristic.handle] = subscriber
        try:
            await self._require_peer().subscribe(characteristic.obj, subscriber)
        except core.BaseBumbleError as exc:
            raise BleakError(f"subscribe {characteristic.uuid} failed: {exc!r}") from exc

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        subscriber = self._subscribers.pop(characteristic.handle, None)
        await self._require_peer().unsubscribe(characteristic.obj, subscriber)
