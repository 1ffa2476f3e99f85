"""The API's JSON body limits: the depth counted on raw bytes is the depth json.loads sees."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.api.body import MAX_DEPTH, nesting_depth, parse_json_object
from gatewayd.api.errors import ApiError

# Strings full of what could confuse a bracket count: quotes, backslashes, brackets.
_TRICKY = st.text(alphabet='[]{}"\\\\ab\u00e9', max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | _TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
    max_leaves=40,
)  # fmt: skip


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(_JSON, st.booleans())
def test_depth_on_bytes_is_the_parsed_depth(value: Any, ascii_only: bool) -> None:
    data = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert nesting_depth(data, 1000) == depth(value)


DEEP = f"body: nested more than {MAX_DEPTH} levels deep"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[" * 100_000, DEEP),
        (b'{"a":' * 100_000, DEEP),
        (b'[[["\\"' + b"[" * 50, "body: not valid JSON"),  # the brackets are in a string
        (b'["\\\\"' + b"[" * 50, DEEP),  # an escaped backslash ends that string
        (b"]]][[[" * 20, "body: not valid JSON"),
    ],
)
def test_unbalanced_or_deep_bytes_are_refused_before_parsing(data: bytes, message: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_json_object(data)
    assert refused.value.status == 400
    assert refused.value.message.startswith(message)


def test_the_limit_itself_is_accepted() -> None:
    body = b'{"a":' * (MAX_DEPTH - 1) + b"[1]" + b"}" * (MAX_DEPTH - 1)
    assert depth(parse_json_object(body)) == MAX_DEPTH
    with pytest.raises(ApiError, match="nested more than"):
        parse_json_object(b'{"a":' * MAX_DEPTH + b"[1]" + b"}" * MAX_DEPTH)
