"""Error replies of the local API: `{"error_code", "error_msg"}`, the message naming the field."""

from __future__ import annotations

import logging
import secrets
import sqlite3
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gatewayd.store.access import Trouble, classify
from gatewayd.store.errors import (
    DeviceExists,
    DeviceNotFound,
    HasChildren,
    InvalidField,
    ProtectedDevice,
    RegistryError,
    VersionConflict,
    invalid_request,
)

__all__ = ["ApiError", "error_middleware", "error_response", "validated"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_STATUS: tuple[tuple[type[RegistryError], int], ...] = (
    (DeviceNotFound, 404),
    (DeviceExists, 409),
    (HasChildren, 409),
    (ProtectedDevice, 409),
    (VersionConflict, 409),
    (InvalidField, 400),
)

_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    500: "INTERNAL_ERROR",
}


class ApiError(Exception):
    """A refusal with its HTTP status, raised by handlers and turned into a reply.

    Args:
        status: HTTP status.
        code: the `error_code`.
        message: the `error_msg`, naming the field at fault.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(message)


def error_response(status: int, code: str, message: str) -> web.Response:
    """The error body every surface of this API uses."""
    return web.json_response({"error_code": code, "error_msg": message}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn refusals, unknown routes and bugs into JSON error replies.

    A 500 is only ever a bug: its reply carries an incident number that the log line repeats.
    """
    try:
        response: web.StreamResponse = await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except RegistryError as exc:
        status = next((s for cls, s in _STATUS if isinstance(exc, cls)), 400)
        return error_response(status, exc.code, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except sqlite3.Error as exc:
        return _storage_refused(request, exc)
    except Exception as exc:  # noqa: BLE001 - a bug: logged with its trace in _incident
        return _incident(request, exc)
    return response


def _storage_refused(request: web.Request, exc: sqlite3.Error) -> web.Response:
    """503 for a full or failing disk, the gateway's weather: nothing changed, retry later."""
    if classify(exc) not in {Trouble.DISK, Trouble.LOCKED}:
        return _incident(request, exc)
    log.warning("%s %s: storage refused it: %s", request.method, request.path, exc)
    response = error_response(
        503,
        "STORAGE_UNAVAILABLE",
        f"the gateway's storage refused the change ({exc}): the change was not stored; retry later",
    )
    response.headers["Retry-After"] = "10"
    return response


def _incident(request: web.Request, exc: BaseException) -> web.Response:
    """A 500: only ever a bug. The reply's incident number is in the log line with the trace."""
    incident = secrets.token_hex(4)
    log.error("%s %s failed (incident %s)", request.method, request.path, incident, exc_info=exc)
    msg = f"internal error, incident {incident}; see the gateway's log"
    return error_response(500, "INTERNAL_ERROR", msg)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """Refusals from aiohttp itself (no route, wrong method, body too large) in this API's shape."""
    code = _HTTP_CODES.get(exc.status, f"HTTP_{exc.status}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = error_response(
            405, code, f"method: {request.method} is not allowed on this path; allowed: {allowed}"
        )
        response.headers["Allow"] = allowed
        return response
    if exc.status == 404:
        return error_response(404, code, f"path: no route {request.path!r}")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(413, code, f"body: larger than {request.client_max_size} bytes")
    return error_response(exc.status, code, exc.reason)


def validated(model: type[M], data: Any, prefix: str = "") -> M:
    """`model` validated from `data`; a 400 naming the first bad field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc, prefix) from None
