"""Local API routes for the outbox and the state the cloud sent (mounted by the app).

`GET /v1/outbox/stats`, `GET /v1/outbox/dead-letters`, `GET /v1/cloud/children` and, per
device, `GET /v1/devices/{device_id}/cloud/{config,commands,licenses,space-info,firmware}`
and `GET /v1/devices/{device_id}/commands`, the command history (the same list).
docs/protocol.md lists the bodies. A per-device route answers 404 for a device the registry
does not know, so an empty list always means a known device with nothing received.
Authentication is the API server's concern: these are plain handlers in a route table.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from aiohttp import web

from gatewayd.api.errors import ApiError, error_response
from gatewayd.api.openapi import Operation, Param, add_route
from gatewayd.devices import DEVICE_ID_PATTERN
from gatewayd.store.cloud_state import CloudState
from gatewayd.store.outbox import Outbox
from gatewayd.store.registry import Registry

__all__ = ["cloud_routes", "mount_cloud"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_BASE = "/v1/devices/{device_id}/cloud"
_MAX_OFFSET = 10**9
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_DEVICE = (
    Param(
        "device_id",
        "path",
        {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
        "1 to 128 of A-Z a-z 0-9 _ -.",
    ),
)
_PAGE = (
    Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}),
    Param("offset", "query", {"type": "integer", "minimum": 0, "maximum": _MAX_OFFSET}),
)


def cloud_routes(
    outbox: Outbox, state: CloudState, registry: Registry | None = None
) -> list[web.RouteDef]:
    """The route table, for mounting without documentation (tests of the handlers)."""
    return [web.get(path, handler) for path, handler, _ in _table(outbox, state, registry)]


def mount_cloud(
    app: web.Application, outbox: Outbox, state: CloudState, registry: Registry | None = None
) -> None:
    """Add the routes with their OpenAPI documentation.

    With a `registry`, a per-device route answers 404 for a device it does not know.
    """
    for path, handler, op in _table(outbox, state, registry):
        add_route(app, "GET", path, handler, op)


def _table(
    outbox: Outbox, state: CloudState, registry: Registry | None
) -> list[tuple[str, Handler, Operation]]:
    views = _Views(outbox, state, registry)

    def op(summary: str, params: tuple[Param, ...] = (), *, not_found: str = "") -> Operation:
        responses = {200: "OK", 400: "a parameter breaks its schema"}
        if params[:1] == _DEVICE:
            responses[404] = "no such device" + (f", or {not_found}" if not_found else "")
        return Operation(summary, "read", "cloud", params, responses=responses)

    return [
        ("/v1/outbox/stats", views.stats, op("Outbox depth, bytes, age and drops")),
        ("/v1/outbox/dead-letters", views.dead_letters, op("Records the broker refused", _PAGE)),
        ("/v1/cloud/children", views.children, op("Children's registration with the cloud")),
        (f"{_BASE}/config", views.config,
         op("Latest desired config", _DEVICE, not_found="no config received")),
        (f"{_BASE}/commands", views.commands, op("Commands received", _DEVICE + _PAGE[:1])),
        ("/v1/devices/{device_id}/commands", views.commands,
         op("Command history: status, response, each status with its time", _DEVICE + _PAGE[:1])),
        (f"{_BASE}/licenses", views.licenses, op("Licenses received", _DEVICE)),
        (f"{_BASE}/space-info", views.info("space_info"),
         op("Latest space info", _DEVICE, not_found="no space info received")),
        (f"{_BASE}/firmware", views.info("firmware"),
         op("Latest firmware info", _DEVICE, not_found="no firmware info received")),
    ]  # fmt: skip


class _Views:
    def __init__(self, outbox: Outbox, state: CloudState, registry: Registry | None) -> None:
        self._outbox = outbox
        self._state = state
        self._registry = registry

    async def _device(self, request: web.Request) -> str:
        """The path's device id, refused (400) when malformed and 404 when not registered."""
        device = request.match_info["device_id"]
        if DEVICE_ID_PATTERN.fullmatch(device) is None:
            msg = "device_id: must be 1 to 128 of A-Z a-z 0-9 _ -"
            raise ApiError(400, "INVALID_PARAMETER", msg)
        if self._registry is not None and await self._registry.find(device) is None:
            raise ApiError(404, "DEVICE_NOT_FOUND", f"device_id: no device {device!r}")
        return device

    async def stats(self, request: web.Request) -> web.Response:
        del request
        return web.json_response(asdict(await self._outbox.stats()))

    async def dead_letters(self, request: web.Request) -> web.Response:
        limit = _int_param(request, "limit", 100, 1, 1000)
        offset = _int_param(request, "offset", 0, 0, _MAX_OFFSET)
        items = []
        for row in await self._outbox.dead_letters(limit, offset):
            item = asdict(row)
            payload = item.pop("payload")
            try:
                item["payload"] = payload.decode()
            except UnicodeDecodeError:
                item["payload_base64"] = base64.b64encode(payload).decode()
            items.append(item)
        return web.json_response({"dead_letters": items, "limit": limit, "offset": offset})

    async def children(self, request: web.Request) -> web.Response:
        del request
        return web.json_response({"children": await self._state.children()})

    async def config(self, request: web.Request) -> web.Response:
        device = await self._device(request)
        found = await self._state.desired_config(device)
        if found is None:
            return _not_found(f"no desired config for device {device}")
        return web.json_response(found)

    async def commands(self, request: web.Request) -> web.Response:
        device = await self._device(request)
        limit = _int_param(request, "limit", 100, 1, 1000)
        rows = await self._state.commands(device, limit)
        return web.json_response({"commands": [c.as_json() for c in rows]})

    async def licenses(self, request: web.Request) -> web.Response:
        device = await self._device(request)
        return web.json_response({"licenses": await self._state.licenses(device)})

    def info(self, topic: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            device = await self._device(request)
            found = await self._state.info(device, topic)
            if found is None:
                return _not_found(f"no {topic} for device {device}")
            return web.json_response(found)

        return handler


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = int(raw) if _INTEGER.fullmatch(raw) else low - 1
    if not low <= value <= high:
        raise ApiError(400, "INVALID_PARAMETER", f"{name}: expected an integer {low} to {high}")
    return value


def _not_found(message: str) -> web.Response:
    return error_response(404, "NOT_FOUND", message)
