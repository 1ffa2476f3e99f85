"""Devices declared in the YAML, brought into the registry at every start.

The sync is idempotent: ids come from `gatewayd.identity.child_identity`, so the same YAML
gives the same records. A device that came from the YAML and is no longer declared is removed
with its shadow (docs/decisions.md), unless devices created through the API sit below it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gatewayd.devices import DeviceCreate
from gatewayd.driver import DeviceConfig
from gatewayd.identity import child_identity
from gatewayd.settings import Settings
from gatewayd.store.errors import RegistryError, invalid_request
from gatewayd.store.registry import Registry
from gatewayd.store.shadows import ShadowStore

__all__ = ["SyncReport", "sync_configured"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SyncReport:
    """What a sync did."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # undeclared, but API devices sit below
    refused: dict[str, str] = field(default_factory=dict)  # config path -> reason


async def sync_configured(
    registry: Registry, settings: Settings, shadows: ShadowStore | None = None
) -> SyncReport:
    """Register, update and remove devices so the registry matches `connections`.

    With `shadows`, each device's `desired:` values become asked-for desired state (see
    `ShadowStore.configure_desired`); nothing else here ever leads to a field write.
    """
    if registry.gateway_id is None:
        msg = "register the gateway before syncing configured devices"
        raise RuntimeError(msg)
    report = SyncReport()
    declared: set[str] = set()
    for conn_id, conn in settings.connections.items():
        devices: dict[str, DeviceConfig[Any]] = getattr(conn, "devices", {})
        ids = {key: child_identity(conn, dev).device_id for key, dev in devices.items()}
        # Parents first: a device's parent is on the same connection (checked at load).
        for key, dev in sorted(devices.items(), key=lambda kv: _depth(devices, kv[0])):
            path = f"connections.{conn_id}.devices.{key}"
            ident = child_identity(conn, dev)
            declared.add(ident.device_id)
            registry.declared({ident.device_id: path})
            parent = ids[dev.parent] if dev.parent else registry.gateway_id
            try:
                request = DeviceCreate(
                    device_id=ident.device_id,
                    node_id=ident.node_id,
                    product_id=ident.product_id,
                    device_name=dev.name,
                    gateway_id=parent,
                )
                await _apply(registry, request, report)
            except ValidationError as exc:
                _refuse(report, path, str(invalid_request(exc)))
                continue
            except RegistryError as exc:
                _refuse(report, path, str(exc))
                continue
            await _configure_desired(shadows, ident.device_id, dev, f"{path}.desired")
    await _remove_undeclared(registry, declared, report)
    log.info(
        "configured devices: %d created, %d updated, %d unchanged, %d removed, %d refused",
        len(report.created),
        len(report.updated),
        len(report.unchanged),
        len(report.removed),
        len(report.refused),
    )
    return report


async def _apply(registry: Registry, request: DeviceCreate, report: SyncReport) -> None:
    device_id = request.effective_device_id
    existing = await registry.find(device_id)
    if existing is None:
        await registry.create(request, origin="config")
        report.created.append(device_id)
        return
    if existing.gateway_id != request.gateway_id:
        # Moving a device in the tree changes its identity towards the cloud: re-register it.
        await registry.delete(device_id, origin="config")
        await registry.create(request, origin="config")
        report.updated.append(device_id)
        return
    same = (existing.node_id, existing.product_id, existing.device_name, existing.origin) == (
        request.node_id,
        request.product_id,
        request.device_name,
        "config",
    )
    if same:
        report.unchanged.append(device_id)
        return
    await registry.update_configured(
        device_id, request.node_id, request.product_id, request.device_name
    )
    report.updated.append(device_id)


async def _configure_desired(
    shadows: ShadowStore | None, device_id: str, dev: DeviceConfig[Any], path: str
) -> None:
    """The device's YAML `desired:` by product property; a bad value is logged, not fatal."""
    if shadows is None or not dev.desired:
        return
    values = {dev.points[key].property or key: value for key, value in dev.desired.items()}
    try:
        changed = await shadows.configure_desired(device_id, values, field_prefix=path)
    except RegistryError as exc:
        log.error("%s: not applied: %s", path, exc)  # noqa: TRY400 - a configuration fault
        return
    if changed:
        log.info("%s: desired %s", path, ", ".join(f"{k}={v!r}" for k, v in changed.items()))


async def _remove_undeclared(registry: Registry, declared: set[str], report: SyncReport) -> None:
    configured = await registry.devices(origin="config")
    gone = {d.device_id for d in configured} - declared
    everything = await registry.devices()
    children: dict[str, list[str]] = {}
    for device in everything:
        if device.gateway_id != device.device_id:
            children.setdefault(device.gateway_id, []).append(device.device_id)
    # Deepest first, so a removed parent's removed children are already gone.
    for device in sorted(configured, key=lambda d: -d.level):
        if device.device_id not in gone:
            continue
        remaining = [c for c in children.get(device.device_id, []) if c not in report.removed]
        if remaining:
            log.warning(
                "device %s is no longer configured but is kept: %s sit(s) below it",
                device.device_id,
                ", ".join(remaining),
            )
            report.kept.append(device.device_id)
            continue
        await registry.delete(device.device_id, origin="config")
        report.removed.append(device.device_id)
        log.warning("device %s is no longer configured: removed with its shadow", device.device_id)


def _depth(devices: dict[str, DeviceConfig[Any]], key: str) -> int:
    """Steps from a device up to the gateway; a cycle counts as deeper than any real chain."""
    depth = 0
    parent = devices[key].parent
    while parent is not None and depth <= len(devices):
        depth += 1
        parent = devices[parent].parent
    return depth


def _refuse(report: SyncReport, path: str, reason: str) -> None:
    report.refused[path] = reason
    log.error("%s: not registered: %s", path, reason)
