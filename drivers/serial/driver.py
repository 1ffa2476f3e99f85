"""The serial driver: one port per connection, reopened by the runner when it returns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from drivers.serial.config import SerialConnection
from drivers.serial.session import SerialCounters, SerialSession
from drivers.serial.transport import PortFactory, default_port_factory

__all__ = ["SerialDriver"]


class SerialDriver:
    """Opens sessions on one serial port.

    Args:
        config: the connection.
        port_factory: makes the unopened pyserial port; tests inject a fake here.

    Attributes:
        counters: frame outcomes on this port, kept across reconnects.
    """

    def __init__(
        self, config: SerialConnection, *, port_factory: PortFactory = default_port_factory
    ) -> None:
        self._config = config
        self._port_factory = port_factory
        self.counters = SerialCounters()

    def connect(self) -> AbstractAsyncContextManager[SerialSession]:
        """Open the port; raises ConnectionLost when it is absent."""
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[SerialSession]:
        session = await SerialSession.open(
            self._config, self.counters, port_factory=self._port_factory
        )
        try:
            yield session
        finally:
            await session.close()
