"""The gateway's own state: registry, shadows and products over one SQLite file."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gatewayd.errors import ConfigError
from gatewayd.products import ProductCatalog, load_products
from gatewayd.settings import Settings
from gatewayd.store.access import Trouble, classify
from gatewayd.store.db import Database, open_database
from gatewayd.store.errors import RegistryError
from gatewayd.store.registry import Registry
from gatewayd.store.shadows import ShadowStore
from gatewayd.store.sync import SyncReport, sync_configured

if TYPE_CHECKING:
    from gatewayd.health import Component

log = logging.getLogger(__name__)

__all__ = ["STATE_FILE", "Store", "open_store"]

STATE_FILE = "state.db"


@dataclass(frozen=True, slots=True)
class Store:
    """Everything the daemon keeps about the devices it manages."""

    db: Database
    products: ProductCatalog
    registry: Registry
    shadows: ShadowStore
    sync: SyncReport


@asynccontextmanager
async def open_store(
    settings: Settings, *, health: Component | None = None
) -> AsyncIterator[Store]:
    """Load products, open the state database, register the gateway and sync YAML devices.

    While the block runs, noted reported values are flushed every `shadows.reported_flush_ms`;
    what is still noted at the end is written before the database closes. Writes that fail
    (a full disk) are kept and retried, and shown as a problem of `health` meanwhile.

    Raises:
        ConfigError: bad product files, an unusable database, or a gateway identity that
            breaks the registry rules.
    """
    products = load_products(settings.products)
    async with open_database(settings.state_dir / STATE_FILE) as db:
        db.health = health
        if db.in_memory is not None and health is not None:
            health.degrade(
                "state.memory",
                f"state database {db.path} cannot be created ({db.in_memory}): kept in memory "
                "for this run; restart gatewayd once the disk has room",
            )
        shadows = ShadowStore(db, products, flush_ms=settings.shadows.reported_flush_ms)
        registry = Registry(db, products, shadows)
        try:
            report = await _register(registry, settings, shadows)
        except sqlite3.OperationalError as exc:
            if classify(exc) is not Trouble.DISK:
                raise
            # A full disk at start: the registry stays as the last run left it, the daemon
            # runs (the outbox holds what it cannot write); a restart syncs again.
            log.error("state database not updated at start (%s): the registry is as it was", exc)  # noqa: TRY400
            report = SyncReport()
        try:
            async with asyncio.TaskGroup() as tg:
                flusher = tg.create_task(shadows.run(), name="shadows.flush")
                try:
                    yield Store(db, products, registry, shadows, report)
                finally:
                    flusher.cancel()
        finally:
            await shadows.close()


async def _register(registry: Registry, settings: Settings, shadows: ShadowStore) -> SyncReport:
    gw = settings.gateway
    try:
        await registry.register_gateway(gw.effective_device_id, gw.node_id, gw.product_id, gw.name)
    except RegistryError as exc:
        raise ConfigError(str(exc)) from exc
    return await sync_configured(registry, settings, shadows)
