"""The native dialect's pure parts: topics, record ids, downlink validation."""

from __future__ import annotations

import contextlib
import json
import re
import time
from datetime import UTC, datetime

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.cloud.dialects import native
from gatewayd.cloud.link import should_fall_back
from gatewayd.cloud.ratelimit import TokenBucket
from gatewayd.store.cloud_state import newer_version


def test_record_id_is_spliced_into_the_payload_object():
    body = native.telemetry(datetime(2021, 8, 4, 7, 45, 44, 122000, tzinfo=UTC), {"fan": 1.5})
    out = json.loads(native.with_record_id(body, "3-17"))
    assert out == {
        "record_id": "3-17",
        "status": "online",
        "timestamp": "2021-08-04T07:45:44.122Z",
        "telemetries": {"fan": 1.5},
    }
    assert json.loads(native.with_record_id(b"{}", "1-1")) == {"record_id": "1-1"}


@given(st.dictionaries(st.text(), st.one_of(st.integers(), st.text(), st.booleans())))
def test_record_id_splice_keeps_any_object(body):
    payload = native.encode_json(body)
    assert json.loads(native.with_record_id(payload, "9-9")) == {"record_id": "9-9", **body}


def test_subscriptions_cover_every_downlink_of_the_gateway_and_children():
    topics = native.subscriptions("gw", ["gw", "c1"])
    assert "v1/device/gw/children/add/response" in topics
    assert "v1/device/c1/commands" in topics
    assert "v1/device/c1/children/notify" not in topics
    assert len(topics) == len(set(topics)) == 8 + 5


@pytest.mark.parametrize(
    ("topic", "payload", "error"),
    [
        ("v2/device/a/config", b"{}", "is not under v1/device/"),
        ("v1/device/a/telemetry", b"{}", "unknown device or kind"),
        ("v1/device/a/config", b"\xff", "not UTF-8: byte 0"),
        ("v1/device/a/config", b"{}", "version: Field required"),
        ("v1/device/a/commands", b'{"id": "", "name": "x"}', "id: String should have at least"),
        ("v1/device/a/firmware", b"[]", "(payload): Input should be a valid dictionary"),
        ("v1/device/gw/children/notify", b'{"version": 1, "event": "move"}', "event: Input"),
    ],
)
def test_bad_downlinks_name_the_problem(topic, payload, error):
    with pytest.raises(native.DownlinkInvalid, match=error.replace("(", r"\(").replace(")", r"\)")):
        native.decode(topic, payload)


@given(st.binary(max_size=200), st.sampled_from(native.DEVICE_DOWNLINKS + native.GATEWAY_DOWNLINKS))
def test_any_bytes_either_decode_or_raise_downlink_invalid(payload, kind):
    with contextlib.suppress(native.DownlinkInvalid):
        native.decode(f"v1/device/x/{kind}", payload)


HOSTILE = [
    (b"[" * 100_000 + b"]" * 100_000, "nests 100000 deep, more than 32"),
    (b'{"a":' * 50_000, "nests 50000 deep"),
    (b"[" * 33 + b"]" * 33, "nests 33 deep"),
    (b'{"id": "a", "name": "b", "parameters": ' + b"9" * 5000 + b"}", "integer of 5000 digits"),
    (b"-" + b"1" * 41, "integer of 41 digits (at most 40)"),
    (b'{"id": "a", "name": "b", "parameters": 1e999}', "'1e999' is out of range"),
    (b'{"id": "a", "name": "b", "parameters": NaN}', "NaN is not a JSON number"),
    (b'{"id": "a", "name": "b", "parameters": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"id": "\\udc00", "name": "b"}', "lone UTF-16 surrogate"),
    (b'{"id": "a", "name": "\xed\xa0\x80"}', "not UTF-8: byte 21 (0xed)"),
    (b"\xef\xbb\xbf{}", "not JSON: Unexpected UTF-8 BOM"),
    (b" " * (native.MAX_PAYLOAD_BYTES + 1), "262145 bytes is larger than 262144"),
]


@pytest.mark.parametrize(("payload", "error"), HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_payloads_are_refused_under_limits(payload, error):
    with pytest.raises(native.DownlinkInvalid, match=re.escape(error)):
        native.decode("v1/device/gw/commands", payload)


def test_payloads_at_the_limits_are_accepted():
    deep = b"[" * (native.MAX_DEPTH - 1) + b"]" * (native.MAX_DEPTH - 1)
    body = b'{"id": "a", "name": "b", "parameters": ' + deep + b"}"
    assert native.decode("v1/device/gw/commands", body).body.parameters == json.loads(deep)
    long_int = b'{"id": "a", "name": "b", "parameters": -' + b"9" * 40 + b"}"
    assert native.decode("v1/device/gw/commands", long_int).body.parameters == -(10**40 - 1)
    pad = b" " * (native.MAX_PAYLOAD_BYTES - 30)
    assert native.decode("v1/device/gw/commands", b'{"id":"a","name":"b"}' + pad).body.id == "a"
    pair = b'{"id": "\\ud83d\\ude00", "name": "\\\\udc00"}'  # a pair, an escaped backslash
    decoded = native.decode("v1/device/gw/commands", pair).body
    assert (decoded.id, decoded.name) == ("\U0001f600", "\\udc00")


@pytest.mark.parametrize(
    ("payload", "depth"),
    [
        (b"{}", 1),
        (b'[1, [2, {"a": [3]}]]', 4),
        (b'"[[[[" ', 0),
        (b'["a\\"[[[", 1]', 1),  # an escaped quote does not end the string
        (b'["a\\\\", [[1]]]', 3),  # an escaped backslash does
        (b'"unterminated [[[[', 0),
        (b'"ends in a backslash \\', 0),
        (b"[" * 5000, 5000),
    ],
)
def test_nesting_depth_skips_strings(payload, depth):
    assert native.nesting_depth(payload) == depth


@given(
    st.recursive(
        st.none() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_nesting_depth_matches_the_parsed_structure(value):
    def depth(v):
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        return 0

    assert native.nesting_depth(json.dumps(value).encode()) == depth(value)


def test_a_quadratic_string_scan_is_impossible():
    started = time.perf_counter()
    native.nesting_depth(b'"' + b'\\"' * (native.MAX_PAYLOAD_BYTES // 2))  # never terminated
    native.nesting_depth(b'"a\\' * (native.MAX_PAYLOAD_BYTES // 3))
    assert time.perf_counter() - started < 1.0


def test_long_names_are_cut_in_messages():
    with pytest.raises(native.DownlinkInvalid) as caught:
        native.decode("v1/device/" + "x" * 10_000, b"{}")
    assert len(str(caught.value)) < 300
    many = json.dumps({"id": "a", "name": "b", "status": [1] * 1000, "x" * 5000: 1}).encode()
    with pytest.raises(native.DownlinkInvalid, match="status: Input should be a valid string"):
        native.decode("v1/device/a/commands", many)
    bad_children = json.dumps({"request_id": "r", "successful_devices": [{}] * 1000}).encode()
    with pytest.raises(native.DownlinkInvalid, match=r"\(and 997 more\)") as caught:
        native.decode("v1/device/a/children/add/response", bad_children)
    assert len(str(caught.value)) < 400


def test_config_versions_compare_as_numbers_when_both_are():
    assert newer_version("10", "9")
    assert not newer_version("9", "10")
    assert not newer_version("3", "3")
    assert newer_version("2024-02-01T00:00:00Z", "2024-01-31T23:59:59Z")
    decoded = native.decode("v1/device/a/config", b'{"version": 7, "mode": "eco"}')
    assert isinstance(decoded.body, native.ConfigDown)
    assert decoded.body.version == "7"
    assert decoded.body.fields() == {"mode": "eco"}


async def test_token_bucket_allows_the_burst_then_the_rate():
    now = [0.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(10, burst=2, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        await bucket.take()
    assert slept == pytest.approx([0.1, 0.1])


def test_try_take_takes_only_a_token_that_is_there():
    now = [0.0]
    bucket = TokenBucket(10, burst=2, clock=lambda: now[0])
    assert bucket.try_take()
    assert bucket.try_take()
    assert not bucket.try_take()  # empty: nothing taken, nothing owed
    now[0] = 0.05
    assert not bucket.try_take()
    now[0] = 0.1
    assert bucket.try_take()
    assert bucket.wait_s() == pytest.approx(0.1)


def test_fallback_only_for_an_unsupported_protocol_version():
    assert should_fall_back(MqttConnectError(0x84))
    assert should_fall_back(MqttConnectError(1))
    assert not should_fall_back(MqttConnectError(0x86))
    assert not should_fall_back(aiomqtt.MqttError("down"))
