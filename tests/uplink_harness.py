"""An in-process gateway uplink (outbox + link + telemetry sink) for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatewayd.bridge.telemetry import TelemetrySink
from gatewayd.cloud.children import ConfiguredChildren, StatusBoard
from gatewayd.cloud.link import LinkTiming, Uplink
from gatewayd.health import Health
from gatewayd.settings import Settings
from gatewayd.store.cloud_state import CloudState, cloud_state_schema
from gatewayd.store.outbox import Outbox, open_outbox


@dataclass
class Gateway:
    settings: Settings
    outbox: Outbox
    state: CloudState
    uplink: Uplink
    board: StatusBoard
    sink: TelemetrySink
    health: Health

    @property
    def id(self) -> str:
        return self.settings.gateway.effective_device_id


def settings_for(state_dir: Path, port: int, devices: list[str], **sections: Any) -> Settings:
    cloud = {
        "host": "127.0.0.1",
        "port": port,
        "rate_limit_msg_s": 100000,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.5,
        "keepalive_s": 5,
        "connect_timeout_s": 2,
        **sections.pop("cloud", {}),
    }
    return Settings(
        gateway={"node_id": "gw"},
        state_dir=state_dir,
        cloud=cloud,
        connections={
            "sim": {
                "driver": "memory",
                "devices": {d: {"points": {"seq": {}}} for d in devices},
            }
        },
        **sections,
    )


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    async with open_outbox(
        settings.state_dir / "outbox.db", settings.outbox, schema=cloud_state_schema
    ) as outbox:
        state = CloudState(outbox.worker)
        children = ConfiguredChildren(settings)
        board = StatusBoard()
        health = Health()
        uplink = Uplink(
            settings.cloud,
            settings.gateway.effective_device_id,
            outbox,
            state,
            children,
            board,
            health.component("uplink"),
            timing=LinkTiming(answer_timeout_s=3, children_retry_s=1, healthy_after_s=5),
        )
        sink = TelemetrySink(outbox, children, board)
        task = asyncio.create_task(uplink.run(), name="test.uplink")
        try:
            yield Gateway(settings, outbox, state, uplink, board, sink, health)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
