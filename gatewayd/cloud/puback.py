"""PUBACK reason codes and CONNACK limits: the one seam under aiomqtt.

aiomqtt 2.x returns from `publish()` on any PUBACK, even one whose reason code refuses the
message (MQTT 5, e.g. 0x87 not authorized), and does not expose the broker's Receive Maximum
or Maximum Packet Size. The outbox may delete a record only after a *successful* PUBACK, so
this module wraps the underlying paho client's `on_publish` and `on_connect` callbacks and
publishes through paho directly, resolving one future per message with its reason code.
Nothing else in gatewayd reaches under aiomqtt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gatewayd.errors import UplinkUnavailable

__all__ = ["ConnAck", "PublishSeam", "reason_name"]

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
            if future is not None and not future.done():
                future.set_result(int(rc.value))
            if inner_publish is not None:
                inner_publish(c, userdata, mid, rc, props)

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
                c.loop_write()
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


def reason_name(code: int) -> str:
    """The MQTT 5 name of a PUBACK reason code, e.g. `Not authorized` for 0x87."""
    try:
        return str(ReasonCode(PacketTypes.PUBACK, identifier=code))
    except ValueError:
        return f"reason code {code:#x}"
