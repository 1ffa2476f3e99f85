"""The one owner of a connection: one session, one prioritised queue, no collisions.

Everything that touches the resource (polls, on-demand reads, writes) goes through one agenda
served by one worker, so a serial bus never sees two requests at once. Writes and on-demand
reads go before background polls. Push streams (`watch`) run beside the agenda.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gatewayd.backoff import Backoff
from gatewayd.batch import SampleBatch
from gatewayd.bridge.agenda import Agenda, AgendaFull, Poll
from gatewayd.bridge.breaker import Breaker
from gatewayd.bridge.jobs import Job, Priority, phase, settle
from gatewayd.bridge.limits import RunnerLimits
from gatewayd.bridge.normalise import BatchNormaliser, normalise, to_raw
from gatewayd.bridge.sink import BridgeSink
from gatewayd.driver import ConnectionConfig, DeviceConfig, Driver, PointConfig, Session, Watchable
from gatewayd.errors import ConnectionLost, DeviceUnavailable, TransientError
from gatewayd.health import Component
from gatewayd.model import Availability, Reading, Sample, Value
from gatewayd.supervise import supervise
from gatewayd.watchdog import Watchdog

__all__ = ["ConnectionRunner", "Priority", "RunnerLimits"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class _DeviceState:
    breaker: Breaker
    up: bool | None = None


class ConnectionRunner:
    """Owns one connection for the daemon's lifetime.

    Args:
        connection_id: key of the connection in the configuration.
        config: the connection's validated configuration (with `devices`).
        driver: built from the connection's DriverSpec.
        sink: receives readings and availability.
        component: health of the connection.
        backoff: reconnect policy for the whole resource.
        limits: queue and circuit-breaker bounds.
    """

    def __init__(  # noqa: PLR0913 - every argument is an injected collaborator
        self,
        connection_id: str,
        config: ConnectionConfig,
        driver: Driver[Any, Any],
        sink: BridgeSink,
        component: Component,
        *,
        backoff: Backoff | None = None,
        limits: RunnerLimits | None = None,
    ) -> None:
        self.id = connection_id
        self._devices: dict[str, DeviceConfig[Any]] = {
            k: v for k, v in getattr(config, "devices", {}).items() if v.enabled
        }
        self._driver = driver
        self._sink = sink
        self._component = component
        self._backoff = backoff or Backoff(initial_s=1.0, max_s=60.0)
        self._limits = limits or RunnerLimits.from_config(config)
        self._agenda: Agenda | None = None
        self._batches = BatchNormaliser(connection_id)
        lim = self._limits
        self._state = {
            k: _DeviceState(Breaker(lim.breaker_failures, lim.breaker)) for k in self._devices
        }
        self.polls_skipped = 0
        self._watchdog: Watchdog | None = None

    @property
    def connected(self) -> bool:
        """Whether a session is open now."""
        return self._agenda is not None

    async def run(self) -> None:
        """Keep a session open, reconnecting with backoff, until cancelled."""
        await supervise(self._session, self._component, self._backoff)

    async def write(self, device_id: str, point_id: str, value: Value) -> None:
        """Write one value, in engineering units, through the queue, ahead of polls.

        The point's scale and offset are undone before the driver sees the value.

        Raises:
            DeviceUnavailable: not connected, queue full, or the device did not answer.
            WriteRejected: the device refused the value.
            KeyError: no such device or point.
        """
        device = self._devices[device_id]
        point = device.points[point_id]
        await self._submit(Job(Priority.WRITE, device, [point], to_raw(point, value)))

    async def read(self, device_id: str, point_ids: Sequence[str]) -> Sequence[Reading]:
        """Read now, ahead of polls (a read-back after a write, a technician's request)."""
        device = self._devices[device_id]
        points = [device.points[p] for p in point_ids]
        samples = await self._submit(Job(Priority.READ, device, points))
        return self._normalise(device, samples)

    async def write_confirmed(self, device_id: str, point_id: str, value: Value) -> Reading:
        """Write, then read the point back: the reading is what the device now holds.

        Report the returned reading, not `value`: a device may clamp or round what it got.
        """
        await self.write(device_id, point_id, value)
        (reading,) = await self.read(device_id, [point_id])
        return reading

    async def exclusive(
        self, device_id: str, call: Callable[[Session[Any, Any]], Awaitable[T]]
    ) -> T:
        """Run `call(session)` alone on the resource, ahead of polls (a unit scan, a probe).

        `device_id` picks whose retries apply; a failed call does not count against that
        device's availability or breaker.
        """
        device = self._devices[device_id]
        result: T = await self._submit(Job(Priority.READ, device, [], call=call))
        return result

    async def _submit(self, job: Job) -> Any:
        agenda = self._agenda
        if agenda is None:
            msg = f"connection {self.id} is not connected"
            raise DeviceUnavailable(msg)
        job.done = asyncio.get_running_loop().create_future()
        try:
            agenda.submit(job)
        except AgendaFull as exc:
            msg = f"connection {self.id}: request queue full: {exc}"
            raise DeviceUnavailable(msg) from None
        return await job.done

    async def _session(self) -> None:
        try:
            await self._open_session()
        except TransientError as exc:
            await self._connection_failed(exc)
            raise

    async def _links_up(self) -> None:
        """Devices with no points (an RS-485 converter) are up exactly when the link is."""
        for device in self._devices.values():
            if not device.points:
                await self._device_ok(device)

    async def _open_session(self) -> None:
        try:
            async with self._driver.connect() as session:
                self._agenda = agenda = Agenda(self._limits.queue_size)
                self._schedule_polls(agenda)
                self._component.up()
                await self._links_up()
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._worker(session), name=f"connection[{self.id}].worker")
                        for dev_id, device in self._devices.items():
                            self._start_watcher(tg, session, dev_id, device)
                finally:
                    if self._watchdog is not None:
                        self._watchdog.close()
                        self._watchdog = None
                    self._agenda = None
                    for job in agenda.drain():
                        settle(job, DeviceUnavailable(f"connection {self.id} closed"))
        except BaseExceptionGroup as group:
            raise _first_transient(group) from None

    def _schedule_polls(self, agenda: Agenda) -> None:
        """One poll per device and interval, the first of each due at once."""
        now = asyncio.get_running_loop().time()
        for device in self._devices.values():
            polled: dict[float, list[PointConfig]] = {}
            for point in device.points.values():
                if not getattr(point, "push", False):
                    polled.setdefault(point.interval_s or device.interval_s, []).append(point)
            for interval, points in sorted(polled.items()):
                job = Job(Priority.POLL, device, points)
                # The step from the first tick to the second is spread by device, so many
                # devices with one interval do not all hit the loop and the bus in one burst.
                step = phase(f"{self.id}/{device.id}", interval)
                agenda.schedule(Poll(job, interval, step, due=now))

    def _start_watcher(
        self,
        tg: asyncio.TaskGroup,
        session: Session[Any, Any],
        dev_id: str,
        device: DeviceConfig[Any],
    ) -> None:
        pushed = [p for p in device.points.values() if getattr(p, "push", False)]
        if pushed and isinstance(session, Watchable):
            tg.create_task(
                self._watcher(session, device, pushed),
                name=f"connection[{self.id}].watch[{dev_id}]",
            )

    async def _worker(self, session: Session[Any, Any]) -> None:
        agenda = self._agenda
        assert agenda is not None
        loop = asyncio.get_running_loop()
        gap = self._limits.request_gap_s
        me = asyncio.current_task()
        assert me is not None
        # Only this task runs jobs, one at a time: one watchdog bounds them all.
        self._watchdog = Watchdog(self._limits.job_timeout_s, me)
        while True:
            item = await agenda.next()
            if isinstance(item, Poll):
                state = self._state[item.job.device.id]
                # Judged at the tick's time: the agenda may hand a poll out a clock tick early.
                if not state.breaker.allows(item.due):
                    item.resume_at(state.breaker.open_until)
                    agenda.schedule(item)
                    continue
                try:
                    await self._serve(session, item.job)
                finally:
                    # A device that has just failed gets no immediate catch-up poll.
                    caught_up = state.up is not False
                    self.polls_skipped += item.after_run(loop.time(), catch_up=caught_up)
                    agenda.schedule(item)
            else:
                await self._serve(session, item)
            if me.cancelling():
                # A driver library swallowed our cancellation (Python 3.11's wait_for does
                # when its future completes at the same moment): honour it here.
                raise asyncio.CancelledError
            if gap:
                await asyncio.sleep(gap)

    async def _serve(self, session: Session[Any, Any], job: Job) -> None:
        device = job.device
        try:
            result = await self._with_retries(session, job)
        except ConnectionLost as exc:
            settle(job, exc)
            raise
        except DeviceUnavailable as exc:
            if job.call is None:
                await self._device_failed(device, exc)
            settle(job, exc)
            return
        except Exception as exc:  # WriteRejected, or a bug: the caller decides
            settle(job, exc)
            if job.done is None:
                raise
            return
        if job.call is None:
            await self._device_ok(device)
        if job.done is not None:
            if not job.done.done():
                job.done.set_result(result)
        elif result:
            await self._sink.readings(self.id, device.id, self._normalise(device, result))

    async def _with_retries(self, session: Session[Any, Any], job: Job) -> Any:
        """Try a job `1 + retries` times while the device does not answer."""
        retries = getattr(job.device, "retries", None)
        attempts = 1 + (self._limits.retries if retries is None else int(retries))
        for attempt in range(1, attempts):
            try:
                return await self._attempt(session, job)
            except ConnectionLost:
                raise
            except DeviceUnavailable as exc:
                log.debug("%s/%s: retry %d: %s", self.id, job.device.id, attempt, exc)
        return await self._attempt(session, job)

    async def _attempt(self, session: Session[Any, Any], job: Job) -> Any:
        """One try of a job, bounded; a timeout is the device not answering."""
        assert self._watchdog is not None  # set by the worker, the only caller
        try:
            with self._watchdog:
                if job.call is not None:
                    return await job.call(session)
                if job.priority is Priority.WRITE:
                    await session.write(job.device, job.points[0], job.value)  # type: ignore[arg-type]
                    return []
                return await session.read(job.device, job.points)
        except TimeoutError:
            msg = f"{job.device.id}: no answer within {self._limits.job_timeout_s} s"
            raise DeviceUnavailable(msg) from None

    def _normalise(self, device: DeviceConfig[Any], samples: Sequence[Sample]) -> Sequence[Reading]:
        if isinstance(samples, SampleBatch):
            batch = self._batches(device.id, device.points, samples)
            if batch is not None:
                return batch
        return [
            normalise(self.id, device.id, device.points[s.point], s)
            for s in samples
            if s.point in device.points
        ]

    async def _watcher(
        self, session: Watchable[Any, Any], device: DeviceConfig[Any], points: list[PointConfig]
    ) -> None:
        attempt = 0
        while True:
            try:
                async for sample in session.watch(device, points):
                    attempt = 0
                    await self._device_ok(device)
                    await self._sink.readings(self.id, device.id, self._normalise(device, [sample]))
            except ConnectionLost:
                raise
            except DeviceUnavailable as exc:
                await self._device_failed(device, exc)
            await asyncio.sleep(self._backoff.delay(attempt))
            attempt += 1

    async def _device_ok(self, device: DeviceConfig[Any]) -> None:
        state = self._state[device.id]
        state.breaker.succeeded()
        if state.up is not True:
            state.up = True
            log.info("%s/%s: device answering", self.id, device.id)
            await self._sink.availability(self.id, device.id, Availability.ONLINE, "")

    async def _device_failed(self, device: DeviceConfig[Any], exc: Exception) -> None:
        state = self._state[device.id]
        pause = state.breaker.failed(asyncio.get_running_loop().time())
        if pause is not None:
            log.debug("%s/%s: skipped for %.1f s", self.id, device.id, pause)
        if state.up is not False:
            state.up = False
            log.warning("%s/%s: device unavailable: %s", self.id, device.id, exc)
            await self._sink.availability(self.id, device.id, Availability.OFFLINE, str(exc))

    async def _connection_failed(self, exc: TransientError) -> None:
        """The resource is gone or cannot be opened: every device on it is unavailable.

        Not counted towards the circuit breaker: reopening the resource is the backoff's job.
        """
        for device in self._devices.values():
            state = self._state[device.id]
            if state.up is not False:
                state.up = False
                log.warning("%s/%s: link lost: %s", self.id, device.id, exc)
                await self._sink.availability(self.id, device.id, Availability.ABNORMAL, str(exc))


def _first_transient(group: BaseExceptionGroup[Any]) -> BaseException:
    """Unwrap a task group's failure: weather becomes one TransientError, bugs stay groups."""
    leaves = _leaves(group)
    if all(isinstance(e, TransientError | asyncio.CancelledError) for e in leaves):
        for leaf in leaves:
            if isinstance(leaf, TransientError):
                return leaf
    return group


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]
