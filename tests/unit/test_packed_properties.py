"""Per-device PUBLISH properties are packed once and stay byte-for-byte what paho packs."""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gatewayd.cloud.link import PackedOnce


def test_packed_once_is_what_paho_packs():
    pairs = [("device_id", "gw1_meter-7"), ("access_key", "k3y")]
    reference = Properties(PacketTypes.PUBLISH)
    reference.UserProperty = pairs
    packed = PackedOnce(pairs)
    assert packed.pack() == reference.pack()
    assert packed.pack() is packed.pack()  # not packed again
    assert packed.UserProperty == pairs  # still readable as paho properties
