"""The one seam to the serial port: pyserial for settings, pyserial-asyncio-fast for I/O.

`configure_port` applies the connection's settings to any object shaped like
`serial.Serial`, so the settings a pty cannot take (parity on some kernels, RS-485 ioctls,
modem lines) are tested against a fake port. `SerialLink` wraps the open port in an asyncio
transport and hands received bytes to a `Receiver` synchronously, inside the event loop's
read callback: framing is cheap, and no task has to pump bytes.
"""

from __future__ import annotations

import asyncio
import logging
import termios
from collections.abc import Callable
from typing import Any, Protocol

import serial
import serial.rs485
import serial_asyncio_fast

from drivers.serial.config import SerialConnection
from gatewayd.errors import ConnectionLost, DeviceUnavailable

__all__ = ["PortFactory", "Receiver", "SerialLink", "configure_port", "default_port_factory"]

log = logging.getLogger(__name__)

_PARITY = {
    "none": serial.PARITY_NONE,
    "even": serial.PARITY_EVEN,
    "odd": serial.PARITY_ODD,
    "mark": serial.PARITY_MARK,
    "space": serial.PARITY_SPACE,
}
_CHUNK = 256  # small writes: a pty's buffer overflow trips the transport (see docs)
_CLOSE_WAIT_S = 1.0

PortFactory = Callable[[str], Any]
"""Makes an unopened port object for a path or URL (`serial.serial_for_url` by default)."""


def default_port_factory(url: str) -> Any:
    """An unopened pyserial port for a device path or pyserial URL."""
    return serial.serial_for_url(url, do_not_open=True)


def configure_port(port: Any, config: SerialConnection) -> None:
    """Apply the connection's settings to an unopened pyserial-like port object.

    Raises:
        DeviceUnavailable: the port refuses a setting (e.g. RS-485 on a plain UART).
    """
    try:
        port.baudrate = config.baudrate
        port.bytesize = config.bytesize
        port.parity = _PARITY[config.parity]
        stopbits = float(config.stopbits)
        port.stopbits = int(stopbits) if stopbits.is_integer() else stopbits
        port.rtscts = config.flow_control == "rtscts"
        port.xonxoff = config.flow_control == "xonxoff"
        rs485 = config.rs485
        if rs485.enabled:
            port.rs485_mode = serial.rs485.RS485Settings(
                rts_level_for_tx=rs485.rts_level_for_tx,
                rts_level_for_rx=rs485.rts_level_for_rx,
                loopback=rs485.loopback,
                delay_before_tx=rs485.delay_before_tx_s,
                delay_before_rx=rs485.delay_before_rx_s,
            )
    except (ValueError, OSError, serial.SerialException) as exc:
        msg = f"{config.port}: setting refused: {exc}"
        raise DeviceUnavailable(msg) from exc


class Receiver(Protocol):
    """Where a link delivers what arrives."""

    def data(self, chunk: bytes) -> None:
        """Bytes arrived; called inside the event loop, must not block."""
        ...

    def lost(self, reason: str) -> None:
        """The port is gone (unplugged, closed by the peer, or closed by us)."""
        ...


class SerialLink:
    """An open port: send frames, receive bytes through a Receiver, close once.

    Use `await SerialLink.open(...)`; the constructor only wires the pieces.
    """

    def __init__(self, url: str, transport: asyncio.Transport, protocol: _LinkProtocol) -> None:
        self._url = url
        self._transport = transport
        self._protocol = protocol

    @classmethod
    async def open(
        cls,
        config: SerialConnection,
        receiver: Receiver,
        *,
        port_factory: PortFactory = default_port_factory,
    ) -> SerialLink:
        """Open and configure the port.

        The open itself is synchronous: pyserial opens with O_NONBLOCK, so it returns at once
        whether or not a device answers.

        Raises:
            ConnectionLost: the port does not exist or cannot be opened.
            DeviceUnavailable: the port refuses a setting (RS-485 mode or parity on a UART
                without them; a pty refuses both).
        """
        port = port_factory(config.port)
        configure_port(port, config)
        # pyserial applies settings on open() and again whenever one changes (the asyncio
        # transport sets timeouts): ValueError for RS-485 mode, termios.error for a parity
        # or speed the UART refuses.
        refused = (ValueError, termios.error)
        try:
            port.open()
        except refused as exc:
            msg = f"{config.port}: setting refused: {exc}"
            raise DeviceUnavailable(msg) from exc
        except (OSError, serial.SerialException) as exc:
            msg = f"{config.port}: cannot open: {exc}"
            raise ConnectionLost(msg) from exc
        protocol = _LinkProtocol(receiver)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await serial_asyncio_fast.connection_for_serial(
                loop, lambda: protocol, port
            )
        except refused as exc:
            port.close()
            msg = f"{config.port}: setting refused: {exc}"
            raise DeviceUnavailable(msg) from exc
        except BaseException:
            port.close()
            raise
        return cls(config.port, transport, protocol)

    async def send(self, data: bytes, timeout_s: float) -> None:
        """Send bytes in small chunks, waiting while the port's buffer is full.

        Raises:
            ConnectionLost: the port is closed.
            DeviceUnavailable: the port did not take the bytes within the timeout.
        """
        try:
            async with asyncio.timeout(timeout_s):
                for at in range(0, len(data), _CHUNK):
                    await self._protocol.writable.wait()
                    if self._transport.is_closing():
                        msg = f"{self._url}: port closed"
                        raise ConnectionLost(msg)
                    self._transport.write(data[at : at + _CHUNK])
        except TimeoutError:
            msg = f"{self._url}: write not accepted within {timeout_s} s"
            raise DeviceUnavailable(msg) from None

    async def close(self) -> None:
        """Close the port and wait (briefly) until it is released."""
        self._transport.close()
        try:
            async with asyncio.timeout(_CLOSE_WAIT_S):
                await self._protocol.closed.wait()
        except TimeoutError:
            log.debug("%s: close not confirmed within %.1f s", self._url, _CLOSE_WAIT_S)


class _LinkProtocol(asyncio.Protocol):
    """Adapts the transport's callbacks to a Receiver and two events."""

    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self._receiver.data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.writable.set()
        self._receiver.lost(str(exc) if exc else "port closed")

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()
