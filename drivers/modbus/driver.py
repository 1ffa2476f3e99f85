"""Opening a Modbus connection: one client per connection, owned by one runner.

Modbus TCP goes through `drivers.modbus.tcp` (pymodbus' messages on a lean protocol); RTU, on
a serial port or over TCP, through pymodbus' async clients. Their own reconnect
(`reconnect_delay=0`) and retries (`retries=0`) are off: the runner owns reconnection
(Backoff) and retries (per device). pymodbus would also close a connection after a few
unanswered requests; on a converter with one dead unit behind it that would cut off the live
ones, so that limit is lifted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType

from drivers.modbus.config import (
    ModbusConnection,
    ModbusRtuConnection,
    ModbusRtuTcpConnection,
    ModbusTcpConnection,
)
from drivers.modbus.session import ModbusSession
from drivers.modbus.tcp import TcpClient
from gatewayd.errors import DeviceUnavailable

__all__ = ["ModbusDriver", "make_client"]

log = logging.getLogger(__name__)

_NEVER_DISCONNECT = 2**31


def make_client(config: ModbusConnection) -> Any:
    """A client for the connection, not yet connected."""
    if isinstance(config, ModbusTcpConnection):
        return TcpClient(
            config.host, config.port, connect_timeout_s=config.connect_timeout_s, name=config.target
        )
    common: dict[str, Any] = {
        "reconnect_delay": 0,
        "timeout": config.connect_timeout_s,
        "retries": 0,
        "name": config.target,
    }
    client: Any
    if isinstance(config, ModbusRtuTcpConnection):
        client = AsyncModbusTcpClient(
            config.host, port=config.port, framer=FramerType.RTU, **common
        )
    elif isinstance(config, ModbusRtuConnection):
        client = AsyncModbusSerialClient(
            config.port,
            framer=FramerType.RTU,
            baudrate=config.baudrate,
            bytesize=config.bytesize,
            parity=config.parity,
            stopbits=config.stopbits,
            **common,
        )
    else:  # pragma: no cover - the config union has only these kinds
        msg = f"unsupported Modbus connection {type(config).__name__}"
        raise TypeError(msg)
    client.set_max_no_responses(_NEVER_DISCONNECT)
    return client


class ModbusDriver:
    """Opens sessions on one Modbus connection (TCP, RTU on a serial port, or RTU over TCP).

    Args:
        config: the connection's validated configuration.
    """

    def __init__(self, config: ModbusConnection) -> None:
        self._config = config

    def connect(self) -> AbstractAsyncContextManager[ModbusSession]:
        """Open the socket or serial port; DeviceUnavailable when it cannot be opened."""
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[ModbusSession]:
        client = make_client(self._config)
        try:
            try:
                async with asyncio.timeout(self._config.connect_timeout_s + 1.0):
                    ok = await client.connect()
            except TimeoutError:
                ok = False
            if not ok or not client.connected:
                msg = f"cannot open {self._config.target}"
                raise DeviceUnavailable(msg)
            log.debug("opened %s", self._config.target)
            yield ModbusSession(client, self._config)
        finally:
            client.close()
