"""The IoTDA surface of the local API: `/v5/iot/{project_id}/devices` and device shadows.

Same field names, status values, validation rules and error shape as IoTDA's,
for the devices this gateway manages. Lists are newest first; `marker` is the 24-hex id of
the last device of the previous page (all `f`, IoTDA's default, starts at the newest).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gatewayd.api.body import read_json
from gatewayd.api.errors import ApiError, validated
from gatewayd.api.iotda_replies import (
    DEVICE_SCHEMA,
    LIST_SCHEMA,
    SHADOW_SCHEMA,
    device_reply,
    shadow_reply,
)
from gatewayd.api.openapi import API_DOC_KEY, Operation, Param, add_route
from gatewayd.devices import (
    DEVICE_ID_PATTERN,
    DeviceCreate,
    DeviceId,
    DeviceStatus,
    DeviceUpdate,
    ServiceId,
)
from gatewayd.store import Store
from gatewayd.store.registry import DeviceQuery
from gatewayd.store.shadows import DesiredUpdate

__all__ = ["MAX_LIMIT", "ShadowUpdate", "mount_iotda"]

MAX_LIMIT = 1000
_ALL_F = "f" * 24
_MAX_SEQ = 2**63 - 1
STORE_KEY = web.AppKey("iotda_store", Store)
PROJECT_KEY = web.AppKey("iotda_project", str)


class ListParams(BaseModel):
    """Query parameters of the device list."""

    model_config = ConfigDict(frozen=True, extra="forbid", regex_engine="python-re")

    product_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,36}$")
    gateway_id: DeviceId | None = None
    is_cascade_query: bool = False
    node_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    device_name: str | None = Field(default=None, min_length=1, max_length=256)
    status: DeviceStatus | None = None
    limit: int = Field(default=10, ge=1, le=MAX_LIMIT)
    offset: int = Field(default=0, ge=0, le=500)
    marker: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{24}$")


class ServiceDesired(BaseModel):
    """Desired values of one service; `null` deletes a property, `{}` clears them all."""

    model_config = ConfigDict(frozen=True, extra="forbid", regex_engine="python-re")

    service_id: ServiceId
    desired: dict[str, Any]
    version: int | None = Field(default=None, ge=0, description="Apply only at this version.")


class ShadowUpdate(BaseModel):
    """Body of `PUT .../shadow`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shadow: list[ServiceDesired] = Field(min_length=1)


def mount_iotda(app: web.Application, store: Store, project_id: str) -> None:
    """Add the IoTDA routes to `app`, answering for `project_id`."""
    app[STORE_KEY] = store
    app[PROJECT_KEY] = project_id
    base = "/v5/iot/{project_id}/devices"
    one = base + "/{device_id}"
    if len(store.products):
        app[API_DOC_KEY].narrow(DeviceCreate, "product_id", {"enum": sorted(store.products)})
    # The document names the one project this gateway answers to; any other is a 404.
    project = replace(_PROJECT, schema={"type": "string", "enum": [project_id]})
    for method, path, handler, op in (
        ("POST", base, _create, _CREATE),
        ("GET", base, _list, _LIST),
        ("GET", one, _show, _SHOW),
        ("PUT", one, _update, _UPDATE),
        ("DELETE", one, _delete, _DELETE),
        ("GET", one + "/shadow", _show_shadow, _SHOW_SHADOW),
        ("PUT", one + "/shadow", _update_shadow, _UPDATE_SHADOW),
    ):
        add_route(app, method, path, handler, replace(op, params=(project, *op.params[1:])))


def _store(request: web.Request) -> Store:
    project = request.match_info["project_id"]
    if project != request.app[PROJECT_KEY]:
        raise ApiError(404, "PROJECT_NOT_FOUND", f"project_id: no project {project!r} here")
    return request.app[STORE_KEY]


def _device_id(request: web.Request) -> str:
    """The path's device id; one no device could have is refused before any lookup."""
    device_id = request.match_info["device_id"]
    if DEVICE_ID_PATTERN.fullmatch(device_id) is None:
        msg = "device_id: must be 1 to 128 of A-Z a-z 0-9 _ -"
        raise ApiError(400, "INVALID_FIELD", msg)
    return device_id


async def _create(request: web.Request) -> web.Response:
    store = _store(request)
    body = validated(DeviceCreate, await read_json(request))
    device = await store.registry.create(body)
    return web.json_response(device_reply(device, store.products), status=201)


async def _list(request: web.Request) -> web.Response:
    store = _store(request)
    params = validated(ListParams, dict(request.query))
    marker = None
    if params.marker is not None and params.marker.lower() != _ALL_F:
        # Beyond SQLite's integers every device is older: the same as starting at the newest.
        marker = min(int(params.marker, 16), _MAX_SEQ)
    page = await store.registry.page(
        DeviceQuery(
            product_id=params.product_id,
            gateway_id=params.gateway_id,
            node_id=params.node_id,
            device_name=params.device_name,
            status=params.status,
            limit=params.limit,
            offset=params.offset,
            marker=marker,
            cascade=params.is_cascade_query,
        )
    )
    return web.json_response(
        {
            "devices": [device_reply(d, store.products, with_auth=False) for d in page.devices],
            "page": {
                "count": page.count,
                "marker": f"{page.marker:024x}" if page.marker is not None else None,
            },
        }
    )


async def _show(request: web.Request) -> web.Response:
    store = _store(request)
    device = await store.registry.get(_device_id(request))
    return web.json_response(device_reply(device, store.products))


async def _update(request: web.Request) -> web.Response:
    store = _store(request)
    body = validated(DeviceUpdate, await read_json(request))
    device = await store.registry.update(_device_id(request), body)
    return web.json_response(device_reply(device, store.products))


async def _delete(request: web.Request) -> web.Response:
    store = _store(request)
    device_id = _device_id(request)
    cascade = request.query.get("cascade", "false").lower()
    if cascade not in ("true", "false"):
        raise ApiError(400, "INVALID_FIELD", "cascade: must be true or false")
    await store.registry.delete(device_id, cascade=cascade == "true")
    return web.Response(status=204)


async def _show_shadow(request: web.Request) -> web.Response:
    store = _store(request)
    device_id = _device_id(request)
    return web.json_response(shadow_reply(device_id, await store.shadows.get(device_id)))


async def _update_shadow(request: web.Request) -> web.Response:
    store = _store(request)
    device_id = _device_id(request)
    body = validated(ShadowUpdate, await read_json(request))
    updates = [DesiredUpdate(s.service_id, s.desired, s.version) for s in body.shadow]
    shadows = await store.shadows.update_desired(device_id, updates)
    return web.json_response(shadow_reply(device_id, shadows))


def _query(model: type[BaseModel], notes: dict[str, str]) -> tuple[Param, ...]:
    """The query parameters as the model validates them: patterns, bounds and enums included."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    params = []
    for name, prop in schema["properties"].items():
        branch = next(b for b in prop.get("anyOf", [prop]) if b.get("type") != "null")
        if "$ref" in branch:
            branch = defs[branch["$ref"].rsplit("/", 1)[1]]
        kept = {k: v for k, v in branch.items() if k in _SCHEMA_KEYS}
        params.append(Param(name, "query", kept, notes.get(name, "")))
    return tuple(params)


_SCHEMA_KEYS = frozenset(
    {"type", "pattern", "minimum", "maximum", "minLength", "maxLength", "enum"}
)
_PROJECT = Param("project_id", "path", description="Must equal api.project_id.")
_DEVICE = Param(
    "device_id",
    "path",
    {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
    "1 to 128 of A-Z a-z 0-9 _ -.",
)
_TAG = "iotda"
_NO_PROJECT = "no such project (project_id is not api.project_id)"
_NO_DEVICE = "no such device, or no such project"
_BAD_ID = "device_id breaks its pattern"
_CREATE = Operation(
    summary="Register a device (IoTDA's rules); a child of the gateway unless gateway_id is given",
    scope="admin",
    tag=_TAG,
    params=(_PROJECT,),
    body=DeviceCreate,
    responses={
        201: "created",
        400: "a field breaks a rule; an unknown product_id or gateway_id; too deep",
        404: _NO_PROJECT,
        409: "the device id is taken",
    },
    reply=DEVICE_SCHEMA,
)
_LIST = Operation(
    summary="List devices, newest first",
    scope="read",
    tag=_TAG,
    params=(
        _PROJECT,
        *_query(
            ListParams,
            {
                "gateway_id": "Children of this device.",
                "is_cascade_query": "With gateway_id: every device below it, not only children.",
                "marker": "24 hex digits from the previous page.",
            },
        ),
    ),
    responses={200: "a page of devices", 400: "a bad filter or paging value", 404: _NO_PROJECT},
    reply=LIST_SCHEMA,
)
_SHOW = Operation(
    summary="One device; secrets masked",
    scope="read",
    tag=_TAG,
    params=(_PROJECT, _DEVICE),
    responses={200: "the device", 400: _BAD_ID, 404: _NO_DEVICE},
    reply=DEVICE_SCHEMA,
)
_UPDATE = Operation(
    summary="Change device_name, description, extension_info or auth_info",
    scope="admin",
    tag=_TAG,
    params=(_PROJECT, _DEVICE),
    body=DeviceUpdate,
    responses={200: "the changed device", 400: "a field breaks a rule", 404: _NO_DEVICE},
    reply=DEVICE_SCHEMA,
)
_DELETE = Operation(
    summary=(
        "Delete a device; with children only when cascade=true; never one declared in the YAML"
    ),
    scope="admin",
    tag=_TAG,
    params=(
        _PROJECT,
        _DEVICE,
        Param("cascade", "query", {"type": "boolean"}, "Also delete every device below."),
    ),
    responses={
        204: "deleted",
        400: "cascade is not true or false; " + _BAD_ID,
        404: _NO_DEVICE,
        409: (
            "it has children (HAS_CHILDREN); it is the gateway, or it is declared in the "
            "YAML, named by its key (PROTECTED_DEVICE)"
        ),
    },
)
_SHOW_SHADOW = Operation(
    summary="The device shadow: desired, reported and version per service",
    scope="read",
    tag=_TAG,
    params=(_PROJECT, _DEVICE),
    responses={200: "the shadow", 400: _BAD_ID, 404: _NO_DEVICE},
    reply=SHADOW_SCHEMA,
)
_UPDATE_SHADOW = Operation(
    summary="Change desired properties; a given version must be current",
    scope="admin",
    tag=_TAG,
    params=(_PROJECT, _DEVICE),
    body=ShadowUpdate,
    responses={
        200: "the shadow after the change",
        400: "unknown service or property, or a bad value",
        404: _NO_DEVICE,
        409: "version conflict",
    },
    reply=SHADOW_SCHEMA,
)
