"""Bounds on the API's connections: how many, and how long one may take to send its headers.

aiohttp closes a connection that has no whole request `keepalive_timeout` after it opened or
after its last reply, but it has no cap on connections, and its clock does not start over
when a request's bytes begin to arrive. `ConnectionGuard` wraps each connection's protocol:

- at most `limit` connections are open. A new one beyond it closes the connection that has
  waited longest without a request being handled (idle, or headers still arriving), so a
  flood of idle or half-sent connections cannot lock out a real client; when every open
  connection is busy in a handler, the new one is closed at once.
- a new connection must deliver its first request's headers within `header_timeout_s`.
  Requests after the first are bounded by aiohttp's keep-alive timeout.

The guard knows a request has arrived when aiohttp calls the server's request handler (its
public `request_handler` attribute, wrapped here before any connection is made).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, cast

from aiohttp import web

if TYPE_CHECKING:
    from aiohttp.web_protocol import RequestHandler

__all__ = ["ConnectionGuard"]

log = logging.getLogger(__name__)

_REPORT_EVERY_S = 60.0


class ConnectionGuard:
    """The protocol factory for the API's listening socket.

    Args:
        server: the runner's `web.Server` (its protocol factory), before it accepts anything.
        limit: most connections open at once.
        header_timeout_s: time a new connection has to send its first request's headers.
    """

    def __init__(self, server: web.Server, *, limit: int, header_timeout_s: float) -> None:
        self._server = server
        self._limit = limit
        self._header_timeout_s = header_timeout_s
        self._loop = asyncio.get_running_loop()
        self._open: dict[RequestHandler, _Guarded] = {}
        # Connections with no request in a handler, longest waiting first (dicts keep order).
        self._waiting: dict[_Guarded, None] = {}
        self.closed: Counter[str] = Counter()
        self._unreported: Counter[str] = Counter()
        self._reported_at = self._loop.time() - _REPORT_EVERY_S
        self._report_due: asyncio.TimerHandle | None = None
        handler = server.request_handler

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            guarded = self._open.get(request.protocol)
            if guarded is not None:
                guarded.busy()
            try:
                return await handler(request)
            finally:
                if guarded is not None and guarded.admitted:
                    self._waiting[guarded] = None

        server.request_handler = handle

    @property
    def open_count(self) -> int:
        """Connections open now."""
        return len(self._open)

    def __call__(self) -> asyncio.Protocol:
        """A protocol for one new connection (what `loop.create_server` calls)."""
        return _Guarded(self, self._server())

    def admit(self, guarded: _Guarded) -> bool:
        """Make room for a new connection; False when every open one is busy."""
        if len(self._open) >= self._limit:
            victim = next(iter(self._waiting), None)
            if victim is None:
                self._count("refused at max_connections, all busy")
                return False
            self._count("closed at max_connections, waiting longest")
            victim.close()
        self._open[guarded.inner] = guarded
        self._waiting[guarded] = None
        return True

    def header_timeout(self, guarded: _Guarded) -> asyncio.TimerHandle:
        """The timer closing `guarded` if its first headers are late."""
        return self._loop.call_later(self._header_timeout_s, self._late, guarded)

    def forget(self, guarded: _Guarded) -> None:
        """`guarded` is closed (or closing): it no longer counts."""
        self._open.pop(guarded.inner, None)
        self._waiting.pop(guarded, None)

    def busy(self, guarded: _Guarded) -> None:
        """A request of `guarded` is in a handler: never the one closed to make room."""
        self._waiting.pop(guarded, None)

    def _late(self, guarded: _Guarded) -> None:
        self._count("header_timeout_s passed without a request")
        guarded.close()

    def _count(self, reason: str) -> None:
        """Count a closed connection; the log has one line a minute at most, with the counts."""
        self.closed[reason] += 1
        self._unreported[reason] += 1
        if self._report_due is not None:
            return
        wait = self._reported_at + _REPORT_EVERY_S - self._loop.time()
        if wait <= 0:
            self._report()
        else:
            self._report_due = self._loop.call_later(wait, self._report)

    def _report(self) -> None:
        self._report_due = None
        if self._unreported:
            what = ", ".join(f"{n} {why}" for why, n in sorted(self._unreported.items()))
            log.warning("api: connections closed: %s (max_connections=%d)", what, self._limit)
            self._unreported.clear()
            self._reported_at = self._loop.time()

    def close(self) -> None:
        """The server stops: log what was not yet logged."""
        if self._report_due is not None:
            self._report_due.cancel()
        self._report()


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, the guard's bounds around it."""

    def __init__(self, guard: ConnectionGuard, inner: RequestHandler) -> None:
        self._guard = guard
        self.inner = inner
        self.admitted = False
        self._made = False
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)
        if not self._guard.admit(self):
            self._transport.abort()
            return
        self.admitted = True
        self._timer = self._guard.header_timeout(self)
        self._made = True
        self.inner.connection_made(transport)

    def busy(self) -> None:
        """A request arrived: the header clock stops, and the connection is not evictable."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._guard.busy(self)

    def close(self) -> None:
        """Close now; what was not yet received is dropped."""
        self._guard.forget(self)
        self.admitted = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.admitted:
            self.inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._made:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._made:
            self.inner.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.forget(self)
        self.admitted = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._made:
            self.inner.connection_lost(exc)
