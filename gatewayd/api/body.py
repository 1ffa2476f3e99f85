"""The one way the local API reads a JSON request body: bounded in size, time and depth.

`json.loads` recurses once per nesting level and Python's `int()` refuses more than 4,300
digits, so a small body could raise RecursionError or ValueError deep inside a handler. Here
the depth is counted on the raw bytes before parsing, numbers are checked as they are parsed,
and every refusal is a 400 (413 for size, 408 for a body that stops arriving) naming what is
wrong and, where there is one, the field.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gatewayd.api.errors import ApiError

__all__ = [
    "BODY_TIMEOUT_KEY",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "parse_json_object",
    "read_json",
]

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects accepted; device bodies need a handful of levels."""
MAX_INT_DIGITS = 64
"""Longest integer accepted, in digits; a 64-bit value has at most 20."""
BODY_TIMEOUT_KEY = web.AppKey("api.body_timeout_s", float)
_DEFAULT_BODY_TIMEOUT_S = 30.0

# Strings (with their escapes) are skipped when counting brackets: a "[" inside one nests nothing.
_FOLD = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class _Refused(Exception):
    """A number refused while parsing; the walk afterwards finds its field."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _Bad:
    """Stands in the parsed tree for a refused number, so its path can be reported."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or an ApiError saying what is wrong with it."""
    timeout = request.app.get(BODY_TIMEOUT_KEY, _DEFAULT_BODY_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout):
            data = await request.read()
    except TimeoutError:
        msg = f"body: not received within {timeout:g} s"
        raise ApiError(408, "REQUEST_TIMEOUT", msg) from None
    except web.HTTPRequestEntityTooLarge:
        msg = f"body: larger than {request.client_max_size} bytes"
        raise ApiError(413, "PAYLOAD_TOO_LARGE", msg) from None
    return parse_json_object(data)


def parse_json_object(data: bytes) -> dict[str, Any]:
    """Parse `data` as one JSON object under this module's limits.

    Raises:
        ApiError: 400 `INVALID_JSON` naming the problem, or `INVALID_FIELD` naming the field
            of a value out of bounds (a long integer, an infinite number, a lone surrogate).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"body: not UTF-8 (byte {exc.start})"
        raise ApiError(400, "INVALID_JSON", msg) from None
    depth = nesting_depth(data, MAX_DEPTH)
    if depth > MAX_DEPTH:
        msg = f"body: nested more than {MAX_DEPTH} levels deep"
        raise ApiError(400, "INVALID_JSON", msg)
    bad: list[_Bad] = []
    try:
        body = json.loads(
            text,
            parse_int=lambda s: _int(s, bad),
            parse_float=lambda s: _float(s, bad),
            parse_constant=_constant,
        )
    except _Refused as exc:
        raise ApiError(400, "INVALID_JSON", f"body: {exc.reason}") from None
    except (ValueError, RecursionError) as exc:
        # RecursionError cannot happen below MAX_DEPTH; kept so no parse can end in a 500.
        raise ApiError(400, "INVALID_JSON", f"body: not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "INVALID_JSON", "body: must be a JSON object")
    if bad:
        path, reason = _find(body, lambda v: isinstance(v, _Bad))
        raise ApiError(400, "INVALID_FIELD", f"{path or 'body'}: {reason}")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        path, _ = _find(body, _has_surrogate)
        msg = f"{path or 'body'}: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)"
        raise ApiError(400, "INVALID_FIELD", msg) from None
    return body


def nesting_depth(data: bytes, limit: int) -> int:
    """The deepest nesting of `[` and `{` outside strings, or a number above `limit`.

    Each pass deletes the innermost pairs, so the passes counted are the depth; every pass is
    one C-level replace, so a megabyte of brackets costs a few milliseconds, not a Python loop.
    """
    # With the escapes gone (each backslash pair first, then each backslash-quote) no string
    # holds a quote, so every other piece between quotes is outside the strings.
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[0::2])
    brackets = outside.translate(_FOLD, _NOT_BRACKETS)
    depth = 0
    while brackets and depth <= limit:
        inner = brackets.replace(b"[]", b"")
        if len(inner) == len(brackets):
            # Unbalanced: what is left is "]]..[[", and json.loads would recurse into each "[".
            return depth + inner.count(b"[")
        brackets = inner
        depth += 1
    return depth


def _int(text: str, bad: list[_Bad]) -> int | _Bad:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        found = _Bad(f"an integer of {digits} digits; at most {MAX_INT_DIGITS}")
        bad.append(found)
        return found
    return int(text)


def _float(text: str, bad: list[_Bad]) -> float | _Bad:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 20 else text[:20] + "..."
        found = _Bad(f"the number {shown} is out of range")
        bad.append(found)
        return found
    return value


def _constant(name: str) -> Any:
    msg = f"{name} is not JSON (RFC 8259 has no NaN or Infinity)"
    raise _Refused(msg)


def _has_surrogate(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _find(node: object, match: Callable[[object], bool], path: str = "") -> tuple[str, str]:
    """The dotted path of the first value (or key) that `match`es, and its reason if any."""
    found = _first(node, match, path)
    return found if found is not None else ("", "")


def _first(node: object, match: Callable[[object], bool], path: str) -> tuple[str, str] | None:
    if match(node):
        return path, str(getattr(node, "reason", ""))
    children: list[tuple[str, object]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if match(key):
                return child, ""
            children.append((child, value))
    elif isinstance(node, list):
        children = [(f"{path}.{i}" if path else str(i), v) for i, v in enumerate(node)]
    for child, value in children:
        found = _first(value, match, child)
        if found is not None:
            return found
    return None
