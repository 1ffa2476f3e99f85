"""Which devices' firmware versions are known, for the `update` uplink at every connect.

The gateway's own version is gatewayd's; a child's is the `fw_version` of its device in the
YAML. Nothing reads a version from a device yet (Modbus device identification, BLE Device
Information): a site names it in the YAML, and a changed value reaches the cloud at the next
connect after the restart that loads it. A device with no known version gets no `update`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gatewayd import __version__
from gatewayd.driver import DeviceConfig
from gatewayd.identity import child_identity
from gatewayd.settings import Settings

__all__ = ["Firmware", "known_firmware"]


@dataclass(frozen=True, slots=True)
class Firmware:
    """One device's firmware version and the display name the cloud shows with it."""

    device_id: str
    version: str
    name: str


def known_firmware(settings: Settings) -> tuple[Firmware, ...]:
    """The gateway first, then every configured device that names its `fw_version`."""
    gateway = settings.gateway
    gateway_id = gateway.effective_device_id
    known = [Firmware(gateway_id, __version__, gateway.name or gateway_id)]
    for conn in settings.connections.values():
        devices: dict[str, DeviceConfig[Any]] = getattr(conn, "devices", {})
        for dev in devices.values():
            if dev.fw_version is None:
                continue
            device_id = child_identity(conn, dev).device_id
            known.append(Firmware(device_id, dev.fw_version, dev.name or device_id))
    return tuple(known)
