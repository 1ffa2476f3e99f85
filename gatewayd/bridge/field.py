"""What the field says becomes registry status, reported shadow state and telemetry.

Readings pass the point's reporting rule (deadband, heartbeat) before they go downstream to
telemetry; a point with no rule configured reports every reading.

Values are checked against the device's product here, once for every driver: a value the
product does not allow (out of range, wrong type) is passed on with BAD quality and never
reaches the reported shadow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from gatewayd.batch import ReadingBatch
from gatewayd.bridge.points import BoundDevice, PointIndex
from gatewayd.bridge.reporting import ReportPolicy
from gatewayd.bridge.sink import BridgeSink
from gatewayd.devices import DeviceStatus
from gatewayd.model import Availability, Quality, Reading, Value
from gatewayd.store.errors import RegistryError
from gatewayd.store.registry import Registry
from gatewayd.store.shadows import ShadowStore

__all__ = ["FieldState"]

log = logging.getLogger(__name__)


class FieldState:
    """A BridgeSink that keeps the registry and the reported shadows current.

    Args:
        index: configured points bound to registry devices and product properties.
        registry: device status.
        shadows: reported state (written only when a value changed).
        downstream: where checked readings go next (telemetry), if anywhere.
        clock: monotonic time for the reporting policy (injectable for tests).
    """

    def __init__(
        self,
        index: PointIndex,
        registry: Registry,
        shadows: ShadowStore,
        downstream: BridgeSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._index = index
        self._registry = registry
        self._shadows = shadows
        self._downstream = downstream
        # per device: the last value noted for each (service, property), by `_one_by_one`
        self._last: dict[str, dict[tuple[str, str], Any]] = {}
        self._complained: set[tuple[str, str]] = set()
        self._policy = ReportPolicy()
        self._clock = clock
        self._plans: dict[tuple[str, tuple[str, ...]], _Columns | None] = {}
        # per device, per point set: the values of the last batch (see `_columns`)
        self._seen: dict[str, dict[tuple[str, ...], list[Value | None]]] = {}
        # per device, per point set: the latest batch not yet noted, and the values last noted
        self._held: dict[str, dict[tuple[str, ...], _Held]] = {}
        self._noted: dict[str, dict[tuple[str, ...], list[Value | None]]] = {}
        self._wake_shadows = shadows.add_reported_source(self._pull)

    async def readings(self, connection: str, device: str, batch: Sequence[Reading]) -> None:
        """Check values against the product, update reported shadows, pass them on."""
        bound = self._index.by_key(connection, device)
        if bound is None:
            return
        plan = self._plan(bound, batch.points) if isinstance(batch, ReadingBatch) else None
        if plan is not None:
            assert isinstance(batch, ReadingBatch)
            columns, changed = self._columns(bound, plan, batch)
            await self._store(connection, device, bound.device_id, changed, columns)
        else:
            checked, changed = self._one_by_one(bound, batch)
            await self._store(connection, device, bound.device_id, changed, checked)

    def _one_by_one(
        self, bound: BoundDevice, batch: Sequence[Reading]
    ) -> tuple[list[Reading], dict[str, dict[str, Any]]]:
        """Product check, reporting rule and change detection, reading by reading."""
        self._seen.pop(bound.device_id, None)  # the column memory may now be stale
        self._pull(bound.device_id)  # what this device holds is older than what follows
        self._noted.pop(bound.device_id, None)
        last = self._last.setdefault(bound.device_id, {})
        checked: list[Reading] = []
        changed: dict[str, dict[str, Any]] = {}
        now = self._clock()
        for raw in batch:
            point = bound.by_point.get(raw.ref.point)
            if point is None:
                continue
            reading = raw  # no product, or no value: nothing to check
            if bound.product is not None and raw.value is not None:
                value = self._check(bound, point.service_id, point.property, raw.value)
                if value is _BAD:
                    reading = replace(raw, quality=Quality.BAD)
                elif _differs(value, raw.value):
                    reading = replace(raw, value=value)
            rule = point.rule
            if rule is None or self._policy.accept(reading, rule, now):
                if point.property != raw.ref.point:
                    # telemetry speaks the product's names, like desired and reported state
                    reading = replace(reading, ref=replace(reading.ref, point=point.property))
                checked.append(reading)
            if reading.quality is not Quality.GOOD:
                continue
            key = (point.service_id, point.property)
            if key not in last or last[key] != reading.value:
                last[key] = reading.value
                changed.setdefault(point.service_id, {})[point.property] = _json(reading.value)
        return checked, changed

    async def _store(
        self,
        connection: str,
        device: str,
        device_id: str,
        changed: dict[str, dict[str, Any]],
        checked: Sequence[Reading],
    ) -> None:
        """Note changed values for the reported shadow, then pass the readings on.

        The shadow store writes noted values within `shadows.reported_flush_ms`, so the
        runner waits only for the outbox before it polls the device again.
        """
        for service_id, props in changed.items():
            self._shadows.note_reported(device_id, service_id, props)
        if self._downstream is not None and checked:
            await self._downstream.readings(connection, device, checked)

    def _plan(self, bound: BoundDevice, points: tuple[str, ...]) -> _Columns | None:
        key = (bound.device_id, points)
        plan = self._plans.get(key, _NO_PLAN)
        if plan is _NO_PLAN:
            plan = _Columns.make(bound, points)
            if len(self._plans) < _PLANS:
                self._plans[key] = plan
        return plan

    def _columns(
        self, bound: BoundDevice, plan: _Columns, batch: ReadingBatch
    ) -> tuple[ReadingBatch, dict[str, dict[str, Any]]]:
        """The per-reading path of `readings()` on whole columns (no reporting rules).

        Returns the batch under the product's property names, and the changed GOOD values by
        service for the reported shadow.
        """
        values, quality = batch.values, batch.quality
        if bound.product is not None:
            values, quality = self._check_columns(bound, plan, values, quality)
        out = ReadingBatch(
            batch.connection, batch.device, plan.properties, values, batch.units, batch.at, quality
        )
        seen = self._seen.setdefault(bound.device_id, {})
        last = seen.get(plan.points)
        if last is not None and last == values and quality is None:
            return out, {}  # nothing changed: the common case for slow-moving values
        seen[plan.points] = values
        self._last.pop(bound.device_id, None)  # the per-reading memory may now be stale
        if plan.service is not None and quality is None and None not in values:
            # the common case: one service, every value usable. Hold the poll; the shadow
            # store pulls the latest one per flush, so nine polls in ten cost no shadow work.
            held = self._held.setdefault(bound.device_id, {})
            held[plan.points] = _Held(plan, values, batch.at[-1])
            self._wake_shadows()
            return out, {}
        self._pull(bound.device_id)  # what this device holds is older than what follows
        self._noted.pop(bound.device_id, None)  # noted below, past the held path's memory
        changed: dict[str, dict[str, Any]] = {}
        for i, value in enumerate(values):
            if value is None or (quality is not None and quality[i] is not Quality.GOOD):
                continue
            if last is not None and last[i] == value:
                continue
            changed.setdefault(plan.services[i], {})[plan.properties[i]] = _json(value)
        return out, changed

    def _pull(self, device_id: str | None = None) -> None:
        """Note the held polls (of one device, or all) that differ from what was noted."""
        if device_id is None:
            devices, self._held = self._held, {}
        else:
            one = self._held.pop(device_id, None)
            devices = {device_id: one} if one else {}
        for dev, polls in devices.items():
            noted = self._noted.setdefault(dev, {})
            for points, held in polls.items():
                names, values, last = held.plan.properties, held.values, noted.get(points)
                olds = last if last is not None else [_NEVER] * len(values)
                props = {
                    p: _json(v) for p, v, old in zip(names, values, olds, strict=True) if v != old
                }
                noted[points] = values
                if props:
                    service = held.plan.service
                    assert service is not None  # only one-service polls are held
                    self._shadows.note_reported(dev, service, props, held.at)

    def _check_columns(
        self,
        bound: BoundDevice,
        plan: _Columns,
        values: list[Value | None],
        quality: list[Quality] | None,
    ) -> tuple[list[Value | None], list[Quality] | None]:
        """Product checks, value by value; copies the columns only when one changes."""
        out_values, out_quality = values, quality
        for i, value in enumerate(values):
            if value is None:
                continue
            checked = self._check(bound, plan.services[i], plan.properties[i], value)
            if checked is _BAD:
                if out_quality is None or out_quality is quality:
                    out_quality = list(quality or [Quality.GOOD] * len(values))
                out_quality[i] = Quality.BAD
            elif _differs(checked, value):
                if out_values is values:
                    out_values = list(values)
                out_values[i] = checked
        return out_values, out_quality

    async def availability(
        self, connection: str, device: str, state: Availability, reason: str
    ) -> None:
        """The registry status follows the field: ONLINE, OFFLINE or ABNORMAL."""
        bound = self._index.by_key(connection, device)
        if bound is not None:
            if state is not Availability.ONLINE:
                for point_id in bound.by_point:  # report the first value after recovery
                    self._policy.forget(f"{connection}/{device}/{point_id}")
            status = DeviceStatus(state.value)
            try:
                await self._registry.set_status(bound.device_id, status)
            except RegistryError as exc:
                self._complain(bound.device_id, "status", str(exc))
        if self._downstream is not None:
            await self._downstream.availability(connection, device, state, reason)

    def _check(self, bound: BoundDevice, service_id: str, prop: str, value: Value) -> Any:
        """The value in the form the product stores it, or `_BAD` when the product refuses it."""
        product = bound.product
        assert product is not None
        service = product.service(service_id)
        definition = service.property(prop) if service is not None else None
        if definition is None:
            message = f"product {product.product_id} has no property {prop}"
            self._complain(bound.device_id, prop, message)
            return _BAD
        try:
            return definition.check(_json(value))
        except ValueError as exc:
            self._complain(bound.device_id, prop, f"{prop}: {exc}")
            return _BAD

    def _complain(self, device_id: str, what: str, message: str) -> None:
        if (device_id, what) not in self._complained:
            self._complained.add((device_id, what))
            log.warning("%s: %s", device_id, message)


@dataclass(slots=True)
class _Held:
    """A poll waiting for the shadow store to pull it."""

    plan: _Columns
    values: list[Value | None]
    at: datetime


class _Columns:
    """What the column path needs of a point set: names and services, once per set."""

    __slots__ = ("points", "properties", "service", "services")

    def __init__(
        self, points: tuple[str, ...], properties: tuple[str, ...], services: tuple[str, ...]
    ) -> None:
        self.points = points
        self.properties = properties
        self.services = services
        # the one service of every point, if they share one
        self.service = services[0] if services and len(set(services)) == 1 else None

    @classmethod
    def make(cls, bound: BoundDevice, points: tuple[str, ...]) -> _Columns | None:
        """None when a point is unknown or reports by rule: those take the per-reading path."""
        found = [bound.by_point.get(p) for p in points]
        if any(b is None or b.rule is not None for b in found):
            return None
        bps = [b for b in found if b is not None]
        properties = tuple(b.property for b in bps)
        if properties == points:
            properties = points  # one tuple object shared by every batch of this set
        return cls(points, properties, tuple(b.service_id for b in bps))


_NO_PLAN = _Columns((), (), ())
_NEVER = object()  # differs from every value: nothing noted yet
_PLANS = 4096
_BAD = object()  # a value the product refuses


def _differs(checked: Any, value: Any) -> bool:
    """Whether the product's form of a value is another value or another type (21 for 21.0)."""
    return bool(checked != value) or type(checked) is not type(value)


def _json(value: Any) -> Any:
    """Bytes have no JSON form; send them as hex."""
    return value.hex() if isinstance(value, bytes) else value
