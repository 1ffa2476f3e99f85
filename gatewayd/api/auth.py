"""Who may call the local API: bearer tokens from the configuration, stored as SHA-256.

A token is sent in `X-Auth-Token` (the IoTDA surface's header) or as `Authorization: Bearer`.
Reading (GET, HEAD) needs the `read` scope; anything else needs `admin`. Only the paths given
as public (`/healthz`) are open without a token. A token header that is not UTF-8 is a 400
naming the header, before any token is looked up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from aiohttp import web

from gatewayd.api.errors import ApiError, error_response
from gatewayd.settings import ApiToken

__all__ = ["Scope", "TokenAuth", "auth_middleware", "hash_token"]

Scope = Literal["read", "admin"]
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_GRANTS: dict[Scope, frozenset[Scope]] = {
    "read": frozenset({"read"}),
    "admin": frozenset({"read", "admin"}),
}


def hash_token(token: str) -> str:
    """What the configuration stores for a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenAuth:
    """The configured tokens.

    Args:
        tokens: named tokens from `api.tokens`.
    """

    def __init__(self, tokens: Mapping[str, ApiToken]) -> None:
        self._by_hash: dict[str, tuple[str, Scope]] = {
            t.sha256: (name, t.scope) for name, t in tokens.items()
        }

    def identify(self, token: str) -> tuple[str, Scope] | None:
        """The name and scope of a presented token, or None when it is not configured."""
        return self._by_hash.get(hash_token(token))


def auth_middleware(auth: TokenAuth, public: Iterable[str] = ("/healthz",)) -> Any:
    """A middleware refusing requests without a sufficient token (401, then 403)."""
    open_paths = frozenset(public)

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in open_paths:
            response: web.StreamResponse = await handler(request)
            return response
        token = _presented(request)
        if token is None:
            return error_response(
                401, "UNAUTHORIZED", "X-Auth-Token: a token is required (or Authorization: Bearer)"
            )
        found = auth.identify(token)
        if found is None:
            return error_response(401, "UNAUTHORIZED", "X-Auth-Token: unknown token")
        name, scope = found
        needed: Scope = "read" if request.method in _READ_METHODS else "admin"
        if needed not in _GRANTS[scope]:
            return error_response(
                403, "FORBIDDEN", f"X-Auth-Token: token {name!r} lacks the {needed} scope"
            )
        return await handler(request)  # type: ignore[no-any-return]

    return check


def _presented(request: web.Request) -> str | None:
    token = _header(request, "X-Auth-Token")
    if token:
        return token
    scheme, _, value = _header(request, "Authorization").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _header(request: web.Request, name: str) -> str:
    """A header's value; bytes that are not UTF-8 are the client's error, named as such.

    aiohttp keeps such bytes as lone surrogates, which cannot be hashed (or logged) as text.
    """
    value = request.headers.get(name, "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        msg = f"{name}: not valid UTF-8 (byte {exc.start})"
        raise ApiError(400, "INVALID_HEADER", msg) from None
    return value
