"""The QoS 1 PUBLISH the seam builds and the PUBACKs it takes out of the broker's stream."""

from __future__ import annotations

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gatewayd.cloud.wire import (
    MalformedPacket,
    PubackFilter,
    encode_length,
    publish_qos1,
    topic_field,
)


def pahos_publish(protocol: int, mid: int, topic: str, payload: bytes, props: Properties | None):
    """The bytes paho itself queues for the same PUBLISH: the reference."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=protocol)
    queued: list[bytes] = []
    client._sock = object()  # any socket: paho only checks that there is one
    client._packet_queue = lambda _cmd, packet, *_a, **_k: queued.append(bytes(packet))  # type: ignore[method-assign]
    client._send_publish(mid, topic.encode(), payload, qos=1, properties=props)
    client._sock = None
    (packet,) = queued
    return packet


@pytest.mark.parametrize(
    ("n", "wire"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_variable_byte_integers_match_the_specification_examples(n, wire):
    assert encode_length(n) == wire


def test_a_length_beyond_four_bytes_is_refused():
    with pytest.raises(ValueError, match="268435456"):
        encode_length(268_435_456)


@pytest.mark.parametrize("size", [0, 10, 200, 20_000, 3_000_000])
def test_mqtt5_publish_is_byte_for_byte_what_paho_sends(size):
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("device_id", "gw-ünï")]
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    topic = "v1/device/gw-ünï/telemetry"
    ours = publish_qos1(topic_field(topic), 513, props.pack(), payload)
    assert ours == pahos_publish(paho.MQTTv5, 513, topic, payload, props)


def test_mqtt5_publish_without_properties_carries_an_empty_property_field():
    ours = publish_qos1(topic_field("a/b"), 7, b"\x00", b"{}")
    assert ours == pahos_publish(paho.MQTTv5, 7, "a/b", b"{}", None)


def test_mqtt311_publish_has_no_property_field():
    ours = publish_qos1(topic_field("a/b"), 65_535, None, b"{}")
    assert ours == pahos_publish(paho.MQTTv311, 65_535, "a/b", b"{}", None)


@pytest.mark.parametrize("topic", ["", "v1/+/telemetry", "v1/#", "a\0b", "x" * 65_536])
def test_what_is_not_a_topic_name_is_refused(topic):
    with pytest.raises(ValueError, match="not a valid topic name"):
        topic_field(topic)


def puback(mid: int, code: int | None = None, props: bytes = b"") -> bytes:
    body = mid.to_bytes(2, "big") + (b"" if code is None else bytes((code,))) + props
    return b"\x40" + encode_length(len(body)) + body


class Claims:
    """Claims the PUBACKs of some packet identifiers and remembers them."""

    def __init__(self, *mids: int) -> None:
        self.mids = set(mids)
        self.settled: list[tuple[int, int]] = []

    def __call__(self, mid: int, code: int) -> bool:
        if mid not in self.mids:
            return False
        self.settled.append((mid, code))
        return True


DOWNLINK = publish_qos1(topic_field("v1/device/gw/commands"), 9, b"\x00", b'{"id":"c1"}' * 20)
SUBACK = b"\x90\x03\x00\x01\x01"
STREAM = (
    puback(1)
    + DOWNLINK
    + puback(2, 0x87)
    + puback(500)  # not ours: paho's own
    + SUBACK
    + puback(3, 0x10, b"\x03\x1f\x00\x00")  # a reason string property, empty
)


def test_our_pubacks_are_taken_out_and_everything_else_stays_in_order():
    claims = Claims(1, 2, 3)
    assert PubackFilter(claims).feed(STREAM) == DOWNLINK + puback(500) + SUBACK
    assert claims.settled == [(1, 0), (2, 0x87), (3, 0x10)]


def test_a_stream_cut_anywhere_gives_the_same_packets():
    for cut in range(1, len(STREAM)):
        claims = Claims(1, 2, 3)
        split = PubackFilter(claims)
        assert split.feed(STREAM[:cut]) + split.feed(STREAM[cut:]) == (
            DOWNLINK + puback(500) + SUBACK
        ), cut
        assert claims.settled == [(1, 0), (2, 0x87), (3, 0x10)], cut


def test_a_stream_read_byte_by_byte_gives_the_same_packets():
    claims = Claims(1, 2, 3)
    split = PubackFilter(claims)
    assert b"".join(split.feed(STREAM[i : i + 1]) for i in range(len(STREAM))) == (
        DOWNLINK + puback(500) + SUBACK
    )
    assert claims.settled == [(1, 0), (2, 0x87), (3, 0x10)]


def test_a_large_downlink_passes_on_as_it_comes_not_once_complete():
    big = publish_qos1(topic_field("v1/device/gw/config"), 4, b"\x00", b"x" * 1_000_000)
    split = PubackFilter(Claims(1))
    first = split.feed(big[:70_000])
    assert first == big[:70_000]  # nothing held back past the header
    assert split.feed(big[70_000:] + puback(1)) == big[70_000:]


def test_a_remaining_length_over_four_bytes_is_malformed():
    with pytest.raises(MalformedPacket, match="Remaining Length"):
        PubackFilter(Claims()).feed(b"\x30\xff\xff\xff\xff\x01")
