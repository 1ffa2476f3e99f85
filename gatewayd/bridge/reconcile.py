"""Desired state becomes field writes; reported follows only what the device confirmed.

For every desired change the delta (desired != reported) that someone asked for is written
point by point through the connection's runner, ahead of polls, then read back. A value that
only a product default put in desired is never written (`ServiceShadow.writes()`): the
device's own setting stands until the cloud, the API, a command or the YAML asks otherwise.
Only the value read back is reported: if the device clamps or ignores a value, reported says
so and the delta stays visible. A refusal (WriteRejected) is reported as refused and not
retried until the desired state changes again; a device that does not answer is retried with
backoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any, Protocol

from gatewayd.backoff import Backoff
from gatewayd.bridge.points import BoundDevice, BoundPoint, PointIndex
from gatewayd.bridge.runner import ConnectionRunner
from gatewayd.errors import DeviceUnavailable, WriteRejected
from gatewayd.store.errors import RegistryError
from gatewayd.store.shadows import ShadowStore

__all__ = ["Reconciler", "ReportListener"]

log = logging.getLogger(__name__)


class ReportListener(Protocol):
    """Told what the field confirmed or refused (the uplink sends it to the cloud)."""

    async def reported(self, device_id: str, service_id: str, props: Mapping[str, Any]) -> None:
        """The device confirmed these values (read back after the write)."""
        ...

    async def refused(self, device_id: str, service_id: str, prop: str, reason: str) -> None:
        """The device refused to take a desired value."""
        ...


class Reconciler:
    """Applies desired state to configured field devices.

    Args:
        shadows: desired and reported state; its change feed drives this.
        index: which point carries which property.
        runners: connection runners by connection id.
        listener: told of confirmations and refusals, if anyone listens.
        backoff: retry policy while a device does not answer.
    """

    def __init__(
        self,
        shadows: ShadowStore,
        index: PointIndex,
        runners: Mapping[str, ConnectionRunner],
        listener: ReportListener | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._shadows = shadows
        self._index = index
        self._runners = runners
        self._listener = listener
        self._backoff = backoff or Backoff(initial_s=1.0, max_s=60.0)
        self._dirty: set[str] = set()
        self._active: set[str] = set()
        self._warned: set[tuple[str, str]] = set()

    async def run(self) -> None:
        """Follow desired changes until cancelled; one task per device being written."""
        async with asyncio.TaskGroup() as tg:
            async for device_id, _service in self._shadows.desired_changes():
                bound = self._index.by_id(device_id)
                if bound is None or bound.connection not in self._runners:
                    continue  # not a field device of ours: desired is kept, nothing to write
                self._dirty.add(device_id)
                if device_id not in self._active:
                    self._active.add(device_id)
                    tg.create_task(self._device(bound), name=f"reconcile[{device_id}]")

    async def _device(self, bound: BoundDevice) -> None:
        attempt = 0
        try:
            while bound.device_id in self._dirty:
                self._dirty.discard(bound.device_id)
                try:
                    await self._apply(bound)
                    attempt = 0
                except DeviceUnavailable as exc:
                    delay = self._backoff.delay(attempt)
                    attempt += 1
                    log.info("%s: desired state waits for the device (%s)", bound.device_id, exc)
                    self._dirty.add(bound.device_id)
                    await asyncio.sleep(delay)
        finally:
            self._active.discard(bound.device_id)

    async def _apply(self, bound: BoundDevice) -> None:
        runner = self._runners[bound.connection]
        for shadow in await self._shadows.get(bound.device_id):
            for prop, want in shadow.writes().items():
                target = bound.by_property.get((shadow.service_id, prop))
                if target is None or not target.point.writable:
                    self._warn_once(bound.device_id, prop, "no writable point carries it")
                    continue
                await self._write_one(runner, bound, target, want)

    async def _write_one(
        self, runner: ConnectionRunner, bound: BoundDevice, target: BoundPoint, want: Any
    ) -> None:
        try:
            confirmed = await runner.write_confirmed(bound.key, target.point.id, want)
        except WriteRejected as exc:
            log.warning("%s: %s=%r refused: %s", bound.device_id, target.property, want, exc)
            if self._listener is not None:
                await self._listener.refused(
                    bound.device_id, target.service_id, target.property, str(exc)
                )
            return
        got = confirmed.value
        if not _same(got, want):
            log.warning("%s: wrote %s=%r, device reads back %r", bound.device_id,
                        target.property, want, got)  # fmt: skip
        props = {target.property: got.hex() if isinstance(got, bytes) else got}
        try:
            await self._shadows.report(bound.device_id, target.service_id, props)
        except RegistryError as exc:
            self._warn_once(bound.device_id, target.property, str(exc))
            return
        if self._listener is not None:
            await self._listener.reported(bound.device_id, target.service_id, props)

    def _warn_once(self, device_id: str, prop: str, why: str) -> None:
        if (device_id, prop) not in self._warned:
            self._warned.add((device_id, prop))
            log.warning("%s: desired %s cannot be applied: %s", device_id, prop, why)


def _same(got: Any, want: Any) -> bool:
    numbers = (int, float)
    if isinstance(got, numbers) and isinstance(want, numbers) and not isinstance(got, bool):
        return math.isclose(float(got), float(want), rel_tol=1e-6, abs_tol=1e-9)
    return bool(got == want)
