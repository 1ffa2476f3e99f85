"""The daemon's task tree: everything runs under one TaskGroup owned by `run()`."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gatewayd import systemd
from gatewayd.api.server import ApiServer, build_app
from gatewayd.bridge.runner import ConnectionRunner
from gatewayd.bridge.sink import BridgeSink
from gatewayd.bridge.telemetry import TelemetrySink
from gatewayd.cloud.children import ConfiguredChildren, StatusBoard
from gatewayd.cloud.link import Uplink
from gatewayd.cloud.routes import cloud_routes
from gatewayd.driver import ConnectionConfig, Driver
from gatewayd.health import Health
from gatewayd.registry import spec_for
from gatewayd.settings import Settings
from gatewayd.store.cloud_state import CloudState, cloud_state_schema
from gatewayd.store.outbox import Outbox, open_outbox

__all__ = ["App", "default_build_driver"]

log = logging.getLogger(__name__)


class _Shutdown(Exception):
    """Raised inside the task group to stop every task."""


def default_build_driver(config: ConnectionConfig) -> Driver[Any, Any]:
    """Build a driver from the spec registered for the connection's `driver:` kind."""
    spec = spec_for(getattr(config, "driver"))  # noqa: B009 - every connection model has it
    return spec.build(config)


class App:
    """One gatewayd instance.

    Args:
        settings: the validated configuration.
        notifier: systemd notifications (silent outside systemd).
        build_driver: makes a driver for a connection; injectable for tests.
        sink: where readings go; by default telemetry records in the outbox.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        notifier: systemd.Notifier | None = None,
        build_driver: Callable[[ConnectionConfig], Driver[Any, Any]] = default_build_driver,
        sink: BridgeSink | None = None,
    ) -> None:
        self.settings = settings
        self.health = Health()
        self.notifier = notifier or systemd.Notifier()
        self.stop_requested = asyncio.Event()
        self._sink = sink
        self._build_driver = build_driver
        self.children = ConfiguredChildren(settings)
        self.board = StatusBoard()
        self.runners: dict[str, ConnectionRunner] = {}
        self.api: ApiServer | None = None
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None

    def request_stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler)."""
        self.stop_requested.set()

    async def run(self) -> None:
        """Serve until `request_stop()`; a bug in any task propagates out of here.

        Shutdown order: the task group cancels the connections (a reading being appended
        completes its commit), then the outbox commits what is buffered and closes.
        """
        self._prepare_state_dir()
        store = self.health.component("store", critical=True)
        path = self.settings.state_dir / "outbox.db"
        async with open_outbox(path, self.settings.outbox, schema=cloud_state_schema) as outbox:
            self.outbox = outbox
            aside = outbox.worker.moved_aside
            store.up(f"{path}; corrupt file moved to {aside}" if aside else str(path))
            state = CloudState(outbox.worker)
            sink = self._sink or TelemetrySink(outbox, self.children, self.board)
            self.runners = self._build_runners(sink)
            try:
                async with asyncio.TaskGroup() as tg:
                    self._start(tg, outbox, state)
            except* _Shutdown:
                pass
        log.info("stopped")

    def _start(self, tg: asyncio.TaskGroup, outbox: Outbox, state: CloudState) -> None:
        if self.settings.api.enabled:
            routes = cloud_routes(outbox, state)

            def mount(app: web.Application) -> None:
                app.router.add_routes(routes)

            self.api = ApiServer(
                self.settings.api,
                build_app(self.health, mount),
                self.health.component("api", critical=True),
            )
            tg.create_task(self.api.serve(), name="api")
        if self.settings.cloud.host is not None:
            self.uplink = Uplink(
                self.settings.cloud,
                self.settings.gateway.effective_device_id,
                outbox,
                state,
                self.children,
                self.board,
                self.health.component("uplink"),
            )
            tg.create_task(self.uplink.run(), name="uplink")
        tg.create_task(self._announce_ready(), name="ready")
        tg.create_task(self._watchdog(), name="watchdog")
        for conn_id, runner in self.runners.items():
            tg.create_task(runner.run(), name=f"connection[{conn_id}]")
        tg.create_task(self._wait_stop(), name="stop")

    def _build_runners(self, sink: BridgeSink) -> dict[str, ConnectionRunner]:
        return {
            conn_id: ConnectionRunner(
                conn_id,
                conn,
                self._build_driver(conn),
                sink,
                self.health.component(f"connection[{conn_id}]"),
            )
            for conn_id, conn in self.settings.connections.items()
            if conn.enabled
        }

    async def _wait_stop(self) -> None:
        await self.stop_requested.wait()
        log.info("stopping")
        self.notifier.stopping()
        raise _Shutdown

    async def _announce_ready(self) -> None:
        if self.api is not None:
            await self.api.bound.wait()
        self.notifier.ready(self.health.summary())
        log.info("ready")

    async def _watchdog(self) -> None:
        period = systemd.watchdog_period_s()
        if period is None:
            return
        last_status = ""
        while True:
            await asyncio.sleep(period)
            if self.health.critical_ok():
                self.notifier.watchdog()
            else:
                log.error("critical component failed: not petting the watchdog")
            status = self.health.summary()
            if status != last_status:
                self.notifier.status(status)
                last_status = status

    def _prepare_state_dir(self) -> None:
        state = self.settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        probe = state / ".writable"
        probe.write_bytes(b"")
        probe.unlink()


def install_signal_handlers(app: App) -> None:
    """SIGTERM/SIGINT stop gracefully; SIGHUP is acknowledged."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, app.request_stop)
    loop.add_signal_handler(signal.SIGINT, app.request_stop)
    loop.add_signal_handler(signal.SIGHUP, _on_hup)


def _on_hup() -> None:
    log.info("SIGHUP received: configuration reload is not supported yet; restart to apply")
