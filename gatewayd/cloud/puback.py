"""PUBACK reason codes, CONNACK limits and the broker's socket: the one seam under aiomqtt.

aiomqtt 2.x returns from `publish()` on any PUBACK, even one whose reason code refuses the
message (MQTT 5, e.g. 0x87 not authorized), and does not expose the broker's Receive Maximum
or Maximum Packet Size. The outbox may delete a record only after a *successful* PUBACK, so
this module wraps the underlying paho client's `on_publish` and `on_connect` callbacks and
publishes through paho directly, resolving one future per message with its reason code. It
also hands paho a socket that reads in large chunks and writes a burst of packets at once
(`BrokerSocket`). Nothing else in gatewayd reaches under aiomqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gatewayd.errors import UplinkUnavailable

__all__ = ["BrokerSocket", "ConnAck", "PublishSeam", "reason_name"]

DEFAULT_RECEIVE_MAXIMUM = 65535


@dataclass(frozen=True, slots=True)
class ConnAck:
    """Limits the broker announced in CONNACK (MQTT 5; defaults for 3.1.1)."""

    receive_maximum: int = DEFAULT_RECEIVE_MAXIMUM
    maximum_packet_size: int | None = None


class PublishSeam:
    """Publishes at QoS 1 and reports each PUBACK's reason code.

    Create it before entering the client's context, so it sees the CONNACK.

    Args:
        client: an aiomqtt client not yet connected.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._paho: paho.Client = client._client  # noqa: SLF001 - this module is the seam
        self._futures: dict[int, asyncio.Future[int]] = {}
        self.connack = ConnAck()
        inner_publish = cast("Callable[..., None] | None", self._paho.on_publish)
        inner_connect = cast("Callable[..., None] | None", self._paho.on_connect)

        def on_publish(
            c: paho.Client, userdata: Any, mid: int, rc: ReasonCode, props: Properties
        ) -> None:
            future = self._futures.pop(mid, None)
            if future is None:  # not published through the seam: aiomqtt's to settle
                if inner_publish is not None:
                    inner_publish(c, userdata, mid, rc, props)
            elif not future.done():
                future.set_result(int(rc.value))

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

        self._paho.on_publish = on_publish
        self._paho.on_connect = on_connect
        self._paho.on_socket_register_write = self._register_write(
            cast("Callable[..., None]", self._paho.on_socket_register_write)
        )
        self._paho.on_socket_open = _wrap_socket(
            cast("Callable[..., None]", self._paho.on_socket_open)
        )
        self._paho.max_inflight_messages_set(0)  # our window is the bound, not paho's 20

    def _register_write(self, deferred: Callable[..., None]) -> Callable[..., None]:
        """The hook paho calls when it has data to send, run at once on the event loop.

        aiomqtt always defers `add_writer` through `call_soon_threadsafe`, because paho may
        call the hook from the thread that connects. On the loop that costs a wake-up of the
        loop per burst of publishes, and when the broker drops the connection in between,
        the deferred call meets a closed socket and logs a traceback. From the loop thread
        the writer is added at once; from another thread aiomqtt's deferred call stays.
        """
        client = self._client

        def write_ready(c: paho.Client) -> None:
            try:
                _write(c, client._loop, write_ready)  # noqa: SLF001 - this module is the seam
            except Exception as exc:  # noqa: BLE001 - a broken pipe: the session is over
                disconnected = client._disconnected  # noqa: SLF001 - this module is the seam
                if not disconnected.done():
                    disconnected.set_exception(exc)

        def register(c: paho.Client, userdata: Any, sock: Any) -> None:
            loop = client._loop  # noqa: SLF001 - this module is the seam
            try:
                here = asyncio.get_running_loop()
            except RuntimeError:
                here = None
            if here is not loop:
                deferred(c, userdata, sock)
                return
            loop.add_writer(sock.fileno(), write_ready, c)

        return register

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet acknowledged."""
        return len(self._futures)

    def publish(
        self, topic: str, payload: bytes, properties: Properties | None = None
    ) -> asyncio.Future[int]:
        """Send at QoS 1; the future gets the PUBACK reason code (0 is success).

        Raises:
            UplinkUnavailable: the client is not connected.
        """
        info = self._paho.publish(topic, payload, qos=1, properties=properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            msg = f"publish to {topic} failed: {paho.error_string(info.rc)}"
            raise UplinkUnavailable(msg)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._futures[info.mid] = future
        return future

    def fail_all(self, reason: str) -> None:
        """The connection is gone: every message still waiting for its PUBACK failed."""
        disconnected = self._client._disconnected  # noqa: SLF001 - this module is the seam
        if disconnected.done() and not disconnected.cancelled():
            disconnected.exception()  # seen: a lost link is weather, not an unhandled error
        futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                future.set_exception(UplinkUnavailable(reason))
                future.exception()  # retrieved here: a lost PUBACK is expected, not an error


class BrokerSocket:
    """The broker's socket as paho sees it: read in large chunks, written in bursts.

    paho reads every packet with at least three `recv` calls (the type byte, each length
    byte, the body) plus one that fails with EAGAIN, and writes every packet with its own
    `send`. At a thousand publishes and PUBACKs a second those system calls are a visible
    part of the uplink's CPU. Here one `recv` takes what the kernel has and paho's small
    reads are served from memory; `pending()` makes the reader callback (aiomqtt's, written
    for TLS sockets that buffer the same way) call paho again while bytes are left. While
    the publish seam runs paho's writer (`gather()` ... `flush()`), paho's sends are
    collected and leave in one `send`.
    """

    __slots__ = ("_buffer", "_gathering", "_sock", "_unsent")

    CHUNK = 65536

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._unsent = bytearray()
        self._gathering = False

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes: from the buffer, else one large read of the socket."""
        buffer = self._buffer
        if not buffer:
            data = self._sock.recv(self.CHUNK)
            if len(data) <= size:
                return bytes(data)
            buffer += data
        out = bytes(buffer[:size])
        del buffer[:size]
        return out

    def pending(self) -> int:
        """Bytes read from the socket and not yet handed to paho (and TLS' own)."""
        inner = getattr(self._sock, "pending", None)
        return len(self._buffer) + (inner() if inner is not None else 0)

    def send(self, data: bytes | bytearray) -> int:
        """Collected while gathering, or behind bytes still unsent; else straight out."""
        if self._gathering or self._unsent:
            self._unsent += data
            return len(data)
        sent: int = self._sock.send(data)
        return sent

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
            except BlockingIOError:
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


def _wrap_socket(inner: Callable[..., None]) -> Callable[..., None]:
    """Wrap paho's socket as it opens; aiomqtt's hook still sees the socket itself."""

    def opened(c: paho.Client, userdata: Any, sock: Any) -> None:
        if c._sock is sock:  # noqa: SLF001 - this module is the seam
            c._sock = BrokerSocket(sock)  # noqa: SLF001
        inner(c, userdata, sock)

    return opened


def reason_name(code: int) -> str:
    """The MQTT 5 name of a PUBACK reason code, e.g. `Not authorized` for 0x87."""
    try:
        return str(ReasonCode(PacketTypes.PUBACK, identifier=code))
    except ValueError:
        return f"reason code {code:#x}"
