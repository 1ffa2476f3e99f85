"""A session on one open serial port: polled requests, unsolicited streams, commands.

Every frame cut from the byte stream is dispatched at once, inside the port's read callback:
first to the request waiting for a reply (if the frame decodes as that reply), otherwise to
the devices watching their streams. A frame nobody takes is counted by why (bad checksum,
undecodable, unsolicited) and dropped, so noise on the line never blocks a later frame.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Generic, TypeVar

from drivers.serial.config import SerialConnection, SerialDevice, SerialPoint
from drivers.serial.framing import Framer, FramerStats, make_framer
from drivers.serial.parsers import ChecksumError, FrameError, lookup, parse
from drivers.serial.templates import render
from drivers.serial.transport import PortFactory, SerialLink, default_port_factory
from gatewayd.errors import ConnectionLost, DeviceUnavailable, WriteRejected
from gatewayd.model import Sample, Value

__all__ = ["SerialCounters", "SerialSession"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_STREAM_QUEUE = 256
_Values = dict[str, Value]


@dataclass(slots=True)
class SerialCounters:
    """What happened to the frames on one port, across reconnects.

    Attributes:
        frames: frames cut from the byte stream.
        replies: frames taken as replies to requests or commands.
        streamed: frames delivered to watching devices.
        bad_checksum: frames dropped for a wrong or missing checksum.
        undecodable: frames dropped because no device's parser could decode them.
        unsolicited: well-formed frames nobody was waiting for.
        timeouts: requests that got no reply in time (each try counts).
        overflow: stream frames dropped because a watcher fell behind.
        framing: bytes and frames the framer discarded while resynchronising.
    """

    frames: int = 0
    replies: int = 0
    streamed: int = 0
    bad_checksum: int = 0
    undecodable: int = 0
    unsolicited: int = 0
    timeouts: int = 0
    overflow: int = 0
    framing: FramerStats = field(default_factory=FramerStats)

    def snapshot(self) -> dict[str, int]:
        """All counters as flat names (`framing.garbage_bytes`), for diagnostics."""
        flat = {k: v for k, v in asdict(self).items() if isinstance(v, int)}
        flat.update({f"framing.{k}": v for k, v in asdict(self.framing).items()})
        return flat


@dataclass(slots=True)
class _Waiter(Generic[_T]):
    accept: Callable[[bytes], _T]
    future: asyncio.Future[_T]


class _Watcher:
    """One device's subscription to the stream."""

    def __init__(self, device: SerialDevice, counters: SerialCounters) -> None:
        self.device = device
        self.queue: asyncio.Queue[tuple[datetime, _Values] | None] = asyncio.Queue(_STREAM_QUEUE)
        self._counters = counters

    def offer(self, frame: bytes, at: datetime) -> bool:
        """Queue the frame's values if it is this device's; raise FrameError if undecodable."""
        if self.device.match is not None and not re.search(self.device.match, _text(frame)):
            return False
        self._put((at, parse(self.device.parser, frame)))
        return True

    def end(self) -> None:
        self._put(None)

    def _put(self, item: tuple[datetime, _Values] | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self._counters.overflow += 1
        self.queue.put_nowait(item)


class SerialSession:
    """The open port; `read`, `write` and `watch` for the runner.

    Create with `await SerialSession.open(...)` and `close()` it when done.

    Args:
        config: the connection.
        framer: cuts the stream and wraps sent payloads.
        counters: where frame outcomes are counted (owned by the driver).
    """

    def __init__(self, config: SerialConnection, framer: Framer, counters: SerialCounters) -> None:
        self._config = config
        self._framer = framer
        self.counters = counters
        self._link: SerialLink | None = None
        self._lost: str | None = None
        self._waiter: _Waiter[Any] | None = None
        self._watchers: set[_Watcher] = set()
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        config: SerialConnection,
        counters: SerialCounters,
        *,
        port_factory: PortFactory = default_port_factory,
    ) -> SerialSession:
        """Open the port and start dispatching what arrives.

        Raises:
            ConnectionLost: the port cannot be opened.
            DeviceUnavailable: the port refuses a setting.
        """
        session = cls(config, make_framer(config.framing, counters.framing), counters)
        session._link = await SerialLink.open(config, session, port_factory=port_factory)
        return session

    async def close(self) -> None:
        """Release the port."""
        if self._link is not None:
            await self._link.close()

    # Receiver: called from the port's read callback.

    def data(self, chunk: bytes) -> None:
        """Cut the chunk into frames and hand each to whoever wants it."""
        at = datetime.now(UTC)
        for frame in self._framer.feed(chunk):
            self._dispatch(frame, at)

    def lost(self, reason: str) -> None:
        """The port went away: fail the pending request and end every stream."""
        if self._lost is not None:
            return
        self._lost = reason
        waiter = self._waiter
        if waiter is not None and not waiter.future.done():
            waiter.future.set_exception(self._gone())
        for watcher in self._watchers:
            watcher.end()

    # The driver contract.

    async def read(self, device: SerialDevice, points: Sequence[SerialPoint]) -> list[Sample]:
        """Send the device's request(s) and take the points' fields from the replies.

        Points sharing one rendered request share one exchange.

        Raises:
            DeviceUnavailable: no decodable reply after all retries.
            ConnectionLost: the port is gone.
        """
        groups: dict[bytes, list[SerialPoint]] = {}
        for point in points:
            template = point.request or device.request
            if template is None:
                continue  # push points have no request; the runner does not poll them
            payload = _render(device, template, point.id)
            groups.setdefault(payload, []).append(point)
        samples: list[Sample] = []
        decode = partial(self._as_reply, device)
        for payload, group in groups.items():
            values = await self._exchange(device, payload, decode, device.retries)
            at = datetime.now(UTC)
            for point in group:
                value = lookup(values, point.field or point.id)
                if value is None:
                    log.debug("%s/%s: reply has no field %s", device.id, point.id, point.field)
                    continue
                samples.append(Sample(point=point.id, value=value, at=at))
        return samples

    async def write(self, device: SerialDevice, point: SerialPoint, value: Value) -> None:
        """Send the point's command; with `write_ack`, wait for a reply that matches it.

        A command is sent once (no retries): it may not be safe to repeat.

        Raises:
            WriteRejected: no command configured, the value does not fit the template, or
                the reply does not match `write_ack`.
            DeviceUnavailable: no reply in time.
            ConnectionLost: the port is gone.
        """
        if point.write is None:
            msg = f"{device.id}/{point.id}: no write command configured"
            raise WriteRejected(msg)
        try:
            payload = render(point.write, address=device.address, point=point.id, value=value)
        except ValueError as exc:
            msg = f"{device.id}/{point.id}: {exc}"
            raise WriteRejected(msg) from exc
        if point.write_ack is None:
            async with self._lock:
                await self._send(payload)
            return

        def any_reply(frame: bytes) -> bytes:
            if device.reply_match is not None and not re.search(device.reply_match, _text(frame)):
                raise FrameError("not a reply")
            return frame

        reply = await self._exchange(device, payload, any_reply, retries=0)
        if re.search(point.write_ack, _text(reply)) is None:
            msg = f"{device.id}/{point.id}: device replied {_text(reply)[:80]!r}"
            raise WriteRejected(msg)

    async def watch(
        self, device: SerialDevice, points: Sequence[SerialPoint]
    ) -> AsyncIterator[Sample]:
        """Yield the points' fields from every frame of the device's stream.

        Raises:
            DeviceUnavailable: no frame within `stream_timeout_s`.
            ConnectionLost: the port is gone.
        """
        self._check_open()
        watcher = _Watcher(device, self.counters)
        self._watchers.add(watcher)
        try:
            while True:
                try:
                    async with asyncio.timeout(device.stream_timeout_s):
                        item = await watcher.queue.get()
                except TimeoutError:
                    msg = f"{device.id}: no frame for {device.stream_timeout_s} s"
                    raise DeviceUnavailable(msg) from None
                if item is None:
                    raise self._gone()
                at, values = item
                for point in points:
                    value = lookup(values, point.field or point.id)
                    if value is not None:
                        yield Sample(point=point.id, value=value, at=at)
        finally:
            self._watchers.discard(watcher)

    # Internals.

    async def _exchange(
        self,
        device: SerialDevice,
        payload: bytes,
        accept: Callable[[bytes], _T],
        retries: int,
    ) -> _T:
        async with self._lock:
            for _ in range(retries + 1):
                future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
                waiter = _Waiter(accept, future)
                self._waiter = waiter
                try:
                    await self._send(payload)
                    async with asyncio.timeout(device.timeout_s):
                        return await future
                except TimeoutError:
                    self.counters.timeouts += 1
                finally:
                    self._waiter = None
                    future.cancel()
        msg = f"{device.id}: no reply to {payload[:40]!r} within {device.timeout_s} s"
        if retries:
            msg += f" ({retries + 1} tries)"
        raise DeviceUnavailable(msg)

    async def _send(self, payload: bytes) -> None:
        self._check_open()
        assert self._link is not None
        await self._link.send(self._framer.encode(payload), self._config.write_timeout_s)

    def _as_reply(self, device: SerialDevice, frame: bytes) -> _Values:
        if device.reply_match is not None and not re.search(device.reply_match, _text(frame)):
            raise FrameError("not a reply")
        return parse(device.parser, frame)

    def _dispatch(self, frame: bytes, at: datetime) -> None:
        counters = self.counters
        counters.frames += 1
        errors: list[FrameError] = []
        waiter = self._waiter
        if waiter is not None and not waiter.future.done():
            try:
                result = waiter.accept(frame)
            except FrameError as exc:
                errors.append(exc)
            else:
                waiter.future.set_result(result)
                counters.replies += 1
                return
        delivered = False
        for watcher in self._watchers:
            try:
                delivered = watcher.offer(frame, at) or delivered
            except FrameError as exc:
                errors.append(exc)
        if delivered:
            counters.streamed += 1
        elif any(isinstance(e, ChecksumError) for e in errors):
            counters.bad_checksum += 1
            log.debug("%s: bad checksum: %s", self._config.port, errors[0])
        elif errors:
            counters.undecodable += 1
        else:
            counters.unsolicited += 1

    def _check_open(self) -> None:
        if self._lost is not None:
            raise self._gone()

    def _gone(self) -> ConnectionLost:
        return ConnectionLost(f"{self._config.port}: {self._lost}")


def _render(device: SerialDevice, template: str, point_id: str) -> bytes:
    return render(template, address=device.address, point=point_id)


def _text(frame: bytes) -> str:
    return frame.decode("latin-1")
