"""The daemon's task tree: everything runs under one TaskGroup owned by `run()`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

from gatewayd import heap, systemd
from gatewayd.api.auth import TokenAuth
from gatewayd.api.iotda import mount_iotda
from gatewayd.api.metrics import mount_metrics
from gatewayd.api.server import ApiServer, build_app
from gatewayd.bridge.cloud_sync import CloudDesired, CloudReports
from gatewayd.bridge.field import FieldState
from gatewayd.bridge.gateway_report import GatewayReport
from gatewayd.bridge.points import PointIndex
from gatewayd.bridge.reconcile import Reconciler
from gatewayd.bridge.runner import ConnectionRunner
from gatewayd.bridge.sink import BridgeSink
from gatewayd.bridge.telemetry import TelemetrySink
from gatewayd.cloud.children import ConfiguredChildren, RegistryChildren, StatusBoard
from gatewayd.cloud.firmware import known_firmware
from gatewayd.cloud.link import Uplink
from gatewayd.cloud.routes import mount_cloud
from gatewayd.commands.answers import CommandAnswers
from gatewayd.commands.bound import Bindings
from gatewayd.commands.builtin import builtins
from gatewayd.commands.engine import CommandEngine
from gatewayd.commands.resync import Resync
from gatewayd.driver import ConnectionConfig, Driver
from gatewayd.health import Health
from gatewayd.products import Product
from gatewayd.registry import spec_for
from gatewayd.settings import Settings
from gatewayd.statelock import StateLock
from gatewayd.store import Store, open_store
from gatewayd.store.cloud_state import CloudState, cloud_state_schema
from gatewayd.store.outbox import Outbox, open_outbox

__all__ = ["App", "default_build_driver"]

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.db"

# How long the task group's tasks get to end once it is ending (a stop, or a task that
# failed) before the ones still running are cancelled again, every `RECANCEL_S` after that.
# A task that swallowed its cancellation would otherwise hold the daemon up for ever, with
# the task that waits for SIGTERM already gone.
STOP_GRACE_S = 2.0
RECANCEL_S = 1.0


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
        self.state_lock = StateLock(settings.state_dir)
        self._tasks: list[asyncio.Task[None]] = []
        self._recancel: asyncio.TimerHandle | None = None
        self._stop_began = 0.0

    @property
    def connects(self) -> int | None:
        """MQTT sessions established so far (None without a cloud link), for /metrics."""
        return self.uplink.connects if self.uplink is not None else None

    @property
    def downlinks(self) -> dict[str, int] | None:
        """Downlinks handled so far by result (None without a cloud link), for /metrics."""
        return self.uplink.downlinks if self.uplink is not None else None

    def request_stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler).

        Asked again while stopping, it changes nothing: the stop under way finishes what it
        is writing, and a task that ignores it is cancelled again after `STOP_GRACE_S`.
        """
        if self.stop_requested.is_set():
            log.info("already stopping")
        self.stop_requested.set()

    async def run(self) -> None:
        """Serve until `request_stop()`; a bug in any task propagates out of here.

        Shutdown order: the task group cancels the connections (a reading being appended
        completes its commit), then the outbox commits what is buffered and closes, then the
        state store closes.
        """
        if self.stop_requested.is_set():
            log.info("stopped before starting")
            return
        component = self.health.component("store", critical=True)
        path = self.settings.state_dir / OUTBOX_FILE
        async with (
            self._state_dir_locked(),
            open_store(self.settings, health=component) as store,
            open_outbox(
                path, self.settings.outbox, health=component, schema=cloud_state_schema
            ) as outbox,
        ):
            self.store = store
            cloud_children = RegistryChildren(store.registry, self.children)
            await cloud_children.load()  # before the link: it must see every child at once
            self.outbox = outbox
            component.up(_store_detail(store, outbox))
            try:
                async with asyncio.TaskGroup() as tg:
                    self._spawn(tg, cloud_children.run(), "children")
                    self._start(tg, store, outbox, CloudState(outbox.worker), cloud_children)
            except* _Shutdown:
                pass
            finally:
                self._stopped()
                component.stopped()
        log.info("stopped")

    def _start(
        self,
        tg: asyncio.TaskGroup,
        store: Store,
        outbox: Outbox,
        state: CloudState,
        cloud_children: RegistryChildren,
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
            self._spawn(tg, self.api.serve(), "api")
        engine = self._engine(store, outbox, state, reports, cloud_children)
        self._spawn(tg, engine.run(), "commands")
        if self.settings.cloud.host is not None:
            self.uplink = Uplink(
                self.settings.cloud,
                self.settings.gateway.effective_device_id,
                outbox,
                state,
                cloud_children,
                self.board,
                self.health.component("uplink"),
                executor=engine,
                desired=CloudDesired(store.registry, store.products, store.shadows, reports),
                firmware=known_firmware(self.settings),
            )
            self._spawn(tg, self.uplink.run(), "uplink")
        self._spawn(tg, self._announce_ready(), "ready")
        self._spawn(tg, self._watchdog(), "watchdog")
        for conn_id, runner in self.runners.items():
            self._spawn(tg, runner.run(), f"connection[{conn_id}]")
        self._spawn(tg, reconciler.run(), "reconcile")
        self._spawn(tg, self._gateway_report(store, outbox).run(), "gateway_report")
        self._spawn(tg, self._wait_stop(), "stop")

    def _engine(
        self,
        store: Store,
        outbox: Outbox,
        state: CloudState,
        reports: CloudReports,
        children: RegistryChildren,
    ) -> CommandEngine:
        gateway_id = self.settings.gateway.effective_device_id

        async def product_of(device_id: str) -> Product | None:
            device = await store.registry.find(device_id)
            return None if device is None else store.products.get(device.product_id)

        resync = Resync(
            gateway_id,
            outbox,
            self.board.snapshot,
            lambda: [gateway_id, *(c.device_id for c in children.children())],
            store.shadows,
            reports,
        )
        bindings = Bindings(self.settings.connections, self.runners, children.device_id)
        return CommandEngine(
            CommandAnswers(state, outbox),
            state,
            product_of,
            builtins(resync),
            bindings=bindings.get,
        )

    def _gateway_report(self, store: Store, outbox: Outbox) -> GatewayReport:
        gateway = self.settings.gateway
        return GatewayReport(
            gateway.effective_device_id,
            gateway.product_id,
            store.products,
            outbox,
            store.shadows,
            self.health,
            lambda: max(0, (self.connects or 0) - 1),
        )

    def _spawn(self, tg: asyncio.TaskGroup, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = tg.create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A task that ended with an error (or `_Shutdown`) ends the group: start the clock."""
        if task.cancelled() or task.exception() is None or self._recancel is not None:
            return
        loop = asyncio.get_running_loop()
        self._stop_began = loop.time()
        self._recancel = loop.call_later(STOP_GRACE_S, self._cancel_lingering)

    def _cancel_lingering(self) -> None:
        lingering = [t for t in self._tasks if not t.done()]
        if not lingering:
            return
        # Every task still running, nested ones too: the one that ignored its cancellation
        # is among them, and the log is all there is to find it by.
        loop = asyncio.get_running_loop()
        since = loop.time() - self._stop_began
        current = asyncio.current_task()
        for task in asyncio.all_tasks():
            if task is not current and not task.done():
                log.error(
                    "still running after the stop began %.1f s ago: task %s, in %s",
                    since,
                    task.get_name(),
                    " -> ".join(awaiting(task)) or "?",
                )
        for task in lingering:
            log.error("cancelling task %s again", task.get_name())
            task.cancel()
        self._recancel = loop.call_later(RECANCEL_S, self._cancel_lingering)

    def _stopped(self) -> None:
        if self._recancel is not None:
            self._recancel.cancel()
            self._recancel = None
        self._tasks.clear()

    def _mount(
        self, store: Store, outbox: Outbox, state: CloudState
    ) -> Callable[[web.Application], None]:
        project_id = self.settings.api.project_id

        def mount(app: web.Application) -> None:
            mount_iotda(app, store=store, project_id=project_id)
            mount_cloud(app, outbox, state, store.registry)
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

    @contextlib.asynccontextmanager
    async def _state_dir_locked(self) -> AsyncIterator[None]:
        """The state directory, created if missing and locked for this process alone.

        The lock comes before anything in the directory is opened: a second daemon on the
        same directory exits here (`StateDirLocked`) having touched nothing.
        """
        state = self.settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        self.state_lock.acquire()
        try:
            probe = state / ".writable"
            probe.write_bytes(b"")
            probe.unlink()
            yield
        finally:
            self.state_lock.release()


def awaiting(task: asyncio.Task[Any]) -> list[str]:
    """Where a suspended task waits, outermost first (`Task.get_stack()` shows one frame)."""
    where: list[str] = []
    step: Any = task.get_coro()
    while step is not None:
        frame = getattr(step, "cr_frame", None) or getattr(step, "ag_frame", None)
        if frame is not None:
            where.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})")
        step = getattr(step, "cr_await", None) or getattr(step, "ag_await", None)
    return where


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
    if outbox.salvage is not None:
        parts.append(outbox.salvage.describe())
    if outbox.worker.was_empty:
        parts.append("the outbox file was empty (0 bytes) at start")
    return "; ".join(parts)
