"""QoS 1 publishes, their PUBACKs, CONNACK limits, the broker's socket: the seam under aiomqtt.

aiomqtt 2.x returns from `publish()` on any PUBACK, even one whose reason code refuses the
message (MQTT 5, e.g. 0x87 not authorized), and does not expose the broker's Receive Maximum
or Maximum Packet Size. The outbox may delete a record only after a *successful* PUBACK, so
the seam sends its QoS 1 PUBLISH packets itself (built by `gatewayd/cloud/wire.py`) on the
connection aiomqtt and paho keep, takes their PUBACKs out of the incoming stream before paho
reads it, and resolves one future per message with its reason code. paho allocates the
packet identifiers, so they never clash with its own (SUBSCRIBE), and handles everything
else on the connection. `BrokerSocket`, the socket paho is handed, reads in large chunks and
writes a burst of packets at once. Nothing else in gatewayd reaches under aiomqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gatewayd.cloud.wire import PubackFilter, publish_qos1, topic_field
from gatewayd.errors import UplinkUnavailable

__all__ = ["BrokerSocket", "ConnAck", "PublishSeam", "reason_name"]

DEFAULT_RECEIVE_MAXIMUM = 65535

# Topic fields kept encoded, one per device and message kind; past this many, start over.
_TOPIC_CACHE = 10_000

# A socket that cannot take more now: plain sockets say EAGAIN, TLS ones want a write or read.
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError)


@dataclass(frozen=True, slots=True)
class ConnAck:
    """Limits the broker announced in CONNACK (MQTT 5; defaults for 3.1.1)."""

    receive_maximum: int = DEFAULT_RECEIVE_MAXIMUM
    maximum_packet_size: int | None = None


class PublishSeam:
    """Publishes at QoS 1 and reports each PUBACK's reason code.

    Create it before entering the client's context, so it sees the socket open and the
    CONNACK.

    Args:
        client: an aiomqtt client not yet connected.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._paho: paho.Client = client._client  # noqa: SLF001 - this module is the seam
        self._loop: asyncio.AbstractEventLoop = client._loop  # noqa: SLF001
        self._futures: dict[int, asyncio.Future[int]] = {}
        self._topics: dict[str, bytes] = {}
        self._flush_due = False
        # MQTT 5 PUBLISH packets carry a property field even when it is empty; 3.1.1 ones none.
        self._no_properties = b"\x00" if self._paho.protocol == paho.MQTTv5 else None
        self.connack = ConnAck()
        inner_connect = cast("Callable[..., None] | None", self._paho.on_connect)

        def on_connect(
            c: paho.Client,
            userdata: Any,
            flags: paho.ConnectFlags,
            rc: ReasonCode,
            props: Properties | None = None,
        ) -> None:
            if props is not None:
                self.connack = ConnAck(
                    receive_maximum=int(getattr(props, "ReceiveMaximum", DEFAULT_RECEIVE_MAXIMUM)),
                    maximum_packet_size=getattr(props, "MaximumPacketSize", None),
                )
            if inner_connect is not None:
                inner_connect(c, userdata, flags, rc, props)

        self._paho.on_connect = on_connect
        self._paho.on_socket_register_write = self._register_write(
            cast("Callable[..., None]", self._paho.on_socket_register_write)
        )
        self._paho.on_socket_open = self._wrap_socket(
            cast("Callable[..., None]", self._paho.on_socket_open)
        )

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet acknowledged."""
        return len(self._futures)

    def publish(
        self, topic: str, payload: bytes, properties: Properties | None = None
    ) -> asyncio.Future[int]:
        """Send at QoS 1; the future gets the PUBACK reason code (0 is success).

        The packet leaves with the others of this turn of the event loop, in one write.

        Raises:
            UplinkUnavailable: the client is not connected.
            ValueError: `topic` is not a topic name (a bug: the dialect builds topics).
        """
        client = self._paho
        sock = client._sock  # noqa: SLF001 - this module is the seam
        if not isinstance(sock, BrokerSocket) or not client.is_connected():
            msg = f"publish to {topic} failed: not connected"
            raise UplinkUnavailable(msg)
        field = self._topics.get(topic)
        if field is None:
            if len(self._topics) >= _TOPIC_CACHE:
                self._topics.clear()
            field = self._topics[topic] = topic_field(topic)
        futures = self._futures
        mid = client._mid_generate()  # noqa: SLF001
        while mid in futures:  # still unacknowledged after 65,535 others
            mid = client._mid_generate()  # noqa: SLF001
        if properties is not None:
            props: bytes | None = properties.pack()  # type: ignore[no-untyped-call]
        else:
            props = self._no_properties
        sock.queue(publish_qos1(field, mid, props, payload))
        future: asyncio.Future[int] = self._loop.create_future()
        futures[mid] = future
        self._flush_soon()
        return future

    def fail_all(self, reason: str) -> None:
        """The connection is gone: every message still waiting for its PUBACK failed."""
        futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                future.set_exception(UplinkUnavailable(reason))
                future.exception()  # retrieved here: a lost PUBACK is expected, not an error

    def _settle(self, mid: int, code: int) -> bool:
        """A PUBACK arrived: ours (the future gets its code), or paho's to handle."""
        future = self._futures.pop(mid, None)
        if future is None:
            return False
        if not future.done():
            future.set_result(code)
        return True

    def _flush_soon(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _stalled(self) -> None:
        """The socket kept part of a send back; get the rest out when it can take it."""
        self._loop.call_soon_threadsafe(self._flush_soon)

    def _flush(self) -> None:
        self._flush_due = False
        client = self._paho
        sock = client._sock  # noqa: SLF001 - this module is the seam
        if not isinstance(sock, BrokerSocket):
            return  # closed meanwhile; `fail_all` settles the futures
        try:
            done = sock.flush()
        except OSError as exc:
            self._broken(exc)
            return
        if not done:
            self._loop.add_writer(sock.fileno(), self._write_ready, client)

    def _write_ready(self, c: paho.Client) -> None:
        """The socket can take more: paho's queued packets and ours go out as one burst."""
        try:
            _write(c, self._loop, self._write_ready)
        except Exception as exc:  # noqa: BLE001 - a broken pipe: the session is over
            self._broken(exc)

    def _broken(self, exc: Exception) -> None:
        disconnected = self._client._disconnected  # noqa: SLF001 - this module is the seam
        if not disconnected.done():
            disconnected.set_exception(exc)

    def _register_write(self, deferred: Callable[..., None]) -> Callable[..., None]:
        """The hook paho calls when it has data to send, run at once on the event loop.

        aiomqtt always defers `add_writer` through `call_soon_threadsafe`, because paho may
        call the hook from the thread that connects. On the loop that costs a wake-up of the
        loop per burst of packets, and when the broker drops the connection in between, the
        deferred call meets a closed socket and logs a traceback. From the loop thread the
        writer is added at once; from another thread aiomqtt's deferred call stays.
        """
        loop = self._loop

        def register(c: paho.Client, userdata: Any, sock: Any) -> None:
            try:
                here = asyncio.get_running_loop()
            except RuntimeError:
                here = None
            if here is not loop:
                deferred(c, userdata, sock)
                return
            loop.add_writer(sock.fileno(), self._write_ready, c)

        return register

    def _wrap_socket(self, inner: Callable[..., None]) -> Callable[..., None]:
        """Wrap paho's socket as it opens; aiomqtt's hook still sees the socket itself."""

        def opened(c: paho.Client, userdata: Any, sock: Any) -> None:
            if c._sock is sock:  # noqa: SLF001 - this module is the seam
                c._sock = BrokerSocket(sock, self._settle, self._stalled)  # noqa: SLF001
            inner(c, userdata, sock)

        return opened


class BrokerSocket:
    """The broker's socket as paho sees it: read in large chunks, written in bursts.

    paho reads every packet with at least three `recv` calls (the type byte, each length
    byte, the body) plus one that fails with EAGAIN, and writes every packet with its own
    `send`. Here one `recv` takes what the kernel has; the PUBACKs that `settle` claims are
    taken out of it (see `wire.PubackFilter`), the rest is served to paho's small reads from
    memory, and `pending()` makes the reader callback (aiomqtt's, written for TLS sockets that
    buffer the same way) call paho again while bytes are left.

    Every byte to send, paho's and the seam's own packets (`queue()`), goes through one
    queue, so packets never interleave: a send never takes part of a packet. While the seam
    runs paho's writer (`gather()` ... `flush()`), paho's sends are collected and leave in
    one `send` with the seam's.

    Args:
        sock: the connected socket (plain or TLS).
        settle: claims a PUBACK by (packet identifier, reason code); None passes all on.
        stalled: called when a send outside a burst left bytes behind, to flush them later.
    """

    __slots__ = ("_buffer", "_filter", "_gathering", "_sock", "_stalled", "_unsent")

    CHUNK = 65536

    def __init__(
        self,
        sock: Any,
        settle: Callable[[int, int], bool] | None = None,
        stalled: Callable[[], None] | None = None,
    ) -> None:
        self._sock = sock
        self._filter = PubackFilter(settle) if settle is not None else None
        self._stalled = stalled
        self._buffer = bytearray()
        self._unsent = bytearray()
        self._gathering = False

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes: from the buffer, else one large read of the socket.

        Raises:
            BlockingIOError: nothing for paho now (also when all that came were PUBACKs
                of the seam's, or the start of a packet).
            wire.MalformedPacket: the broker's bytes are not MQTT.
        """
        buffer = self._buffer
        if not buffer:
            data: bytes = self._sock.recv(self.CHUNK)
            if not data:
                return data
            if self._filter is not None:
                data = self._filter.feed(data)
                if not data:
                    raise BlockingIOError
            if len(data) <= size:
                return data
            buffer += data
        out = bytes(buffer[:size])
        del buffer[:size]
        return out

    def pending(self) -> int:
        """Bytes read from the socket and not yet handed to paho (and TLS' own)."""
        inner = getattr(self._sock, "pending", None)
        return len(self._buffer) + (inner() if inner is not None else 0)

    def send(self, data: bytes | bytearray) -> int:
        """Takes all of `data`: collected while gathering or behind bytes still unsent."""
        if self._gathering or self._unsent:
            self._unsent += data
            return len(data)
        try:
            sent: int = self._sock.send(data)
        except _WOULD_BLOCK:
            sent = 0
        if sent < len(data):
            self._unsent += data[sent:]
            if self._stalled is not None:
                self._stalled()
        return len(data)

    def queue(self, packet: bytes) -> None:
        """Queue a packet of the seam's own; it leaves at the next `flush()`."""
        self._unsent += packet

    def gather(self) -> None:
        """Collect paho's sends until `flush()`."""
        self._gathering = True

    def flush(self) -> bool:
        """Send what was collected; False while part of it waits for the socket.

        Raises:
            OSError: the connection is broken.
        """
        self._gathering = False
        unsent = self._unsent
        while unsent:
            try:
                sent = self._sock.send(unsent)
            except _WOULD_BLOCK:
                return False
            del unsent[:sent]
        return True

    def close(self) -> None:
        """Send what is collected (paho closes right after queuing DISCONNECT), then close."""
        with contextlib.suppress(OSError):
            self.flush()
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _write(
    c: paho.Client, loop: asyncio.AbstractEventLoop, again: Callable[[paho.Client], None]
) -> None:
    """Let paho write what it has queued, as one burst when its socket is ours."""
    sock = c._sock  # noqa: SLF001 - this module is the seam
    if not isinstance(sock, BrokerSocket):
        c.loop_write()
        return
    if not sock.flush():
        return  # the last burst is still going out; the writer stays
    sock.gather()
    try:
        c.loop_write()
    finally:
        done = sock.flush()
    if not done:  # the rest goes when the socket is writable again
        loop.add_writer(sock.fileno(), again, c)
    elif not c.want_write():  # paho is done with the writer; so are we
        loop.remove_writer(sock.fileno())


def reason_name(code: int) -> str:
    """The MQTT 5 name of a PUBACK reason code, e.g. `Not authorized` for 0x87."""
    try:
        return str(ReasonCode(PacketTypes.PUBACK, identifier=code))
    except ValueError:
        return f"reason code {code:#x}"
