"""The reference cloud: the cloud side of the native dialect, over a real broker.

It accepts or refuses children, records telemetry and every other uplink, pushes config,
commands, licenses, space info and firmware, and answers `get` with the device's snapshot.
It keeps a persistent MQTT 5 session, so with a persistent broker nothing published while it
reconnects is lost to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PREFIX = "v1/device/"
GATEWAY_PREFIX = "gatewayd_"  # device ids of gateways of the shipped gatewayd product


@dataclass
class Uplink:
    topic: str
    device: str
    kind: str
    body: Any
    at: float
    user: dict[str, str]


@dataclass
class Snapshot:
    config: dict[str, Any] | None = None
    command: dict[str, Any] | None = None
    space_info: dict[str, Any] | None = None
    firmware: dict[str, Any] | None = None
    licenses: list[dict[str, Any]] = field(default_factory=list)


class RefCloud:
    def __init__(
        self,
        port: int,
        *,
        refuse: dict[str, tuple[str, str]] | None = None,
        answer_children: bool = True,
        client_id: str = "refcloud",
    ) -> None:
        self.port = port
        self.refuse = refuse or {}  # node_id -> (error_code, error_msg)
        self.answer_children = answer_children
        self.client_id = client_id
        self.uplinks: list[Uplink] = []
        self.snapshots: dict[str, Snapshot] = defaultdict(Snapshot)
        self.connected = asyncio.Event()
        self.connects = 0
        self._client: aiomqtt.Client | None = None

    # -- what arrived -------------------------------------------------------------------
    def of(self, kind: str, device: str | None = None) -> list[Uplink]:
        return [
            u for u in self.uplinks if u.kind == kind and (device is None or u.device == device)
        ]

    def telemetry(self) -> list[Uplink]:
        """The field devices' telemetry; the gateway's own report is `of("telemetry", gw)`."""
        return [u for u in self.of("telemetry") if not u.device.startswith(GATEWAY_PREFIX)]

    async def wait(self, predicate, timeout_s: float = 10.0, what: str = "") -> None:
        """Check `predicate` 20 times a second (not per message: it may scan every uplink)."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(0.05)
        del what

    # -- pushing ------------------------------------------------------------------------
    async def push(self, device: str, kind: str, body: Any, timeout_s: float = 5.0) -> None:
        """Publish a downlink; its PUBACK may queue behind a backlog the broker is delivering
        to this client, so a caller that pushes right after a big drain gives it longer."""
        assert self._client is not None, "not connected"
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self._client.publish(f"{PREFIX}{device}/{kind}", payload, qos=1, timeout=timeout_s)

    # -- running ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RefCloud]:
        task = asyncio.create_task(self._run(), name="refcloud")
        try:
            async with asyncio.timeout(10):
                await self.connected.wait()
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        while True:
            try:
                client = aiomqtt.Client(
                    "127.0.0.1",
                    self.port,
                    identifier=self.client_id,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    properties=props,
                    timeout=5,
                )
                async with client:
                    self._client = client
                    await client.subscribe(f"{PREFIX}#", qos=1)
                    self.connects += 1
                    self.connected.set()
                    async for message in client.messages:
                        await self._handle(message)
            except aiomqtt.MqttError:
                self._client = None
                self.connected.clear()
                await asyncio.sleep(0.05)

    async def _handle(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        device, _, kind = topic[len(PREFIX) :].partition("/")
        if (
            kind in {"config", "commands", "license", "space_info", "firmware"}
            or kind.endswith("/response")
            or kind == "children/notify"
        ):
            return  # our own downlinks
        raw = message.payload
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        user = dict(getattr(message.properties, "UserProperty", None) or [])
        self.uplinks.append(Uplink(topic, device, kind, body, time.monotonic(), user))
        if kind == "children/add" and self.answer_children:
            await self._answer_add(device, body)
        elif kind == "children/delete":
            await self.push(
                device,
                "children/delete/response",
                {"request_id": body["request_id"], "successful_devices": body["devices"]},
            )
        elif kind == "get":
            await self._snapshot(device)

    async def _answer_add(self, gateway: str, body: dict[str, Any]) -> None:
        ok, failed = [], []
        for dev in body["devices"]:
            if dev["node_id"] in self.refuse:
                code, msg = self.refuse[dev["node_id"]]
                failed.append(
                    {
                        "node_id": dev["node_id"],
                        "product_id": dev["product_id"],
                        "error_code": code,
                        "error_msg": msg,
                    }
                )
            else:
                ok.append({**dev, "access_key": f"key-{dev['device_id']}"})
        await self.push(
            gateway,
            "children/add/response",
            {"request_id": body["request_id"], "successful_devices": ok, "failed_devices": failed},
        )

    async def _snapshot(self, device: str) -> None:
        snap = self.snapshots.get(device)
        if snap is None:
            return
        if snap.space_info is not None:
            await self.push(device, "space_info", snap.space_info)
        if snap.config is not None:
            await self.push(device, "config", snap.config)
        if snap.command is not None:
            await self.push(device, "commands", snap.command)
        for lic in snap.licenses:
            await self.push(device, "license", lic)
        if snap.firmware is not None:
            await self.push(device, "firmware", snap.firmware)
