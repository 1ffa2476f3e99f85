"""The IoTDA surface over real HTTP to the daemon's aiohttp server, with a real SQLite store."""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gatewayd.api.openapi import API_DOC_KEY
from tests.store_fixtures import ADMIN, READER, WATER, running_app, store_settings

GW = "gatewayd_gw1"
BASE = "/v5/iot/proj1/devices"
SEED_ID = "d4922d8a-6c8e-4396-852c-164aefa6638f"
SEED_PARENT = "5a332c1a-d14f-489c-a8e7-4753b1bb0872"
SEED_SHADOW = [{"service_id": "WaterMeter", "desired": {"temperature": "60"}}]
SEED_COMMON: dict[str, Any] = {
    "device_id": SEED_ID,
    "node_id": "ABC123456789",
    "device_name": "dianadevice",
    "product_id": WATER,
    "description": "watermeter device",
    "app_id": "jeQDJQZltU8iKgFFoW060F5SGZka",
    "extension_info": {"aaa": "xxx", "bbb": 0},
    "shadow": SEED_SHADOW,
}
SEED_SECRET = {
    **SEED_COMMON,
    "auth_info": {
        "auth_type": "SECRET",
        "secret": "3b935a250c50dc2c6d481d048cefdc3c",
        "secure_access": True,
    },
}
SEED_CERT = {
    **SEED_COMMON,
    "auth_info": {
        "auth_type": "CERTIFICATES",
        "fingerprint": "dc0f1016f495157344ac5f1296335cff725ef22f",
        "secure_access": True,
    },
}
SEED_CHILD = {**SEED_COMMON, "gateway_id": SEED_PARENT}
REPLY_FIELDS = {
    "app_id",
    "app_name",
    "device_id",
    "node_id",
    "gateway_id",
    "device_name",
    "node_type",
    "description",
    "fw_version",
    "sw_version",
    "device_sdk_version",
    "auth_info",
    "product_id",
    "product_name",
    "status",
    "create_time",
    "connection_status_update_time",
    "active_time",
    "tags",
    "extension_info",
}
AUTH_FIELDS = {
    "auth_type",
    "secret",
    "secondary_secret",
    "fingerprint",
    "secondary_fingerprint",
    "secure_access",
    "timeout",
}


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = ADMIN, **kw: Any
    ) -> tuple[int, Any]:
        headers = {"X-Auth-Token": token} if token else {}
        async with self.session.request(
            method, self.base + path, json=body, headers=headers, **kw
        ) as resp:
            text = await resp.text()
            return resp.status, (await resp.json()) if text else None


@pytest.fixture
async def api(tmp_path) -> AsyncIterator[Api]:
    async with (
        running_app(store_settings(tmp_path)) as (url, app),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
    ):
        client = Api(session, url)
        client.app = app  # type: ignore[attr-defined]
        yield client


def _assert_error(status: int, body: Any, expected_status: int, field: str) -> None:
    assert status == expected_status, body
    assert set(body) == {"error_code", "error_msg"}
    assert field in body["error_msg"]


async def test_seed_secret_example(api):
    status, body = await api.call("POST", BASE, SEED_SECRET)
    assert status == 201, body
    assert set(body) == REPLY_FIELDS
    assert set(body["auth_info"]) == AUTH_FIELDS
    assert body["auth_info"]["secret"] == "3b93****dc3c"
    assert body["auth_info"]["auth_type"] == "SECRET"
    assert body["auth_info"]["timeout"] == 0
    assert body["auth_info"]["secure_access"] is True
    assert (body["device_id"], body["gateway_id"], body["node_type"]) == (SEED_ID, GW, "ENDPOINT")
    assert (body["status"], body["product_name"]) == ("INACTIVE", "Thermometer")
    assert body["extension_info"] == {"aaa": "xxx", "bbb": 0}
    assert re.fullmatch(r"\d{8}T\d{6}Z", body["create_time"])
    assert body["active_time"] is None
    assert body["connection_status_update_time"] is None
    assert body["tags"] == []
    for path in (BASE, f"{BASE}/{SEED_ID}"):
        status, text = await api.call("GET", path)
        assert "3b935a250c50dc2c6d481d048cefdc3c" not in str(text)
    status, shadow = await api.call("GET", f"{BASE}/{SEED_ID}/shadow")
    water = shadow["shadow"][0]
    assert water["desired"]["properties"] == {"temperature": 60, "valve_open": True}
    assert water["version"] == 0


async def test_seed_certificate_example(api):
    status, body = await api.call("POST", BASE, SEED_CERT)
    assert status == 201, body
    assert set(body) == REPLY_FIELDS
    assert set(body["auth_info"]) == AUTH_FIELDS
    assert body["auth_info"]["auth_type"] == "CERTIFICATES"
    assert body["auth_info"]["fingerprint"] == "dc0f****f22f"
    assert body["auth_info"]["secret"] is None


async def test_seed_child_example(api):
    parent = {"device_id": SEED_PARENT, "node_id": "converter-1", "product_id": WATER}
    assert (await api.call("POST", BASE, parent))[0] == 201
    status, body = await api.call("POST", BASE, SEED_CHILD)
    assert status == 201, body
    assert set(body) == REPLY_FIELDS
    assert (body["gateway_id"], body["node_type"]) == (SEED_PARENT, "ENDPOINT")
    status, page = await api.call("GET", f"{BASE}?gateway_id={SEED_PARENT}")
    assert [d["device_id"] for d in page["devices"]] == [SEED_ID]
    status, page = await api.call("GET", f"{BASE}?gateway_id={GW}")
    assert [d["device_id"] for d in page["devices"]] == [SEED_PARENT]
    status, page = await api.call("GET", f"{BASE}?gateway_id={GW}&is_cascade_query=true")
    assert [d["device_id"] for d in page["devices"]] == [SEED_ID, SEED_PARENT]
    assert page["page"]["count"] == 2


async def test_duplicate_and_unknown_parent_over_http(api):
    assert (await api.call("POST", BASE, SEED_SECRET))[0] == 201
    status, body = await api.call("POST", BASE, SEED_SECRET)
    _assert_error(status, body, 409, "device_id")
    assert body["error_code"] == "DEVICE_EXISTS"
    status, body = await api.call("POST", BASE, {**SEED_CHILD, "device_id": "other"})
    _assert_error(status, body, 400, "gateway_id")
    assert body["error_code"] == "PARENT_NOT_FOUND"


async def test_grandchild_of_a_grandchild_is_refused(api):
    parent = GW
    for level in (1, 2):
        body = {"node_id": f"level{level}", "product_id": WATER, "gateway_id": parent}
        status, reply = await api.call("POST", BASE, body)
        assert status == 201, reply
        parent = reply["device_id"]
    status, body = await api.call(
        "POST", BASE, {"node_id": "level3", "product_id": WATER, "gateway_id": parent}
    )
    _assert_error(status, body, 400, "gateway_id")
    assert body["error_code"] == "TOO_DEEP"
    assert "at most 2 levels" in body["error_msg"]


async def test_delete_with_children_needs_cascade(api):
    ids = []
    parent = GW
    for node in ("conv", "meter"):
        status, reply = await api.call(
            "POST", BASE, {"node_id": node, "product_id": WATER, "gateway_id": parent}
        )
        ids.append(reply["device_id"])
        parent = reply["device_id"]
    status, body = await api.call("DELETE", f"{BASE}/{ids[0]}")
    _assert_error(status, body, 409, ids[0])
    assert body["error_code"] == "HAS_CHILDREN"
    status, body = await api.call("DELETE", f"{BASE}/{ids[0]}?cascade=maybe")
    _assert_error(status, body, 400, "cascade")
    assert (await api.call("DELETE", f"{BASE}/{ids[0]}?cascade=true"))[0] == 204
    for device_id in ids:
        status, body = await api.call("GET", f"{BASE}/{device_id}")
        _assert_error(status, body, 404, device_id)
    status, body = await api.call("DELETE", f"{BASE}/{GW}")
    assert (status, body["error_code"]) == (409, "PROTECTED_DEVICE")


BAD_REQUESTS = [
    ({"node_id": "n", "product_id": WATER, "auth_info": {"secret": "short"}}, "auth_info.secret"),
    ({"node_id": "a:b", "product_id": WATER}, "node_id"),
    ({"product_id": WATER}, "node_id"),
    ({"node_id": "n", "product_id": "nope"}, "product_id"),
    ({"node_id": "n", "product_id": WATER, "colour": 1}, "colour"),
    (
        {"node_id": "n", "product_id": WATER, "shadow": [{"service_id": "X", "desired": {}}]},
        "shadow.0.service_id",
    ),
    (
        {
            "node_id": "n",
            "product_id": WATER,
            "shadow": [{"service_id": "WaterMeter", "desired": {"nope": 1}}],
        },
        "shadow.0.desired.nope",
    ),
    ([1, 2], "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD_REQUESTS, ids=[f for _, f in BAD_REQUESTS])
async def test_bad_requests_name_the_field(api, body, field):
    status, reply = await api.call("POST", BASE, body)
    _assert_error(status, reply, 400, field)


async def test_invalid_json_is_a_clear_400(api):
    async with api.session.post(
        api.base + BASE, data=b"{not json", headers={"X-Auth-Token": ADMIN}
    ) as resp:
        body = await resp.json()
    _assert_error(resp.status, body, 400, "body")


async def test_list_filters_and_paging(api):
    for i in range(12):
        body = {"node_id": f"n{i:02d}", "product_id": WATER, "device_name": f"name{i % 2}"}
        assert (await api.call("POST", BASE, body))[0] == 201
    status, first = await api.call("GET", f"{BASE}?limit=5", token=READER)
    assert status == 200
    assert first["page"]["count"] == 13
    assert len(first["devices"]) == 5
    assert all("auth_info" not in d for d in first["devices"])
    assert re.fullmatch(r"[0-9a-f]{24}", first["page"]["marker"])
    seen = [d["device_id"] for d in first["devices"]]
    marker = first["page"]["marker"]
    while marker:
        status, page = await api.call("GET", f"{BASE}?limit=5&marker={marker}")
        seen += [d["device_id"] for d in page["devices"]]
        marker = page["page"]["marker"]
    assert len(seen) == len(set(seen)) == 13
    assert seen[-1] == GW
    status, default = await api.call("GET", f"{BASE}?marker={'f' * 24}")
    assert [d["device_id"] for d in default["devices"]] == seen[:10]
    status, offset = await api.call("GET", f"{BASE}?limit=2&offset=3")
    assert [d["device_id"] for d in offset["devices"]] == seen[3:5]
    status, named = await api.call("GET", f"{BASE}?device_name=name1&limit=50")
    assert named["page"]["count"] == 6
    status, by_node = await api.call("GET", f"{BASE}?node_id=n03&product_id={WATER}")
    assert [d["node_id"] for d in by_node["devices"]] == ["n03"]
    status, gone = await api.call("GET", f"{BASE}?status=ONLINE")
    assert gone["devices"] == []
    for query, field in (
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("offset=501", "offset"),
        ("marker=xyz", "marker"),
        ("status=ASLEEP", "status"),
        ("colour=red", "colour"),
    ):
        status, body = await api.call("GET", f"{BASE}?{query}")
        _assert_error(status, body, 400, field)


async def test_update_device(api):
    await api.call("POST", BASE, SEED_SECRET)
    change = {
        "device_name": "renamed",
        "description": "a new text",
        "extension_info": {"x": 1},
        "auth_info": {"secret": "new-secret-123", "timeout": 60},
    }
    status, body = await api.call("PUT", f"{BASE}/{SEED_ID}", change)
    assert status == 200, body
    assert (body["device_name"], body["description"]) == ("renamed", "a new text")
    assert body["extension_info"] == {"x": 1}
    assert body["auth_info"]["timeout"] == 60
    assert body["auth_info"]["secret"] == "n****3"
    status, body = await api.call("PUT", f"{BASE}/{SEED_ID}", {"node_id": "x"})
    _assert_error(status, body, 400, "node_id")
    status, body = await api.call("PUT", f"{BASE}/nobody", {"device_name": "x"})
    _assert_error(status, body, 404, "nobody")


async def test_shadow_get_and_conditional_put(api):
    await api.call("POST", BASE, SEED_SECRET)
    path = f"{BASE}/{SEED_ID}/shadow"
    status, body = await api.call(
        "PUT", path, {"shadow": [{"service_id": "WaterMeter", "desired": {"temperature": 70}}]}
    )
    assert status == 200, body
    water = body["shadow"][0]
    assert water["version"] == 1
    assert water["desired"]["properties"]["temperature"] == 70
    assert re.fullmatch(r"\d{8}T\d{6}Z", water["desired"]["event_time"])
    assert water["reported"] == {"properties": {}, "event_time": None}
    stale = {"shadow": [{"service_id": "WaterMeter", "desired": {"temperature": 1}, "version": 0}]}
    status, body = await api.call("PUT", path, stale)
    _assert_error(status, body, 409, "shadow.0.version")
    current = copy.deepcopy(stale)
    current["shadow"][0]["version"] = 1
    current["shadow"][0]["desired"] = {"temperature": None}
    status, body = await api.call("PUT", path, current)
    assert body["shadow"][0]["desired"]["properties"] == {"valve_open": True}
    await api.app.store.shadows.report(SEED_ID, "WaterMeter", {"flow": 2})
    status, body = await api.call("GET", path, token=READER)
    assert body["shadow"][0]["reported"]["properties"] == {"flow": 2.0}
    assert body["device_id"] == SEED_ID
    api.app.store.shadows.note_reported(SEED_ID, "WaterMeter", {"flow": 3})  # the field's path
    status, body = await api.call("GET", path, token=READER)
    assert body["shadow"][0]["reported"]["properties"] == {"flow": 3.0}
    status, body = await api.call("GET", f"{BASE}/{SEED_ID}")
    assert body["status"] == "ONLINE"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["active_time"])
    status, body = await api.call("PUT", path, {"shadow": [{"service_id": "Battery"}]})
    _assert_error(status, body, 400, "shadow.0.desired")
    status, body = await api.call("PUT", path, {"shadow": []})
    _assert_error(status, body, 400, "shadow")


async def test_auth_on_every_route_but_healthz(api):
    doc = api.app.api.app[API_DOC_KEY]
    for method, template in doc.operations():
        path = template.replace("{project_id}", "proj1").replace("{device_id}", GW)
        if template == "/healthz":
            assert (await api.call(method, path, token=None))[0] == 200
            continue
        status, body = await api.call(method, path, token=None)
        _assert_error(status, body, 401, "X-Auth-Token")
        status, body = await api.call(method, path, token="wrong")
        _assert_error(status, body, 401, "X-Auth-Token")
        if method != "GET":
            status, body = await api.call(method, path, {}, token=READER)
            _assert_error(status, body, 403, "admin")
    async with api.session.get(
        api.base + BASE, headers={"Authorization": f"Bearer {READER}"}
    ) as resp:
        assert resp.status == 200


async def test_wrong_project_and_unknown_route(api):
    status, body = await api.call("GET", "/v5/iot/other/devices")
    _assert_error(status, body, 404, "project_id")
    status, body = await api.call("GET", "/v5/iot/proj1/nothing")
    assert (status, body["error_code"]) == (404, "NOT_FOUND")


async def test_openapi_describes_every_route(api):
    status, doc = await api.call("GET", "/openapi.json", token=READER)
    assert status == 200
    routes = {
        (route.method, route.resource.canonical)
        for route in api.app.api.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert routes == documented
    create = doc["paths"]["/v5/iot/{project_id}/devices"]["post"]
    ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"node_id", "product_id", "auth_info", "shadow"} <= set(schema["properties"])
    assert create["x-scope"] == "admin"


async def test_a_wrong_method_is_405_with_allow(api):
    async with api.session.patch(
        f"{api.base}{BASE}/{GW}", json={}, headers={"X-Auth-Token": ADMIN}
    ) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "DELETE, GET, PUT"
        body = await resp.json()
    assert body["error_code"] == "METHOD_NOT_ALLOWED"
    assert body["error_msg"].startswith("method: PATCH is not allowed")


async def test_per_device_cloud_routes_know_only_registered_devices(api):
    for route in ("commands", "licenses", "config", "space-info", "firmware"):
        status, body = await api.call("GET", f"/v1/devices/nobody/cloud/{route}")
        assert (status, body["error_code"]) == (404, "DEVICE_NOT_FOUND"), route
        assert body["error_msg"] == "device_id: no device 'nobody'"
        status, body = await api.call("GET", f"/v1/devices/a%20b/cloud/{route}")
        assert (status, body["error_code"]) == (400, "INVALID_PARAMETER"), route
    assert await api.call("GET", f"/v1/devices/{GW}/cloud/commands") == (200, {"commands": []})
    assert await api.call("GET", f"/v1/devices/{GW}/cloud/licenses") == (200, {"licenses": []})
    status, body = await api.call("GET", f"/v1/devices/{GW}/cloud/config")
    assert (status, body["error_code"]) == (404, "NOT_FOUND")


async def test_the_document_states_what_the_code_checks(api):
    _, doc = await api.call("GET", "/openapi.json")
    listing = doc["paths"]["/v5/iot/{project_id}/devices"]["get"]
    params = {p["name"]: p["schema"] for p in listing["parameters"]}
    assert params["project_id"] == {"type": "string", "enum": ["proj1"]}
    assert params["product_id"]["pattern"] == "^[A-Za-z0-9_-]{1,36}$"
    assert params["offset"] == {"type": "integer", "minimum": 0, "maximum": 500}
    assert params["status"]["enum"] == ["ONLINE", "OFFLINE", "ABNORMAL", "INACTIVE", "FROZEN"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v5/"):
                assert "404" in op["responses"], (method, path)
            if "{device_id}" in path or method != "get":
                assert "400" in op["responses"], (method, path)
    assert "400" in doc["paths"]["/v5/iot/{project_id}/devices/{device_id}"]["delete"]["responses"]
    dead = doc["paths"]["/v1/outbox/dead-letters"]["get"]["parameters"]
    assert {p["name"]: p["schema"].get("maximum") for p in dead} == {
        "limit": 1000,
        "offset": 10**9,
    }
    create = doc["components"]["schemas"]["DeviceCreate"]["properties"]["product_id"]
    assert create["enum"] == sorted(api.app.store.products)

    status, body = await api.call("GET", f"{BASE}?product_id=")
    _assert_error(status, body, 400, "product_id")
    status, body = await api.call("GET", f"{BASE}?offset=501")
    _assert_error(status, body, 400, "offset")
    status, body = await api.call("GET", "/v1/outbox/dead-letters?offset=1000000001")
    _assert_error(status, body, 400, "offset")
    status, body = await api.call("GET", f"/v1/outbox/dead-letters?offset={'9' * 5000}")
    _assert_error(status, body, 400, "offset")
    status, body = await api.call("GET", f"{BASE}?marker={'f' * 23}e")
    assert status == 200, body
    status, body = await api.call("GET", f"{BASE}/a%20b")
    _assert_error(status, body, 400, "device_id")
