"""The cloud's desired config into shadows, and what the field confirmed back to the cloud.

Config fields map to the desired state of the device's product services (docs/protocol.md): a
product with one service takes flat fields; with several, each field is an object keyed by
`service_id`. The answer on `config/update` carries the version of the config it answers, as
the cloud sent it (the integer 1 is echoed as 1, the text "1" as "1"), and only values read
back from the device; a refusal is answered with `refused: {property: reason}`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gatewayd.cloud.dialects import native
from gatewayd.products import ProductCatalog
from gatewayd.store.cloud_state import CloudState
from gatewayd.store.errors import RegistryError
from gatewayd.store.outbox import Outbox, OutboxFull
from gatewayd.store.registry import Registry
from gatewayd.store.shadows import DesiredUpdate, ShadowStore

__all__ = ["CloudDesired", "CloudReports"]

log = logging.getLogger(__name__)


class CloudDesired:
    """Applies an accepted `config` downlink to the device's desired shadow.

    Args:
        registry: to find the device's product.
        products: the product catalogue.
        shadows: where desired state goes (the reconciler follows its change feed).
    """

    def __init__(self, registry: Registry, products: ProductCatalog, shadows: ShadowStore) -> None:
        self._registry = registry
        self._products = products
        self._shadows = shadows

    async def apply_config(self, device_id: str, fields: Mapping[str, Any]) -> None:
        """Turn config fields into desired updates; a bad field is logged and nothing applied."""
        device = await self._registry.find(device_id)
        if device is None:
            log.warning("config for unknown device %s ignored", device_id)
            return
        product = self._products.get(device.product_id)
        if product is None or not product.services:
            log.warning("%s: config ignored: product %s has no services", device_id,
                        device.product_id)  # fmt: skip
            return
        if len(product.services) == 1:
            updates = [DesiredUpdate(product.services[0].service_id, dict(fields))]
        else:
            updates = []
            for key, value in fields.items():
                if product.service(key) is None or not isinstance(value, dict):
                    log.warning("%s: config field %r is not a service object of product %s",
                                device_id, key, product.product_id)  # fmt: skip
                    return
                updates.append(DesiredUpdate(key, value))
        try:
            await self._shadows.update_desired(device_id, updates, field_prefix="config")
        except RegistryError as exc:
            log.warning("%s: config refused: %s", device_id, exc)


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
        del service_id
        await self._answer(device_id, {"refused": {prop: reason}})

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
