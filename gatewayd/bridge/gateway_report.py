"""The gateway reports itself: its own telemetry every `heartbeat_s`, and that setting as applied.

The period is the gateway's desired `heartbeat_s` (the cloud's config, or the local API's
shadow), else its product's default, else `DEFAULT_HEARTBEAT_S`. Desired state is looked at
every `RECHECK_S`, so a new period applies within a second, without a restart; the next report
then falls due one new period after the last one. Each applied period is told to the cloud on
`cloud_settings/update` (at start and on every change) and recorded as the gateway's reported
`heartbeat_s`.

A report is one telemetry record of the gateway's device id through the outbox, like any
device's: uptime, start time, the outbox's depth and size, records dropped, reconnects of the
link and field connections down. Each value is checked against the gateway's product; a field
the product does not declare, or a value it refuses, is left out (logged once). One record per
period, and never on the field's hot path.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gatewayd.cloud.dialects import native
from gatewayd.health import Health, State
from gatewayd.products import ProductCatalog, ServiceDef
from gatewayd.store.errors import RegistryError
from gatewayd.store.outbox import Outbox, OutboxFull
from gatewayd.store.shadows import ShadowStore

__all__ = ["DEFAULT_HEARTBEAT_S", "HEARTBEAT", "RECHECK_S", "GatewayReport"]

log = logging.getLogger(__name__)

HEARTBEAT = "heartbeat_s"
DEFAULT_HEARTBEAT_S = 300  # without a product that names a default
RECHECK_S = 1.0  # how often desired heartbeat_s is looked at


class GatewayReport:
    """The gateway's own status report and its period.

    Args:
        gateway_id: the gateway's device id.
        product_id: the gateway's product.
        products: the product catalogue (the gateway's may be missing: nothing is checked).
        outbox: where the records go.
        shadows: the gateway's desired `heartbeat_s`, and where the applied one is reported.
        health: the field connections' components (`connection[...]`).
        reconnects: MQTT sessions after the first so far (0 without a cloud link).
        started: when the daemon started.
    """

    def __init__(  # noqa: PLR0913, PLR0917 - every argument is an injected collaborator
        self,
        gateway_id: str,
        product_id: str,
        products: ProductCatalog,
        outbox: Outbox,
        shadows: ShadowStore,
        health: Health,
        reconnects: Callable[[], int],
        *,
        started: datetime | None = None,
    ) -> None:
        self._gateway_id = gateway_id
        self._service = _service_with(products, product_id, HEARTBEAT)
        self._product_known = product_id in products
        self._outbox = outbox
        self._shadows = shadows
        self._health = health
        self._reconnects = reconnects
        self._started = started or datetime.now(UTC)
        self._started_mono = time.monotonic()
        self._warned: set[str] = set()
        self.period_s = self._default_period()
        self.reports = 0  # records put so far

    async def run(self) -> None:
        """Report now, then every period; apply a new period as soon as it is seen."""
        loop = asyncio.get_running_loop()
        self.period_s = await self._desired_period()
        await self._applied()
        while True:
            last = loop.time()
            await self._report()
            while True:
                due = last + self.period_s
                await asyncio.sleep(max(0.0, min(due - loop.time(), RECHECK_S)))
                period = await self._desired_period()
                if period != self.period_s:
                    log.info("gateway heartbeat_s: %s -> %s", self.period_s, period)
                    self.period_s = period
                    await self._applied()
                    continue
                if loop.time() >= due:
                    break

    def values(self, stats_records: int, stats_bytes: int, dropped: int) -> dict[str, Any]:
        """The report's fields before the product check."""
        connections_down = sum(
            1
            for c in self._health.components()
            if c.name.startswith("connection[") and c.state in {State.DOWN, State.FAILED}
        )
        return {
            "uptime_s": int(time.monotonic() - self._started_mono),
            "started_at": native.iso_timestamp(self._started),
            "outbox_records": stats_records,
            "outbox_bytes": stats_bytes,
            "records_dropped": dropped,
            "link_reconnects": self._reconnects(),
            "connections_down": connections_down,
        }

    async def _report(self) -> None:
        try:
            stats = await self._outbox.stats()
        except sqlite3.Error as exc:  # the disk refuses reads: the rest is still worth sending
            log.warning("gateway report: outbox figures unknown: %s", exc)
            values = self.values(0, 0, 0)
            for name in ("outbox_records", "outbox_bytes", "records_dropped"):
                del values[name]
        else:
            dropped = sum(n for by_device in stats.drops.values() for n in by_device.values())
            values = self.values(stats.records, stats.bytes, dropped)
        checked = self._checked(values)
        now = datetime.now(UTC)
        try:
            await self._outbox.put(self._gateway_id, "telemetry", native.telemetry(now, checked))
        except OutboxFull as exc:
            log.warning("gateway report not stored: %s", exc)
            return
        self.reports += 1
        if self._service is not None:
            self._shadows.note_reported(self._gateway_id, self._service.service_id, checked, now)

    def _checked(self, values: dict[str, Any]) -> dict[str, Any]:
        """The values the gateway's product takes (all of them without a product file)."""
        if not self._product_known:
            return values
        out: dict[str, Any] = {}
        for name, value in values.items():
            prop = self._service.property(name) if self._service is not None else None
            if prop is None:
                self._warn_once(name, "the gateway's product does not declare it")
                continue
            try:
                out[name] = prop.check(value)
            except ValueError as exc:
                self._warn_once(name, str(exc))
        return out

    async def _applied(self) -> None:
        """Tell the cloud the period now in force, and record it as reported."""
        body = native.cloud_settings_update(HEARTBEAT, self.period_s)
        try:
            await self._outbox.append(self._gateway_id, "cloud_settings/update", body)
        except OutboxFull as exc:
            log.warning("cloud_settings/update of heartbeat_s not stored: %s", exc)
        if self._service is None:
            return
        try:
            await self._shadows.record_reported(
                self._gateway_id, self._service.service_id, {HEARTBEAT: self.period_s}
            )
        except (RegistryError, sqlite3.Error) as exc:
            log.warning("gateway heartbeat_s not reported: %s", exc)

    async def _desired_period(self) -> int:
        """The desired heartbeat_s if it is one the product takes, else the default."""
        try:
            shadows = await self._shadows.get(self._gateway_id)
        except (RegistryError, sqlite3.Error) as exc:
            log.warning("gateway shadow unreadable, heartbeat_s kept: %s", exc)
            return self.period_s
        for shadow in shadows:
            want = shadow.desired.get(HEARTBEAT)
            if want is None:
                continue
            try:
                return self._check_period(want.value)
            except ValueError as exc:
                self._warn_once(HEARTBEAT, f"desired {want.value!r} not applied: {exc}")
        return self._default_period()

    def _check_period(self, value: Any) -> int:
        prop = self._service.property(HEARTBEAT) if self._service is not None else None
        checked = prop.check(value) if prop is not None else value
        if isinstance(checked, bool) or not isinstance(checked, int) or checked < 1:
            msg = f"expected a whole number of seconds of at least 1, got {value!r}"
            raise ValueError(msg)
        return checked

    def _default_period(self) -> int:
        prop = self._service.property(HEARTBEAT) if self._service is not None else None
        default = prop.default if prop is not None else None
        return default if isinstance(default, int) and default >= 1 else DEFAULT_HEARTBEAT_S

    def _warn_once(self, name: str, why: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning("gateway report: %s left out: %s", name, why)


def _service_with(products: ProductCatalog, product_id: str, prop: str) -> ServiceDef | None:
    """The service of the gateway's product that carries `prop` (the first, failing that)."""
    product = products.get(product_id)
    if product is None or not product.services:
        return None
    for service in product.services:
        if service.property(prop) is not None:
            return service
    return product.services[0]
