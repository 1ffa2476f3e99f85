"""Real peers for the serial tests: a socat pty pair and the raw device end of it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tty
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from tests.helpers import async_wait_for


class PtyPair:
    """`socat pty,raw,echo=0,link=A pty,raw,echo=0,link=B`; A for the gateway, B for the device."""

    def __init__(self, directory: Path) -> None:
        self.gateway = directory / "gateway-tty"
        self.device = directory / "device-tty"
        self._proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self._unlink()
        self._proc = subprocess.Popen(
            [
                "socat",
                f"pty,raw,echo=0,link={self.gateway}",
                f"pty,raw,echo=0,link={self.device}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await async_wait_for(
            lambda: self.gateway.exists() and self.device.exists(), 5.0, "socat links"
        )

    def kill(self) -> None:
        """SIGKILL, as an unplug; the stale links are removed so nothing opens a wrong pty."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=5)
            self._proc = None
        self._unlink()

    def _unlink(self) -> None:
        for link in (self.gateway, self.device):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()


class DeviceEnd:
    """The instrument's side of the pty: raw non-blocking fd, bytes in, bytes out."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd)
        self._loop = asyncio.get_running_loop()
        self.received = bytearray()
        self._changed = asyncio.Event()
        self.closed = False
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            self._loop.remove_reader(self._fd)
        self.received += data
        self._changed.set()

    async def write(self, data: bytes) -> None:
        """Write everything, waiting while the pty buffer is full."""
        view = memoryview(data)
        while view:
            try:
                sent = os.write(self._fd, view)
            except BlockingIOError:
                sent = 0
            view = view[sent:]
            if view:
                ready = self._loop.create_future()
                self._loop.add_writer(self._fd, ready.set_result, None)
                try:
                    async with asyncio.timeout(10):
                        await ready
                finally:
                    self._loop.remove_writer(self._fd)

    async def read_until(self, separator: bytes, timeout_s: float = 5.0) -> bytes:
        """Take bytes up to and including the separator from what arrived."""
        async with asyncio.timeout(timeout_s):
            while True:
                at = self.received.find(separator)
                if at >= 0:
                    out = bytes(self.received[: at + len(separator)])
                    del self.received[: at + len(separator)]
                    return out
                if self.closed:
                    raise EOFError("device end closed")
                self._changed.clear()
                await self._changed.wait()

    def close(self) -> None:
        if not self.closed:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self.closed = True


Handler = Callable[[bytes], bytes | None]


@asynccontextmanager
async def instrument(path: Path, handler: Handler, log: list[bytes]) -> AsyncIterator[DeviceEnd]:
    """A simulated line instrument: each request line gets `handler(line)` back (if not None)."""
    end = DeviceEnd(path)

    async def serve() -> None:
        while True:
            line = await end.read_until(b"\n", timeout_s=3600)
            log.append(line)
            reply = handler(line.rstrip(b"\r\n"))
            if reply is not None:
                await end.write(reply)

    task = asyncio.create_task(serve(), name="test.instrument")
    try:
        yield end
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, EOFError):
            await task
        end.close()
