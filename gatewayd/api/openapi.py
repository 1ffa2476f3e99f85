"""The OpenAPI document, built from the same declarations that add the routes.

Surfaces add routes with `add_route()`, which records the operation; `GET /openapi.json`
serves the document. A test compares the router with the document, so a route added without
a description fails the build.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

__all__ = ["API_DOC_KEY", "ApiDoc", "Operation", "Param", "add_route"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True, slots=True)
class Param:
    """A path, query or header parameter."""

    name: str
    where: Literal["path", "query", "header"]
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    description: str = ""
    required: bool = False


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path, as documented.

    Args:
        summary: one line.
        scope: the token scope needed ("public": none).
        params: parameters besides the body.
        body: the request body model.
        responses: status -> description; a 2xx may carry a schema via `reply`.
        reply: JSON schema of the successful reply.
        tag: the surface it belongs to.
    """

    summary: str
    scope: Literal["public", "read", "admin"]
    tag: str
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    responses: dict[int, str] = field(default_factory=dict)
    reply: dict[str, Any] | None = None


class ApiDoc:
    """Every documented operation of one application."""

    def __init__(self, title: str, version: str) -> None:
        self._title = title
        self._version = version
        self._ops: dict[tuple[str, str], Operation] = {}
        self._narrowed: dict[tuple[str, str], dict[str, Any]] = {}

    def narrow(self, model: type[BaseModel], field: str, schema: dict[str, Any]) -> None:
        """Add what this application knows about a body field to its schema (e.g. an enum).

        For values fixed when the daemon starts (the loaded products): the document then says
        exactly what is accepted, not only the model's pattern.
        """
        self._narrowed[(model.__name__, field)] = schema

    def add(self, method: str, path: str, op: Operation) -> None:
        """Record an operation."""
        self._ops[(method.upper(), path)] = op

    def operations(self) -> list[tuple[str, str]]:
        """(method, path) of every documented operation."""
        return sorted(self._ops)

    def document(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document."""
        models = sorted(
            {op.body for op in self._ops.values() if op.body is not None}, key=lambda m: m.__name__
        )
        refs, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
        for (model, name), extra in self._narrowed.items():
            prop = defs.get("$defs", {}).get(model, {}).get("properties", {}).get(name)
            if prop is not None:
                prop.update(extra)
        paths: dict[str, dict[str, Any]] = {}
        for (method, path), op in sorted(self._ops.items()):
            entry: dict[str, Any] = {
                "summary": op.summary,
                "tags": [op.tag],
                "parameters": [_param(p) for p in op.params],
                "responses": _responses(op),
            }
            if op.scope != "public":
                entry["security"] = [{"token": [op.scope]}, {"bearer": [op.scope]}]
                entry["x-scope"] = op.scope
            if op.body is not None:
                entry["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
                }
            paths.setdefault(path, {})[method.lower()] = entry
        return {
            "openapi": "3.1.0",
            "info": {"title": self._title, "version": self._version},
            "paths": paths,
            "components": {
                "schemas": {**defs.get("$defs", {}), "Error": _ERROR_SCHEMA},
                "securitySchemes": {
                    "token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"},
                    "bearer": {"type": "http", "scheme": "bearer"},
                },
            },
        }


API_DOC_KEY = web.AppKey("openapi", ApiDoc)


def add_route(
    app: web.Application, method: str, path: str, handler: Handler, op: Operation
) -> None:
    """Add a route and its documentation together."""
    app.router.add_route(method, path, handler)
    app[API_DOC_KEY].add(method, path, op)


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error_code", "error_msg"],
    "properties": {"error_code": {"type": "string"}, "error_msg": {"type": "string"}},
}


def _param(p: Param) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "in": p.where, "schema": p.schema}
    if p.description:
        out["description"] = p.description
    if p.required or p.where == "path":
        out["required"] = True
    return out


def _responses(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, text in sorted(op.responses.items()):
        entry: dict[str, Any] = {"description": text}
        if status < 300 and op.reply is not None:
            entry["content"] = {"application/json": {"schema": op.reply}}
        elif status >= 400:
            entry["content"] = {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
            }
        out[str(status)] = entry
    if op.scope != "public":
        out.setdefault("400", _error("a token header that is not UTF-8"))
        out.setdefault("401", _error("no token, or an unknown one"))
        out.setdefault("403", _error(f"the token lacks the {op.scope} scope"))
    if op.scope == "admin":
        out.setdefault(
            "503", _error("the gateway's storage refused the change (disk full or failing)")
        )
    if op.body is not None:
        out.setdefault("408", _error("the body did not arrive within api.body_timeout_s"))
        out.setdefault("413", _error("the body is larger than 1 MiB"))
    return dict(sorted(out.items()))


def _error(text: str) -> dict[str, Any]:
    return {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
