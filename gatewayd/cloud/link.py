"""The MQTT session to the cloud: connect, subscribe, resync, then drain and listen.

One `Uplink` runs under `supervise()`: a broker that is down, refuses the connection or drops
it is weather (`UplinkUnavailable`, retried with capped jittered backoff); the outbox keeps
everything meanwhile, so the daemon boots and runs offline. On every connect, in order:
subscribe to every downlink topic, report every child's status, ask the cloud to register
children it does not know yet (retried until it answers), ask for each device's snapshot
(`get`), and only then start draining the outbox. The children are the registry's devices
(`RegistryChildren`): one registered or deleted through the local API while connected is
subscribed and added, or unsubscribed and deleted, at once beside the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gatewayd.backoff import Backoff
from gatewayd.cloud.children import Child, ChildrenSource, ChildStatus, StatusBoard
from gatewayd.cloud.dialects import native
from gatewayd.cloud.downlinks import (
    ADDED_BY_CLOUD,
    BuiltinCommands,
    CommandExecutor,
    CommandQueue,
    DesiredConfig,
    Downlinks,
)
from gatewayd.cloud.firmware import Firmware
from gatewayd.cloud.puback import PublishSeam
from gatewayd.cloud.pump import Pump
from gatewayd.cloud.ratelimit import TokenBucket
from gatewayd.config_load import read_secret
from gatewayd.errors import UplinkUnavailable
from gatewayd.health import Component
from gatewayd.settings import CloudConfig
from gatewayd.store.access import Trouble, classify
from gatewayd.store.cloud_state import CloudState
from gatewayd.store.outbox import Outbox, Record
from gatewayd.supervise import CancelWatch, keep_cancellation, supervise

__all__ = ["LinkTiming", "PackedOnce", "Uplink", "should_fall_back"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# The largest packet the broker may send: the largest downlink the decoder takes, plus room for
# the topic and properties.
MAX_DOWNLINK_PACKET_BYTES = native.MAX_PAYLOAD_BYTES + 64 * 1024

# On the way out (the task cancelled), how long the DISCONNECT to the broker may take: a broker
# that stopped reading must not hold up a stop (aiomqtt waits `connect_timeout_s` for it).
GOODBYE_S = 1.0

# CONNACK answers that mean "this broker does not speak MQTT 5": 3.1.1's "unacceptable
# protocol version" (1) and MQTT 5's "unsupported protocol version" (0x84).
_OLD_BROKER = {1, 0x84}


@dataclass(frozen=True, slots=True)
class LinkTiming:
    """Time bounds of the link.

    Args:
        answer_timeout_s: bound on one PUBACK of a resync message.
        children_retry_s: period of re-asking the cloud to register children it has not
            answered about.
        healthy_after_s: a session that lasted this long resets the reconnect backoff.
    """

    answer_timeout_s: float = 10.0
    children_retry_s: float = 30.0
    healthy_after_s: float = 30.0


def should_fall_back(exc: aiomqtt.MqttError) -> bool:
    """Whether a failed MQTT 5 connect should be retried with 3.1.1."""
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return False
    rc = exc.rc
    value = getattr(rc, "value", rc)
    return isinstance(value, int) and value in _OLD_BROKER


class Uplink:
    """The gateway's one connection to the cloud.

    Args:
        config: the `cloud` section (host must be set).
        gateway_id: the gateway's device id.
        outbox: what to send.
        state: where downlinks are stored.
        children: the gateway's children.
        board: children's latest status.
        component: health of the link.
        executor: runs commands: the daemon's command engine; by default only `ping`.
        desired: applies accepted desired config to the devices' desired state.
        timing: time bounds.
        firmware: devices whose firmware version is known, sent on `update` at every connect.
    """

    def __init__(  # noqa: PLR0913, PLR0917 - every argument is an injected collaborator
        self,
        config: CloudConfig,
        gateway_id: str,
        outbox: Outbox,
        state: CloudState,
        children: ChildrenSource,
        board: StatusBoard,
        component: Component,
        *,
        executor: CommandExecutor | CommandQueue | None = None,
        desired: DesiredConfig | None = None,
        timing: LinkTiming | None = None,
        firmware: Sequence[Firmware] = (),
    ) -> None:
        if config.host is None:
            msg = "cloud.host is not set"
            raise ValueError(msg)
        self._config = config
        self._host = config.host
        self._gateway_id = gateway_id
        self._outbox = outbox
        self._state = state
        self._children = children
        self._board = board
        self._component = component
        self._timing = timing or LinkTiming()
        self._firmware = tuple(firmware)
        self._password = read_secret(config.password_file) if config.password_file else None
        access_key = read_secret(config.access_key_file) if config.access_key_file else None
        if access_key and not config.tls.enabled:
            log.warning("cloud.access_key_file is ignored without TLS: it would travel in clear")
            access_key = None
        self._access_key = access_key
        self._mqtt5 = config.mqtt_version != "3.1.1"
        self._downlinks = Downlinks(
            gateway_id, state, outbox, children, executor or BuiltinCommands(), desired
        )
        self._properties: dict[str, Properties] = {}
        self._subscribed: set[str] = set()  # children whose downlinks this session subscribed
        self._readd: set[str] = set()  # children to ask the cloud for again (changed)
        self.pump = Pump(outbox, self._encode, TokenBucket(config.rate_limit_msg_s))
        self.connects = 0  # sessions that got as far as subscribing
        self.downlinks = self._downlinks.counts  # by result: ok, invalid, failed

    async def run(self) -> None:
        """Stay connected until cancelled, reconnecting with backoff."""
        backoff = Backoff(
            initial_s=self._config.reconnect_initial_s,
            max_s=max(self._config.reconnect_max_s, self._config.reconnect_initial_s),
        )
        await supervise(
            self._session,
            self._component,
            backoff,
            healthy_after_s=self._timing.healthy_after_s,
        )

    async def _session(self) -> None:
        try:
            await self._session_once()
        except _OldBroker:
            log.warning("uplink: the broker does not speak MQTT 5: falling back to 3.1.1")
            self._mqtt5 = False
            self._properties.clear()
            await self._session_once()

    async def _session_once(self) -> None:
        client = self._client()
        seam = PublishSeam(client)
        connected = False
        try:
            async with _connection(client):
                connected = True
                await self._connected(client, seam)
        except* (aiomqtt.MqttError, UplinkUnavailable, TimeoutError) as group:
            first = _first(group)
            if (
                not connected
                and self._mqtt5
                and self._config.mqtt_version == "auto"
                and isinstance(first, aiomqtt.MqttError)
                and should_fall_back(first)
            ):
                raise _OldBroker from None
            if isinstance(first, UplinkUnavailable):
                raise first from None
            text = "no answer in time" if isinstance(first, TimeoutError) else str(first)
            raise UplinkUnavailable(f"broker {self._host}: {text}") from first
        finally:
            seam.fail_all("connection closed")

    def _client(self) -> aiomqtt.Client:
        cfg = self._config
        protocol = aiomqtt.ProtocolVersion.V5 if self._mqtt5 else aiomqtt.ProtocolVersion.V311
        return aiomqtt.Client(
            self._host,
            cfg.effective_port,
            identifier=cfg.client_id or self._gateway_id,
            username=cfg.username,
            password=self._password,
            protocol=protocol,
            keepalive=cfg.keepalive_s,
            timeout=cfg.connect_timeout_s,
            tls_context=self._tls_context(),
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            properties=_connect_properties() if self._mqtt5 else None,
        )

    def _tls_context(self) -> ssl.SSLContext | None:
        tls = self._config.tls
        if not tls.enabled:
            return None
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        return context

    async def _connected(self, client: aiomqtt.Client, seam: PublishSeam) -> None:
        # What changed while offline is covered by this connect's resync; children changed in
        # place (a new name) are asked for again, the cloud's `children/add` being an upsert.
        self._readd.update(d for d, c in self._children.take_changes().items() if c is not None)
        devices = [c.device_id for c in self._children.children()]
        self._subscribed = set(devices)
        topics = native.subscriptions(self._gateway_id, devices)
        with keep_cancellation():  # the SUBACK is awaited with wait_for too (see `_connection`)
            await _unless_lost(
                client,
                client.subscribe([(t, 1) for t in topics], timeout=self._timing.answer_timeout_s),
                "the subscribe",
            )
        self.connects += 1
        version = "MQTT 5" if self._mqtt5 else "MQTT 3.1.1"
        self._component.up(f"{self._host}:{self._config.effective_port} ({version})")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._listen(client), name="uplink.listen")
            await self._resync(seam)
            tg.create_task(self.pump.run(seam), name="uplink.drain")
            tg.create_task(self._children_loop(client, seam), name="uplink.children")

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            data = payload if isinstance(payload, bytes) else str(payload).encode()
            await self._downlinks.handle(message.topic.value, data)

    async def _resync(self, seam: PublishSeam) -> None:
        statuses = self._board.snapshot()
        if statuses:
            await self._send(
                seam, self._gateway_id, "children/status", native.children_status(statuses)
            )
        await self._register_children(seam)
        for known in self._firmware:
            await self._send(
                seam, known.device_id, "update", native.update(known.version, known.name)
            )
        for device_id in [self._gateway_id, *(c.device_id for c in self._children.children())]:
            await self._send(seam, device_id, "get", b"{}")

    async def _children_loop(self, client: aiomqtt.Client, seam: PublishSeam) -> None:
        loop = asyncio.get_running_loop()
        next_retry = loop.time() + self._timing.children_retry_s
        while True:
            timeout = max(0.0, next_retry - loop.time())
            if not await _either(self._board.changed, self._children.changed, timeout):
                next_retry = loop.time() + self._timing.children_retry_s
                await self._register_children(seam)
                continue
            changes = self._board.take_changes()
            if changes:
                await self._send_changes(seam, changes)
            devices = self._children.take_changes()
            if devices:
                try:
                    await self._children_changed(client, seam, devices)
                except BaseException:
                    self._children.restore(devices)
                    raise

    async def _children_changed(
        self, client: aiomqtt.Client, seam: PublishSeam, changes: Mapping[str, Child | None]
    ) -> None:
        """Children registered, changed or deleted while connected: told to the cloud at once.

        A new child's downlink topics are subscribed before the cloud hears of it, so nothing
        the cloud sends it once it knows is lost; then `children/add`, then its `get`. A
        removed child's topics are dropped, then `children/delete`.
        """
        fresh = [d for d, c in changes.items() if c is not None and d not in self._subscribed]
        gone = [d for d, c in changes.items() if c is None and d in self._subscribed]
        if fresh:
            await self._subscription(client, fresh, subscribe=True)
        if gone:
            await self._subscription(client, gone, subscribe=False)
        self._readd.update(d for d, c in changes.items() if c is not None)
        await self._register_children(seam)
        for device_id in fresh:
            await self._send(seam, device_id, "get", b"{}")

    async def _subscription(
        self, client: aiomqtt.Client, devices: list[str], *, subscribe: bool
    ) -> None:
        topics = [native.topic(d, kind) for d in devices for kind in native.DEVICE_DOWNLINKS]
        timeout = self._timing.answer_timeout_s
        with keep_cancellation():
            if subscribe:
                await _unless_lost(
                    client, client.subscribe([(t, 1) for t in topics], timeout=timeout),
                    "the subscribe",
                )  # fmt: skip
                self._subscribed.update(devices)
            else:
                await _unless_lost(
                    client, client.unsubscribe(topics, timeout=timeout), "the unsubscribe"
                )
                self._subscribed.difference_update(devices)

    async def _send_changes(self, seam: PublishSeam, changes: Mapping[str, ChildStatus]) -> None:
        try:
            await self._send(
                seam, self._gateway_id, "children/status", native.children_status(changes)
            )
        except BaseException:
            self._board.restore(changes)
            raise

    async def _register_children(self, seam: PublishSeam) -> None:
        known = await self._state.children()
        readd, self._readd = self._readd, set()
        unanswered: list[Child] = [
            c
            for c in self._children.children()
            if c.device_id in readd
            or known.get(c.device_id, {}).get("state") not in {"registered", "refused"}
        ]
        for start in range(0, len(unanswered), native.MAX_CHILDREN_PER_ADD):
            chunk = unanswered[start : start + native.MAX_CHILDREN_PER_ADD]
            for child in chunk:
                await self._note_pending(child.device_id)
            await self._send(
                seam, self._gateway_id, "children/add", native.children_add(uuid.uuid4().hex, chunk)
            )
        configured = {c.device_id for c in self._children.children()}
        gone = [
            d
            for d, row in known.items()
            if row["state"] in {"registered", "pending"}
            and d not in configured
            and row["reason"] != ADDED_BY_CLOUD
        ]
        if gone:
            await self._send(
                seam,
                self._gateway_id,
                "children/delete",
                native.children_delete(uuid.uuid4().hex, gone),
            )

    async def _note_pending(self, device_id: str) -> None:
        """Mark a child as asked for; a disk that takes nothing (full) does not stop the ask.

        The mark is bookkeeping: the request goes out regardless, and the cloud's answer (or
        the next retry) settles the child's state once the disk has room again.
        """
        try:
            await self._state.set_child(device_id, "pending")
        except sqlite3.Error as exc:
            if classify(exc) not in {Trouble.DISK, Trouble.LOCKED}:
                raise
            log.warning("uplink: child %s not marked as asked for: %s", device_id, exc)

    async def _send(self, seam: PublishSeam, device_id: str, kind: str, payload: bytes) -> None:
        """Publish a resync message directly (not through the outbox) and wait for its PUBACK."""
        future = seam.publish(native.topic(device_id, kind), payload, self._props(device_id))
        async with asyncio.timeout(self._timing.answer_timeout_s):
            code = await future
        if code >= 0x80:
            log.warning("uplink: %s of %s refused by the broker (%#x)", kind, device_id, code)

    def _encode(self, record: Record) -> tuple[str, bytes, Properties | None]:
        payload = record.payload
        if record.kind == "telemetry":
            payload = native.with_record_id(payload, record.record_id)
        return native.topic(record.device, record.kind), payload, self._props(record.device)

    def _props(self, device_id: str) -> Properties | None:
        if not self._mqtt5:
            return None
        props = self._properties.get(device_id)
        if props is None:
            pairs = [("device_id", device_id)]
            if self._access_key:
                pairs.append(("access_key", self._access_key))
            props = PackedOnce(pairs)
            self._properties[device_id] = props
        return props


class PackedOnce(Properties):
    """PUBLISH properties that never change for a device, packed once.

    paho packs a message's properties on every publish by walking every MQTT 5 property
    name; at 1000 messages/s that walk alone was ~4 % of the daemon's CPU.

    Args:
        pairs: the user properties (name, value).
    """

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.UserProperty = pairs
        packed = super().pack()  # type: ignore[no-untyped-call]
        object.__setattr__(self, "_packed", packed)  # paho guards setattr by name

    def pack(self) -> bytes:
        """The bytes packed at creation."""
        packed: bytes = self.__dict__["_packed"]
        return packed


@contextlib.asynccontextmanager
async def _connection(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Client]:
    """`async with client`, with a cancellation never lost on the way in or held on the way out.

    aiomqtt waits for the CONNACK with `asyncio.wait_for`, which in Python 3.11 returns the
    result instead of raising when the task is cancelled in the loop iteration the CONNACK
    arrives in; the session would then run on in a task that was told to stop, and a daemon
    stopping (or failing to start) waits for it for ever. On the way out of a cancelled
    session the DISCONNECT gets `GOODBYE_S`.
    """
    watch = CancelWatch()
    await client.__aenter__()
    try:
        watch.check()
        yield client
    except asyncio.CancelledError as exc:
        try:
            async with asyncio.timeout(GOODBYE_S):
                await client.__aexit__(type(exc), exc, exc.__traceback__)
        except (TimeoutError, aiomqtt.MqttError):
            log.debug("uplink: no goodbye to the broker on the way out")
        raise
    except BaseException as exc:
        await client.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    else:
        await client.__aexit__(None, None, None)
    finally:
        # The session's own error says why it ended; aiomqtt's "disconnected" future holds the
        # same loss and, left unread, is logged at ERROR as "never retrieved" at collection.
        lost = client._disconnected  # noqa: SLF001
        if lost.done() and not lost.cancelled():
            lost.exception()


def _connect_properties() -> Properties:
    """CONNECT properties: the largest packet the gateway takes (MQTT 5 only).

    A downlink larger than `native.MAX_PAYLOAD_BYTES` is refused by the decoder anyway; told
    in the CONNECT, the broker drops it instead of sending it, so a huge message (mosquitto
    forwards up to 256 MB by default) never reaches a small gateway's memory at all.
    """
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.MaximumPacketSize = MAX_DOWNLINK_PACKET_BYTES
    return props


async def _unless_lost(client: aiomqtt.Client, work: Awaitable[T], what: str) -> T:
    """Await `work`, or give up as soon as the connection is lost.

    aiomqtt leaves a SUBSCRIBE waiting for its SUBACK when the connection drops and fails it
    only at its own timeout, so a link cut between the CONNACK and the SUBACK would sit idle
    for `answer_timeout_s` instead of reconnecting within the backoff. The client's own
    "disconnected" future is the one place that hears of the loss first.
    """
    task = asyncio.ensure_future(work)
    lost: asyncio.Future[None] = client._disconnected  # noqa: SLF001 - see the docstring
    try:
        await asyncio.wait((task, lost), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    reason = lost.exception() if lost.done() and not lost.cancelled() else None
    msg = f"connection lost before the broker answered {what}"
    raise UplinkUnavailable(f"{msg}: {reason}" if reason else msg)


class _OldBroker(Exception):
    """The broker answered an MQTT 5 CONNECT with "unsupported protocol version"."""


async def _either(first: asyncio.Event, second: asyncio.Event, timeout_s: float) -> bool:
    """Wait until either event is set (True) or the time is up (False)."""
    if first.is_set() or second.is_set():
        return True
    waits = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return bool(done)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
