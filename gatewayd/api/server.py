"""The aiohttp server, embedded in the daemon's own event loop and task tree."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from gatewayd import __version__
from gatewayd.api.auth import TokenAuth, auth_middleware
from gatewayd.api.errors import error_middleware
from gatewayd.api.openapi import API_DOC_KEY, ApiDoc, Operation, add_route
from gatewayd.errors import ListenFailed
from gatewayd.health import Component, Health, State
from gatewayd.settings import ApiConfig

__all__ = ["ApiServer", "build_app"]

log = logging.getLogger(__name__)

HEALTH_KEY = web.AppKey("health", Health)


def build_app(
    health: Health,
    extra: Callable[[web.Application], None] | None = None,
    *,
    auth: TokenAuth | None = None,
) -> web.Application:
    """The application with every surface mounted.

    Every route but `/healthz` needs a token; with no `auth`, no token is accepted.
    """
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(auth or TokenAuth({}))],
        client_max_size=1024 * 1024,
    )
    app[HEALTH_KEY] = health
    app[API_DOC_KEY] = ApiDoc("gatewayd local API", __version__)
    add_route(app, "GET", "/healthz", _healthz, _HEALTHZ)
    add_route(app, "GET", "/openapi.json", _openapi, _OPENAPI)
    if extra is not None:
        extra(app)
    return app


_HEALTHZ = Operation(
    summary="Liveness and readiness, per component",
    scope="public",
    tag="operations",
    responses={200: "alive", 503: "a critical component failed"},
    reply={
        "type": "object",
        "required": ["status", "live", "ready", "problems", "components"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded", "failed"]},
            "problems": {"type": "array", "items": {"type": "string"}},
        },
    },
)
_OPENAPI = Operation(
    summary="This document",
    scope="read",
    tag="operations",
    responses={200: "the OpenAPI document"},
    reply={"type": "object"},
)


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[API_DOC_KEY].document())


async def _healthz(request: web.Request) -> web.Response:
    health = request.app[HEALTH_KEY]
    components = {
        c.name: {
            "state": c.state.value,
            "detail": c.detail,
            "since": c.since,
            "problems": dict(c.problems),
        }
        for c in health.components()
    }
    live = health.critical_ok()
    ready = live and all(c.state is State.UP for c in health.components() if c.critical)
    problems = health.problems()
    status = "failed" if not live else "degraded" if problems else "ok"
    body = {
        "status": status,
        "live": live,
        "ready": ready,
        "problems": problems,
        "components": components,
    }
    return web.json_response(body, status=200 if live else 503)


class ApiServer:
    """Binds the API and serves until cancelled.

    Args:
        config: where to listen.
        app: the aiohttp application.
        component: health entry marked up once the socket listens.
    """

    def __init__(self, config: ApiConfig, app: web.Application, component: Component) -> None:
        self._config = config
        self._app = app
        self._component = component
        self.bound = asyncio.Event()
        self.port: int | None = None

    @property
    def app(self) -> web.Application:
        """The application served (its router is what /openapi.json must describe)."""
        return self._app

    async def serve(self) -> None:
        """Listen, set `bound`, and wait for cancellation; always cleans up."""
        runner = web.AppRunner(self._app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._config.host, self._config.port)
            try:
                await site.start()
            except OSError as exc:
                msg = f"api: cannot listen on {self._config.host}:{self._config.port}: {exc}"
                raise ListenFailed(msg) from exc
            self.port = _bound_port(runner)
            self._component.up(f"http://{self._config.host}:{self.port}")
            log.info("local API on http://%s:%s", self._config.host, self.port)
            self.bound.set()
            await asyncio.Event().wait()
        finally:
            self._component.stopped()
            await runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None
