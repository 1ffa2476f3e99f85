"""Local API routes for the outbox and the state the cloud sent (mounted by the app).

`GET /v1/outbox/stats`, `GET /v1/outbox/dead-letters`, `GET /v1/cloud/children` and, per
device, `GET /v1/devices/{device_id}/cloud/{config,commands,licenses,space-info,firmware}`.
docs/protocol.md lists the bodies. Authentication is the API server's concern: these are plain
handlers in a route table.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from aiohttp import web

from gatewayd.store.cloud_state import CloudState
from gatewayd.store.outbox import Outbox

__all__ = ["cloud_routes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cloud_routes(outbox: Outbox, state: CloudState) -> list[web.RouteDef]:
    """The route table; `app.router.add_routes(cloud_routes(...))` mounts it."""
    views = _Views(outbox, state)
    base = "/v1/devices/{device_id}/cloud"
    return [
        web.get("/v1/outbox/stats", views.stats),
        web.get("/v1/outbox/dead-letters", views.dead_letters),
        web.get("/v1/cloud/children", views.children),
        web.get(f"{base}/config", views.config),
        web.get(f"{base}/commands", views.commands),
        web.get(f"{base}/licenses", views.licenses),
        web.get(f"{base}/space-info", views.info("space_info")),
        web.get(f"{base}/firmware", views.info("firmware")),
    ]


class _Views:
    def __init__(self, outbox: Outbox, state: CloudState) -> None:
        self._outbox = outbox
        self._state = state

    async def stats(self, request: web.Request) -> web.Response:
        del request
        return web.json_response(asdict(await self._outbox.stats()))

    async def dead_letters(self, request: web.Request) -> web.Response:
        limit = _int_param(request, "limit", 100, 1, 1000)
        offset = _int_param(request, "offset", 0, 0, 10**9)
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
        device = request.match_info["device_id"]
        found = await self._state.desired_config(device)
        if found is None:
            return _not_found(f"no desired config for device {device}")
        return web.json_response(found)

    async def commands(self, request: web.Request) -> web.Response:
        device = request.match_info["device_id"]
        limit = _int_param(request, "limit", 100, 1, 1000)
        rows = await self._state.commands(device, limit)
        return web.json_response({"commands": [c.as_json() for c in rows]})

    async def licenses(self, request: web.Request) -> web.Response:
        device = request.match_info["device_id"]
        return web.json_response({"licenses": await self._state.licenses(device)})

    def info(self, topic: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            device = request.match_info["device_id"]
            found = await self._state.info(device, topic)
            if found is None:
                return _not_found(f"no {topic} for device {device}")
            return web.json_response(found)

        return handler


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise web.HTTPBadRequest(
            text=f'{{"error": "{name}: expected an integer from {low} to {high}"}}',
            content_type="application/json",
        )
    return value


def _not_found(message: str) -> web.Response:
    return web.json_response({"error": message}, status=404)
