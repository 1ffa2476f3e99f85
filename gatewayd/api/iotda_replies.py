"""How the IoTDA surface shows devices and shadows (IoTDA's Create a Device reply fields)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gatewayd.devices import Device, compact_time, mask, precise_time
from gatewayd.products import ProductCatalog
from gatewayd.store.shadows import PropertyValue, ServiceShadow

__all__ = ["DEVICE_SCHEMA", "LIST_SCHEMA", "SHADOW_SCHEMA", "device_reply", "shadow_reply"]


def device_reply(
    device: Device, products: ProductCatalog, *, with_auth: bool = True
) -> dict[str, Any]:
    """Every field of IoTDA's reply; secrets masked, and left out of lists entirely."""
    product = products.get(device.product_id)
    reply: dict[str, Any] = {
        "app_id": device.app_id,
        "app_name": device.app_id,
        "device_id": device.device_id,
        "node_id": device.node_id,
        "gateway_id": device.gateway_id,
        "device_name": device.device_name,
        "node_type": device.node_type.value,
        "description": device.description,
        "fw_version": device.fw_version,
        "sw_version": device.sw_version,
        "device_sdk_version": device.device_sdk_version,
        "product_id": device.product_id,
        "product_name": product.name if product else None,
        "status": device.status.value,
        "create_time": compact_time(device.create_time),
        "connection_status_update_time": precise_time(device.connection_status_update_time),
        "active_time": precise_time(device.active_time),
        "tags": [{"tag_key": k, "tag_value": v} for k, v in device.tags],
        "extension_info": device.extension_info,
    }
    if with_auth:
        reply["auth_info"] = {
            "auth_type": device.auth_type.value,
            "secret": mask(device.secret),
            "secondary_secret": None,
            "fingerprint": mask(device.fingerprint),
            "secondary_fingerprint": None,
            "secure_access": device.secure_access,
            "timeout": device.timeout,
        }
    return reply


def shadow_reply(device_id: str, shadows: list[ServiceShadow]) -> dict[str, Any]:
    """IoTDA's shadow reply: per service, desired and reported with their event times."""
    return {
        "device_id": device_id,
        "shadow": [
            {
                "service_id": s.service_id,
                "desired": _section(s.desired),
                "reported": _section(s.reported),
                "version": s.version,
            }
            for s in shadows
        ],
    }


def _section(props: Mapping[str, PropertyValue]) -> dict[str, Any]:
    latest = max((p.at for p in props.values()), default=None)
    return {
        "properties": {k: p.value for k, p in props.items()},
        "event_time": compact_time(latest) if latest else None,
    }


_NULLABLE_STR = {"type": ["string", "null"]}
DEVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **dict.fromkeys(
            (
                "app_id",
                "app_name",
                "device_name",
                "description",
                "fw_version",
                "sw_version",
                "device_sdk_version",
                "product_name",
                "connection_status_update_time",
                "active_time",
            ),
            _NULLABLE_STR,
        ),
        **{
            name: {"type": "string"}
            for name in ("device_id", "node_id", "gateway_id", "product_id", "create_time")
        },
        "node_type": {"enum": ["GATEWAY", "ENDPOINT", "UNKNOWN"]},
        "status": {"enum": ["ONLINE", "OFFLINE", "ABNORMAL", "INACTIVE", "FROZEN"]},
        "auth_info": {
            "type": "object",
            "properties": {
                "auth_type": {"enum": ["SECRET", "CERTIFICATES"]},
                "secret": _NULLABLE_STR,
                "secondary_secret": _NULLABLE_STR,
                "fingerprint": _NULLABLE_STR,
                "secondary_fingerprint": _NULLABLE_STR,
                "secure_access": {"type": "boolean"},
                "timeout": {"type": "integer"},
            },
        },
        "tags": {"type": "array", "items": {"type": "object"}},
        "extension_info": {"type": ["object", "null"]},
    },
}
LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "devices": {"type": "array", "items": DEVICE_SCHEMA},
        "page": {
            "type": "object",
            "properties": {"count": {"type": "integer"}, "marker": _NULLABLE_STR},
        },
    },
}
_SECTION = {
    "type": "object",
    "properties": {"properties": {"type": "object"}, "event_time": _NULLABLE_STR},
}
SHADOW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "device_id": {"type": "string"},
        "shadow": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "service_id": {"type": "string"},
                    "desired": _SECTION,
                    "reported": _SECTION,
                    "version": {"type": "integer"},
                },
            },
        },
    },
}
