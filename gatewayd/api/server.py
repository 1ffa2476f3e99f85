"""The aiohttp server, embedded in the daemon's own event loop and task tree."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gatewayd import __version__
from gatewayd.api.auth import TokenAuth, auth_middleware
from gatewayd.api.body import BODY_TIMEOUT_KEY
from gatewayd.api.connections import ConnectionGuard
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

    Connections are bounded (docs/api.md, "Connections"): `api.max_connections` open at once,
    `api.header_timeout_s` for a new connection's first headers, `api.keepalive_timeout_s`
    between requests, `api.body_timeout_s` for a body.

    Args:
        config: where to listen, and the bounds.
        app: the aiohttp application.
        component: health entry marked up once the socket listens.
    """

    def __init__(self, config: ApiConfig, app: web.Application, component: Component) -> None:
        self._config = config
        self._app = app
        self._app[BODY_TIMEOUT_KEY] = config.body_timeout_s
        self._component = component
        self.bound = asyncio.Event()
        self.port: int | None = None
        self.guard: ConnectionGuard | None = None

    @property
    def app(self) -> web.Application:
        """The application served (its router is what /openapi.json must describe)."""
        return self._app

    async def serve(self) -> None:
        """Listen, set `bound`, and wait for cancellation; always cleans up."""
        config = self._config
        runner = web.AppRunner(
            self._app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=config.keepalive_timeout_s,
            logger=_http_log,
            # A stop waits this long for requests in handlers, not aiohttp's 60 s.
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        listener: asyncio.Server | None = None
        try:
            server = runner.server
            if server is None:  # setup() sets it; a None here is a bug in this module
                raise RuntimeError("api: the runner has no server after setup")
            self.guard = ConnectionGuard(
                server,
                limit=config.max_connections,
                header_timeout_s=config.header_timeout_s,
            )
            loop = asyncio.get_running_loop()
            try:
                listener = await loop.create_server(
                    self.guard, config.host, config.port, reuse_address=True, backlog=128
                )
            except OSError as exc:
                msg = f"api: cannot listen on {config.host}:{config.port}: {exc}"
                raise ListenFailed(msg) from exc
            self.port = int(listener.sockets[0].getsockname()[1])
            self._component.up(f"http://{config.host}:{self.port}")
            log.info("local API on http://%s:%s", config.host, self.port)
            self.bound.set()
            await asyncio.Event().wait()
        finally:
            self._component.stopped()
            if listener is not None:
                listener.close()
            await runner.cleanup()
            if self.guard is not None:
                self.guard.close()


_SHUTDOWN_TIMEOUT_S = 2.0


class _ClientFault(logging.Filter):
    """A request aiohttp could not parse is the client's fault: a debug line, no traceback.

    aiohttp answers it 400 itself; logged at ERROR with a traceback, any client could fill
    the journal. Anything else aiohttp reports keeps its level and traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and exc.code < 500:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.msg = f"{record.msg}: {exc.code} {exc.message}".replace("\n", " ")
            record.exc_info = None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_http_log = logging.getLogger("gatewayd.api.http")
_http_log.addFilter(_ClientFault())
