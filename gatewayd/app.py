"""The daemon's task tree: everything runs under one TaskGroup owned by `run()`."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gatewayd import heap, systemd
from gatewayd.api.auth import TokenAuth
from gatewayd.api.iotda import mount_iotda
from gatewayd.api.metrics import mount_metrics
from gatewayd.api.server import ApiServer, build_app
from gatewayd.bridge.cloud_sync import CloudDesired, CloudReports
from gatewayd.bridge.field import FieldState
from gatewayd.bridge.points import PointIndex
from gatewayd.bridge.reconcile import Reconciler
from gatewayd.bridge.runner import ConnectionRunner
from gatewayd.bridge.sink import BridgeSink
from gatewayd.bridge.telemetry import TelemetrySink
from gatewayd.cloud.children import ConfiguredChildren, StatusBoard
from gatewayd.cloud.link import Uplink
from gatewayd.cloud.routes import mount_cloud
from gatewayd.driver import ConnectionConfig, Driver
from gatewayd.health import Health
from gatewayd.registry import spec_for
from gatewayd.settings import Settings
from gatewayd.store import Store, open_store
from gatewayd.store.cloud_state import CloudState, cloud_state_schema
from gatewayd.store.outbox import Outbox, open_outbox

__all__ = ["App", "default_build_driver"]

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.db"


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
        sink: where checked readings go instead of the telemetry outbox (tests).
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
        self._drivers = {
            conn_id: build_driver(conn)
            for conn_id, conn in settings.connections.items()
            if conn.enabled
        }
        self.children = ConfiguredChildren(settings)
        self.board = StatusBoard()
        self.runners: dict[str, ConnectionRunner] = {}  # built once the stores are open
        self.api: ApiServer | None = None
        self.store: Store | None = None
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None

    @property
    def connects(self) -> int | None:
        """MQTT sessions established so far (None without a cloud link), for /metrics."""
        return self.uplink.connects if self.uplink is not None else None

    @property
    def downlinks(self) -> dict[str, int] | None:
        """Downlinks handled so far by result (None without a cloud link), for /metrics."""
        return self.uplink.downlinks if self.uplink is not None else None

    def request_stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler)."""
        self.stop_requested.set()

    async def run(self) -> None:
        """Serve until `request_stop()`; a bug in any task propagates out of here.

        Shutdown order: the task group cancels the connections (a reading being appended
        completes its commit), then the outbox commits what is buffered and closes, then the
        state store closes.
        """
        self._prepare_state_dir()
        component = self.health.component("store", critical=True)
        path = self.settings.state_dir / OUTBOX_FILE
        async with (
            open_store(self.settings) as store,
            open_outbox(path, self.settings.outbox, schema=cloud_state_schema) as outbox,
        ):
            self.store = store
            self.outbox = outbox
            component.up(_store_detail(store, outbox))
            try:
                async with asyncio.TaskGroup() as tg:
                    self._start(tg, store, outbox, CloudState(outbox.worker))
            except* _Shutdown:
                pass
            finally:
                component.stopped()
        log.info("stopped")

    def _start(
        self, tg: asyncio.TaskGroup, store: Store, outbox: Outbox, state: CloudState
    ) -> None:
        telemetry = self._sink or TelemetrySink(outbox, self.children, self.board)
        index = PointIndex(self.settings.connections, store.products)
        field = FieldState(index, store.registry, store.shadows, downstream=telemetry)
        self.runners = {
            conn_id: ConnectionRunner(
                conn_id,
                self.settings.connections[conn_id],
                driver,
                field,
                self.health.component(f"connection[{conn_id}]"),
            )
            for conn_id, driver in self._drivers.items()
        }
        reports = CloudReports(outbox, state, store.products, store.registry)
        reconciler = Reconciler(store.shadows, index, self.runners, listener=reports)
        if self.settings.api.enabled:
            app = build_app(
                self.health,
                self._mount(store, outbox, state),
                auth=TokenAuth(self.settings.api.tokens),
            )
            self.api = ApiServer(
                self.settings.api, app, self.health.component("api", critical=True)
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
                desired=CloudDesired(store.registry, store.products, store.shadows),
            )
            tg.create_task(self.uplink.run(), name="uplink")
        tg.create_task(self._announce_ready(), name="ready")
        tg.create_task(self._watchdog(), name="watchdog")
        for conn_id, runner in self.runners.items():
            tg.create_task(runner.run(), name=f"connection[{conn_id}]")
        tg.create_task(reconciler.run(), name="reconcile")
        tg.create_task(self._wait_stop(), name="stop")

    def _mount(
        self, store: Store, outbox: Outbox, state: CloudState
    ) -> Callable[[web.Application], None]:
        project_id = self.settings.api.project_id

        def mount(app: web.Application) -> None:
            mount_iotda(app, store=store, project_id=project_id)
            mount_cloud(app, outbox, state)
            mount_metrics(app, self.health, outbox, self)

        return mount

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
        heap.settle()

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


def _store_detail(store: Store, outbox: Outbox) -> str:
    parts = [str(store.db.path), str(outbox.worker.path)]
    if store.db.moved_aside is not None:
        parts.append(f"damaged state file moved to {store.db.moved_aside}")
    if outbox.worker.moved_aside is not None:
        parts.append(f"damaged outbox moved to {outbox.worker.moved_aside}")
    return "; ".join(parts)
