"""The daemon's task tree: everything runs under one TaskGroup owned by `run()`."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Callable
from typing import Any

from gatewayd import systemd
from gatewayd.api.auth import TokenAuth
from gatewayd.api.iotda import mount_iotda
from gatewayd.api.server import ApiServer, build_app
from gatewayd.bridge.field import FieldState
from gatewayd.bridge.points import PointIndex
from gatewayd.bridge.reconcile import Reconciler
from gatewayd.bridge.runner import ConnectionRunner
from gatewayd.bridge.sink import BridgeSink, LatestValues
from gatewayd.driver import ConnectionConfig, Driver
from gatewayd.health import Health
from gatewayd.registry import spec_for
from gatewayd.settings import Settings
from gatewayd.store import Store, open_store

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
        sink: where readings go.
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
        self.sink: BridgeSink = sink or LatestValues()
        self._drivers = {
            conn_id: build_driver(conn)
            for conn_id, conn in settings.connections.items()
            if conn.enabled
        }
        self.runners: dict[str, ConnectionRunner] = {}  # built once the store is open
        self.api: ApiServer | None = None
        self.store: Store | None = None  # open while run() runs

    def request_stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler)."""
        self.stop_requested.set()

    async def run(self) -> None:
        """Serve until `request_stop()`; a bug in any task propagates out of here."""
        self._prepare_state_dir()
        component = self.health.component("store", critical=True)
        async with open_store(self.settings) as store:
            self.store = store
            detail = str(store.db.path)
            if store.db.moved_aside is not None:
                detail += f"; damaged file moved to {store.db.moved_aside}"
            component.up(detail)
            try:
                await self._serve(store)
            finally:
                component.stopped()
        log.info("stopped")

    def _build_runners(self, store: Store) -> PointIndex:
        index = PointIndex(self.settings.connections, store.products)
        field = FieldState(index, store.registry, store.shadows, downstream=self.sink)
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
        return index

    async def _serve(self, store: Store) -> None:
        api = self.settings.api
        index = self._build_runners(store)
        reconciler = Reconciler(store.shadows, index, self.runners)
        try:
            async with asyncio.TaskGroup() as tg:
                if api.enabled:
                    self.api = ApiServer(
                        api,
                        build_app(
                            self.health,
                            functools.partial(mount_iotda, store=store, project_id=api.project_id),
                            auth=TokenAuth(api.tokens),
                        ),
                        self.health.component("api", critical=True),
                    )
                    tg.create_task(self.api.serve(), name="api")
                tg.create_task(self._announce_ready(), name="ready")
                tg.create_task(self._watchdog(), name="watchdog")
                for conn_id, runner in self.runners.items():
                    tg.create_task(runner.run(), name=f"connection[{conn_id}]")
                tg.create_task(reconciler.run(), name="reconcile")
                tg.create_task(self._wait_stop(), name="stop")
        except* _Shutdown:
            pass

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
