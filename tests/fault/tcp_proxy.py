"""A TCP proxy between the daemon and the broker that can stall, delay, drop and cut the link.

It runs in the test's event loop. Each accepted connection is a pair of sockets (client side,
upstream side) and two pumps, one per direction:

- stall: the pumps stop reading and writing; both sockets stay open, so the peers see a
  silent link (TCP flow control fills their buffers) until `resume()`;
- delay: every chunk is forwarded `delay_s` after it was read, in order;
- drop: both sockets of every open connection are aborted (RST) mid-stream;
- cut: nothing listens on the port (new connections are refused) until `restore()`;
- drop after answer: the next connections are aborted when the client sends its first
  packet after the broker's answer (the CONNACK): the SUBSCRIBE is never answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

__all__ = ["Proxy"]

CHUNK = 65536


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    accepted_at: float
    answered_at: float | None = None  # first bytes from the broker forwarded (CONNACK)
    doomed: bool = False  # aborted at the client's next bytes
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class Proxy:
    """Forwards `127.0.0.1:<port>` to `upstream_host:upstream_port`.

    Args:
        upstream_port: the broker's port.
        upstream_host: the broker's address.
        host: where the proxy listens.
    """

    def __init__(
        self, upstream_port: int, upstream_host: str = "127.0.0.1", host: str = "127.0.0.1"
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.delay_s = 0.0
        self.drop_after_answer = 0  # connections to abort right after the broker's first bytes
        self.sessions: list[_Pair] = []  # every connection accepted, oldest first
        self.forwarded = 0  # bytes forwarded, both directions
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()

    # -- faults -----------------------------------------------------------------------------
    def stall(self) -> None:
        """Stop forwarding; keep every socket open."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def drop(self) -> int:
        """Abort every open connection (both sockets); returns how many."""
        pairs = list(self._pairs)
        for pair in pairs:
            pair.abort()
        self._pairs.clear()
        return len(pairs)

    async def cut(self) -> None:
        """Stop listening (new connections are refused) and drop the open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.drop()

    async def restore(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            await self._listen()

    # -- running ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Proxy]:
        await self._listen()
        try:
            yield self
        finally:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            pairs = list(self._pairs)
            self.drop()
            tasks = [t for pair in pairs for t in pair.tasks]
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = _Pair(writer, up_writer, time.monotonic())
        self._pairs.add(pair)
        self.sessions.append(pair)
        pair.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, pair), name="proxy.up"),
            asyncio.create_task(self._pump(up_reader, writer, pair, down=True), name="proxy.down"),
        ]

    @property
    def accepted(self) -> int:
        return len(self.sessions)

    async def answered_after(self, since: float, timeout_s: float) -> float:
        """Monotonic time the broker first answered on a connection accepted after `since`."""
        async with asyncio.timeout(timeout_s):
            while True:
                for pair in self.sessions:
                    if pair.accepted_at > since and pair.answered_at is not None:
                        return pair.answered_at
                await asyncio.sleep(0.005)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: _Pair,
        *,
        down: bool = False,
    ) -> None:
        """Forward one direction; either side closing closes the pair."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            while True:
                await self._flowing.wait()
                data = await reader.read(CHUNK)
                await queue.put((time.monotonic() + self.delay_s, data))
                if not data:
                    return

        async def write() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if not data:
                    return
                if pair.doomed and not down:
                    pair.abort()  # the client's first packet after the CONNACK goes nowhere
                    return
                writer.write(data)
                await writer.drain()
                self.forwarded += len(data)
                if down and pair.answered_at is None:
                    pair.answered_at = time.monotonic()
                    if self.drop_after_answer > 0:
                        self.drop_after_answer -= 1
                        pair.doomed = True

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(read())
                tg.create_task(write())
        except* (OSError, ConnectionError):
            pass
        finally:
            self._pairs.discard(pair)
            pair.abort()
