"""The cloud's desired config into shadows, and what the field confirmed back to the cloud.

Config fields map to the desired state of the device's product services (docs/protocol.md): a
product with one service takes flat fields; with several, each field is an object keyed by
`service_id`. The answer on `config/update` carries the version of the config it answers, as
the cloud sent it (the integer 1 is echoed as 1, the text "1" as "1"), and only values read
back from the device; a refusal is answered with `refused: {property: reason}` (per service
object for products with several services).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gatewayd.cloud.dialects import native
from gatewayd.cloud.downlinks import CheckedConfig
from gatewayd.devices import NodeType
from gatewayd.products import Product, ProductCatalog, ServiceDef
from gatewayd.store.cloud_state import CloudState
from gatewayd.store.errors import RegistryError
from gatewayd.store.outbox import Outbox, OutboxFull
from gatewayd.store.registry import Registry
from gatewayd.store.shadows import DesiredUpdate, ShadowStore

__all__ = ["CloudDesired", "CloudReports"]

log = logging.getLogger(__name__)


class CloudDesired:
    """Takes the valid fields of a `config` downlink into the device's desired shadow.

    Each field is checked against the device's product like a desired change of the local API
    (known, writable property; a value of its type within its bounds), one field at a time, so
    one bad field refuses that field alone. The gateway applies its own settings
    (`heartbeat_s`) at once: the value taken is its reported value too, confirmed on
    `config/update` through `reports`.

    Args:
        registry: to find the device's product.
        products: the product catalogue.
        shadows: where desired state goes (the reconciler follows its change feed).
        reports: answers on `config/update` for the gateway's own settings.
    """

    def __init__(
        self,
        registry: Registry,
        products: ProductCatalog,
        shadows: ShadowStore,
        reports: CloudReports | None = None,
    ) -> None:
        self._registry = registry
        self._products = products
        self._shadows = shadows
        self._reports = reports

    async def check_config(self, device_id: str, fields: Mapping[str, Any]) -> CheckedConfig:
        """Sort the fields into those the device's product takes and those it refuses."""
        product = await self._product(device_id)
        if isinstance(product, str):
            return CheckedConfig(refused=dict.fromkeys(fields, product))
        taken: dict[str, Any] = {}
        refused: dict[str, Any] = {}
        if len(product.services) == 1:
            taken, refused = _sort(product.services[0], fields)
            return CheckedConfig(taken, refused)
        for key, value in fields.items():
            service = product.service(key)
            if service is None:
                refused[key] = f"product {product.product_id} has no service {key!r}"
            elif not isinstance(value, dict):
                refused[key] = f"must be an object of service {key}'s properties"
            else:
                ok, bad = _sort(service, value)
                if ok or not bad:
                    taken[key] = ok
                if bad:
                    refused[key] = bad
        return CheckedConfig(taken, refused)

    async def apply_config(self, device_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Apply checked fields (all or none); returns them refused if that failed."""
        product = await self._product(device_id)
        if isinstance(product, str):
            return dict.fromkeys(fields, product)
        if len(product.services) == 1:
            updates = [DesiredUpdate(product.services[0].service_id, dict(fields))]
        else:
            updates = [DesiredUpdate(key, value) for key, value in fields.items()]
        try:
            await self._shadows.update_desired(device_id, updates, field_prefix="config")
        except RegistryError as exc:
            log.warning("%s: config not applied: %s", device_id, exc)
            if len(product.services) == 1:
                return dict.fromkeys(fields, str(exc))
            return {u.service_id: dict.fromkeys(u.desired, str(exc)) for u in updates}
        device = await self._registry.find(device_id)
        if device is not None and device.node_type is NodeType.GATEWAY:
            await self._confirm_own(device_id, updates)
        return {}

    async def _confirm_own(self, device_id: str, updates: list[DesiredUpdate]) -> None:
        """The gateway's own settings take effect as stored: reported, and confirmed."""
        for update in updates:
            props = {k: v for k, v in update.desired.items() if v is not None}
            if not props:
                continue
            try:
                shadow = await self._shadows.report(device_id, update.service_id, props)
            except RegistryError as exc:
                log.warning("%s: own setting not reported: %s", device_id, exc)
                continue
            confirmed = {k: shadow.reported[k].value for k in props if k in shadow.reported}
            if self._reports is not None and confirmed:
                await self._reports.reported(device_id, update.service_id, confirmed)

    async def _product(self, device_id: str) -> Product | str:
        """The device's product, or why no field of a config for it can be taken."""
        device = await self._registry.find(device_id)
        if device is None:
            return f"no device {device_id!r} on this gateway"
        product = self._products.get(device.product_id)
        if product is None or not product.services:
            return f"product {device.product_id!r} has no services on this gateway"
        return product


def _sort(service: ServiceDef, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(taken, refused) properties of one service: refused ones with the reason."""
    taken: dict[str, Any] = {}
    refused: dict[str, str] = {}
    for name, value in values.items():
        prop = service.property(name)
        if prop is None:
            refused[name] = f"service {service.service_id} has no property {name!r}"
        elif value is None:
            taken[name] = None  # deletes the desired value, as on the local API
        elif not prop.writable:
            refused[name] = "the property is read-only"
        else:
            try:
                prop.check(value)
            except ValueError as exc:
                refused[name] = str(exc)
            else:
                taken[name] = value
    return taken, refused


class CloudReports:
    """A ReportListener that answers on `config/update` through the outbox.

    Args:
        outbox: where the answer goes.
        state: the stored config version being answered.
        products: to shape fields like the product (flat, or per service).
        registry: to find the device's product.
    """

    def __init__(
        self, outbox: Outbox, state: CloudState, products: ProductCatalog, registry: Registry
    ) -> None:
        self._outbox = outbox
        self._state = state
        self._products = products
        self._registry = registry

    async def reported(self, device_id: str, service_id: str, props: Mapping[str, Any]) -> None:
        """The device confirmed these values."""
        await self._answer(device_id, await self._shape(device_id, service_id, dict(props)))

    async def refused(self, device_id: str, service_id: str, prop: str, reason: str) -> None:
        """The device refused a value."""
        shaped = await self._shape(device_id, service_id, {prop: reason})
        await self._answer(device_id, {"refused": shaped})

    async def _shape(
        self, device_id: str, service_id: str, props: dict[str, Any]
    ) -> dict[str, Any]:
        device = await self._registry.find(device_id)
        product = self._products.get(device.product_id) if device is not None else None
        if product is not None and len(product.services) > 1:
            return {service_id: props}
        return props

    async def _answer(self, device_id: str, fields: dict[str, Any]) -> None:
        desired = await self._state.desired_config(device_id)
        body = {
            "version": desired["sent_version"] if desired else None,  # as the cloud sent it
            "last_updated": native.iso_timestamp(datetime.now(UTC)),
            **fields,
        }
        try:
            await self._outbox.append(device_id, "config/update", native.encode_json(body))
        except OutboxFull as exc:
            log.error("%s: config/update not queued: %s", device_id, exc)  # noqa: TRY400
        except RegistryError as exc:  # pragma: no cover - find() does not raise
            log.warning("%s: %s", device_id, exc)
