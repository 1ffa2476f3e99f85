"""Settings and a running in-process daemon for registry and API tests (real SQLite, real HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gatewayd.api.auth import hash_token
from gatewayd.app import App
from gatewayd.bridge.sink import BridgeSink
from gatewayd.settings import Settings
from gatewayd.systemd import Notifier
from tests.helpers import ROOT

PRODUCTS = ROOT / "tests" / "data" / "products"
WATER = "b640f4c203b7910fc3cbd446ed437cbd"
ADMIN = "admin-token-0123456789"
READER = "read-token-0123456789"


class WallClock:
    """A wall clock that moves only when told: shadow times without waiting."""

    def __init__(self) -> None:
        self.now = datetime(2024, 1, 26, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1) -> None:
        self.now += timedelta(seconds=seconds)


def store_settings(tmp_path: Path, **extra: Any) -> Settings:
    data: dict[str, Any] = {
        "gateway": {"node_id": "gw1", "product_id": "gatewayd"},
        "state_dir": tmp_path / "state",
        "products": PRODUCTS,
        "api": {
            "port": 0,
            "project_id": "proj1",
            "tokens": {
                "ops": {"sha256": hash_token(ADMIN), "scope": "admin"},
                "viewer": {"sha256": hash_token(READER), "scope": "read"},
            },
        },
    }
    data.update(extra)
    return Settings(**data)


@asynccontextmanager
async def running_app(
    settings: Settings, sink: BridgeSink | None = None
) -> AsyncIterator[tuple[str, App]]:
    """The real App in this loop; yields its base URL and the app (store open, API bound)."""
    app = App(settings, notifier=Notifier({}), sink=sink)
    task = asyncio.create_task(app.run(), name="app")
    try:
        async with asyncio.timeout(10):
            while app.api is None or not app.api.bound.is_set():
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        assert app.store is not None
        yield f"http://127.0.0.1:{app.api.port}", app
    finally:
        app.request_stop()
        async with asyncio.timeout(10):
            await task
