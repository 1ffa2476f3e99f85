"""The native dialect's pure parts: topics, record ids, downlink validation."""

from __future__ import annotations

import contextlib
import json
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
        ("v1/device/a/config", b"\xff", "not JSON"),
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
