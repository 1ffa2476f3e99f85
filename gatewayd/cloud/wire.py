"""The two MQTT packets the uplink writes and reads itself: QoS 1 PUBLISH and its PUBACK.

At a thousand messages a second, paho's path for them was the largest single share of the
daemon's CPU: for every message a `MQTTMessageInfo` with a condition variable, a debug line
formatted, locks; for every PUBACK several reads, a reason-code object, a properties object
and a lookup under a lock. Both packets are fixed in shape (MQTT 3.1.1 section 3.3 and 3.4,
MQTT 5.0 section 3.3 and 3.4), so the seam builds and parses them here, and everything else
on the connection (CONNECT, SUBSCRIBE, downlinks, keep-alive, DISCONNECT) stays with paho.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["MalformedPacket", "PubackFilter", "encode_length", "publish_qos1", "topic_field"]

PUBACK = 0x40
PUBLISH_QOS1 = 0x32  # PUBLISH, QoS 1, not DUP, not RETAIN

MAX_LENGTH = 268_435_455  # the largest Remaining Length four bytes can say
# A PUBACK is an identifier, a reason code and perhaps a reason string; one claiming more
# is left to paho rather than held in memory until it is complete.
MAX_PUBACK = 65_536


class MalformedPacket(OSError):
    """The broker sent bytes that are not MQTT; the connection cannot go on."""


def encode_length(n: int) -> bytes:
    """MQTT's Variable Byte Integer (Remaining Length, property lengths)."""
    if not 0 <= n <= MAX_LENGTH:
        msg = f"{n} does not fit an MQTT variable byte integer"
        raise ValueError(msg)
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def topic_field(topic: str) -> bytes:
    """A topic name as a PUBLISH carries it: two length bytes, then UTF-8.

    Raises:
        ValueError: empty, too long, or with a wildcard or NUL (not a topic *name*).
    """
    data = topic.encode()
    if not data or len(data) > 0xFFFF or any(c in topic for c in "+#\0"):
        msg = f"not a valid topic name to publish to: {topic!r}"
        raise ValueError(msg)
    return len(data).to_bytes(2, "big") + data


def publish_qos1(topic: bytes, mid: int, properties: bytes | None, payload: bytes) -> bytes:
    """One PUBLISH at QoS 1.

    Args:
        topic: from `topic_field`.
        mid: the packet identifier, 1..65535.
        properties: MQTT 5 properties with their length in front (one zero byte for none);
            None on MQTT 3.1.1, which has no such field.
        payload: the application message.
    """
    props = properties or b""
    remaining = len(topic) + 2 + len(props) + len(payload)
    return b"".join(
        (
            bytes((PUBLISH_QOS1,)),
            encode_length(remaining),
            topic,
            mid.to_bytes(2, "big"),
            props,
            payload,
        )
    )


class PubackFilter:
    """Takes the PUBACKs that `settle` claims out of the stream of packets from the broker.

    Stateful across reads: a packet cut by a read is continued by the next. Other packets
    pass on as their bytes come, so a large downlink is never held back or copied whole; only
    the header of a packet and a whole PUBACK wait for their last byte.

    Args:
        settle: called with (packet identifier, reason code) for each PUBACK; returns
            whether the PUBACK was one of ours (then it is removed from the stream).
    """

    __slots__ = ("_held", "_passing", "_settle")

    def __init__(self, settle: Callable[[int, int], bool]) -> None:
        self._settle = settle
        self._held = b""  # the start of a packet header, or of a PUBACK
        self._passing = 0  # bytes still to come of a packet that passes on

    def feed(self, data: bytes) -> bytes:
        """The bytes of `data` for paho, in order.

        Raises:
            MalformedPacket: a Remaining Length longer than four bytes.
        """
        if self._held:
            data = self._held + data
            self._held = b""
        size = len(data)
        at = min(self._passing, size)  # the rest of a packet already passing on
        self._passing -= at
        kept: list[bytes] = []
        start = 0  # first byte not yet kept nor dropped
        while at < size:
            # Remaining Length: one to four bytes after the packet type.
            length, shift, pos, whole = 0, 0, at + 1, False
            while pos < size:
                byte = data[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    whole = True
                    break
                shift += 7
                if shift > 21:
                    msg = "broker sent a Remaining Length over four bytes"
                    raise MalformedPacket(msg)
            end = pos + length
            ours = data[at] == PUBACK and 2 <= length <= MAX_PUBACK
            if not whole or (ours and end > size):
                self._held = data[at:]
                break
            if end > size:
                self._passing = end - size
                at = size
                break
            if ours and self._settle((data[pos] << 8) | data[pos + 1], _reason(data, pos, length)):
                if at > start:
                    kept.append(data[start:at])
                start = end
            at = end
        kept.append(data[start:at])
        return b"".join(kept)


def _reason(data: bytes, pos: int, length: int) -> int:
    """A PUBACK's reason code; absent (MQTT 3.1.1, or MQTT 5 success) means 0."""
    return data[pos + 2] if length >= 3 else 0
