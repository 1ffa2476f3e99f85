"""Every registry rule of IoTDA's registration, each with a value refused and a value accepted.

Requests go through the same path as the REST API: the request model, then the registry
with a real SQLite file and the test products.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gatewayd.api.errors import validated
from gatewayd.devices import DeviceCreate
from gatewayd.store import open_store
from gatewayd.store.errors import InvalidField, ParentNotFound, RegistryError, UnknownProduct
from tests.store_fixtures import WATER, store_settings

BASE: dict[str, Any] = {"node_id": "ABC123456789", "product_id": WATER}
HEX = "0123456789abcdef" * 4

# (field, refused value, accepted value, error type)
RULES: list[tuple[str, Any, Any, type[RegistryError]]] = [
    ("device_id", "d" * 129, "d" * 128, InvalidField),
    ("device_id", "dev/1", "dev_1-A", InvalidField),
    ("device_id", "", "d", InvalidField),
    ("node_id", "n" * 65, "n" * 64, InvalidField),
    ("node_id", "aa:bb:cc", "aa-bb_cc", InvalidField),
    ("node_id", "", "n", InvalidField),
    ("device_name", "x" * 257, "x" * 256, InvalidField),
    ("device_name", "meter<1>", "Zähler (1) #2, 'A'&B %@!?-_.", InvalidField),
    ("device_name", "", "d", InvalidField),
    ("product_id", "p" * 37, WATER, InvalidField),
    ("product_id", "prod.1", WATER, InvalidField),
    ("product_id", "no-such-product", WATER, UnknownProduct),
    ("description", "d" * 2049, "d" * 2048, InvalidField),
    ("description", "semi;colon", "watermeter device", InvalidField),
    ("gateway_id", "g" * 129, "gatewayd_gw1", InvalidField),
    ("gateway_id", "gw/1", "gatewayd_gw1", InvalidField),
    ("gateway_id", "nobody", "gatewayd_gw1", ParentNotFound),
    ("app_id", "a" * 37, "a" * 36, InvalidField),
    ("app_id", "app id", "jeQDJQZltU8iKgFFoW060F5SGZka", InvalidField),
    ("extension_info", {"k": "v" * 1020}, {"k": "v" * 1014}, InvalidField),
    ("extension_info", "text", {"aaa": "xxx", "bbb": 0}, InvalidField),
    ("auth_info.auth_type", "TOKEN", "CERTIFICATES", InvalidField),
    ("auth_info.secret", "s" * 7, "s" * 8, InvalidField),
    ("auth_info.secret", "s" * 33, "s" * 32, InvalidField),
    ("auth_info.secret", "pass word", "pass_word-1", InvalidField),
    ("auth_info.fingerprint", HEX[:39], HEX[:40], InvalidField),
    ("auth_info.fingerprint", HEX[:41], HEX[:64], InvalidField),
    ("auth_info.fingerprint", "g" * 40, "ABCDEF" + HEX[:34], InvalidField),
    ("auth_info.secure_access", "yes", False, InvalidField),
    ("auth_info.timeout", -1, 0, InvalidField),
    ("auth_info.timeout", 2147483648, 2147483647, InvalidField),
    ("auth_info.timeout", "5", 5, InvalidField),
    ("shadow.0.service_id", "s" * 33, "WaterMeter", InvalidField),
    ("shadow.0.service_id", "Nope", "WaterMeter", InvalidField),
    ("shadow.0.desired", "hot", {"temperature": 60}, InvalidField),
    ("shadow.0.desired.temperature", 151, 150, InvalidField),
    ("shadow.0.desired.temperature", "hot", "60", InvalidField),
    ("shadow.0.desired.flow", 1.5, None, InvalidField),
    ("shadow.0.desired.colour", "red", None, InvalidField),
    ("colour", "red", None, InvalidField),
]

CERT_FIELDS = {"auth_info.fingerprint", "auth_info.auth_type"}


def _request(field: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    if field.startswith("auth_info."):
        kind = "CERTIFICATES" if field in CERT_FIELDS else "SECRET"
        body["auth_info"] = {"auth_type": kind}
    if field.startswith("shadow."):
        body["shadow"] = [{"service_id": "WaterMeter", "desired": {}}]
    if value is None:
        return body  # the accepted variant of "unknown field": leave it out
    target: Any = body
    parts = field.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    target[parts[-1]] = value
    return body


@pytest.mark.parametrize(
    ("field", "bad", "good", "error"),
    RULES,
    ids=[f"{f}={str(b)[:12]}" for f, b, _, _ in RULES],
)
async def test_rule(tmp_path, field, bad, good, error):
    async with open_store(store_settings(tmp_path)) as store:

        async def create(body):
            return await store.registry.create(validated(DeviceCreate, body))

        with pytest.raises(error) as info:
            await create(_request(field, bad))
        assert info.value.field == field, str(info.value)
        assert field in str(info.value)
        device = await create(_request(field, good))
        assert (await store.registry.get(device.device_id)) == device


async def test_certificate_and_secret_do_not_mix(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        body = {**BASE, "auth_info": {"auth_type": "CERTIFICATES", "secret": "s" * 8}}
        with pytest.raises(InvalidField) as info:
            validated(DeviceCreate, body)
        assert info.value.field == "auth_info.secret"
        body = {**BASE, "auth_info": {"auth_type": "SECRET", "fingerprint": HEX[:40]}}
        with pytest.raises(InvalidField) as info:
            validated(DeviceCreate, body)
        assert info.value.field == "auth_info.fingerprint"
        ok = {**BASE, "auth_info": {"auth_type": "CERTIFICATES"}}
        device = await store.registry.create(validated(DeviceCreate, ok))
        assert device.fingerprint is None  # taken from the first connection later
