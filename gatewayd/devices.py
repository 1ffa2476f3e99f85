"""The device record and IoTDA's registration rules that every new or changed device must pass.

`DeviceCreate` and `DeviceUpdate` are the validated requests (from the REST API or from the
YAML sync); `Device` is the stored record. Every rule names the field it checks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

__all__ = [
    "DEVICE_ID_PATTERN",
    "AuthInfo",
    "AuthInfoUpdate",
    "AuthType",
    "Device",
    "DeviceCreate",
    "DeviceStatus",
    "DeviceUpdate",
    "InitialDesired",
    "NodeType",
    "compact_time",
    "mask",
    "precise_time",
]

# Ids travel in MQTT topics and URLs: ASCII letters, digits, underscore and hyphen only.
DEVICE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""A device id, whole (`fullmatch`): what a path's `{device_id}` is checked against."""
DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
NodeId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ProductId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,36}$")]
AppId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,36}$")]
# Names and descriptions: letters (any script), digits, spaces and _?'#().,&%@!-
# IoTDA's own example description has a space, so spaces are accepted.
DeviceName = Annotated[str, StringConstraints(pattern=r"^[\w ?'#().,&%@!-]{1,256}$")]
Description = Annotated[str, StringConstraints(pattern=r"^[\w ?'#().,&%@!-]{0,2048}$")]
ServiceId = Annotated[str, StringConstraints(pattern=r"^[\w?'#().,&%@!-]{1,32}$")]
Secret = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,32}$")]
Fingerprint = Annotated[str, StringConstraints(pattern=r"^(?:[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$")]
Timeout = Annotated[int, Field(ge=0, le=2147483647, strict=True)]

EXTENSION_INFO_MAX_BYTES = 1024


class NodeType(StrEnum):
    """Where a device sits: the gateway itself, or a device behind it."""

    GATEWAY = "GATEWAY"
    ENDPOINT = "ENDPOINT"
    UNKNOWN = "UNKNOWN"


class DeviceStatus(StrEnum):
    """Connection status; INACTIVE until the device's first data."""

    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"
    ABNORMAL = "ABNORMAL"
    INACTIVE = "INACTIVE"
    FROZEN = "FROZEN"


class AuthType(StrEnum):
    """How a device proves who it is."""

    SECRET = "SECRET"  # noqa: S105 - a mode name, not a secret
    CERTIFICATES = "CERTIFICATES"


class _Request(BaseModel):
    # Python's re: the Rust engine's compiled form of the unicode classes is too large.
    model_config = ConfigDict(frozen=True, extra="forbid", regex_engine="python-re")


class AuthInfo(_Request):
    """Access credentials of a new device."""

    auth_type: AuthType = Field(default=AuthType.SECRET, description="SECRET or CERTIFICATES.")
    secret: Secret | None = Field(default=None, description="8-32 of A-Z a-z 0-9 _ -.")
    fingerprint: Fingerprint | None = Field(default=None, description="40 or 64 hex digits.")
    secure_access: bool = Field(default=True, strict=True, description="Secure protocol only.")
    timeout: Timeout = Field(default=0, description="Seconds to first activation; 0: forever.")

    def model_post_init(self, context: Any, /) -> None:
        """Secret and fingerprint each belong to one auth_type."""
        del context
        if self.auth_type is AuthType.CERTIFICATES and self.secret is not None:
            raise ValueError("secret: only valid with auth_type SECRET")
        if self.auth_type is AuthType.SECRET and self.fingerprint is not None:
            raise ValueError("fingerprint: only valid with auth_type CERTIFICATES")


class AuthInfoUpdate(_Request):
    """Credentials changed on an existing device; only the given fields change."""

    auth_type: AuthType | None = None
    secret: Secret | None = None
    fingerprint: Fingerprint | None = None
    secure_access: bool | None = Field(default=None, strict=True)
    timeout: Timeout | None = None


class InitialDesired(_Request):
    """Initial desired values of one service of a new device."""

    service_id: ServiceId
    desired: dict[str, Any]


def _extension_info_size(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > EXTENSION_INFO_MAX_BYTES:
            raise ValueError(f"{size} bytes; at most {EXTENSION_INFO_MAX_BYTES} when encoded")
    return value


class DeviceCreate(_Request):
    """A request to register a device (IoTDA's Create a Device request body)."""

    device_id: DeviceId | None = Field(
        default=None, description="Defaults to `{product_id}_{node_id}`."
    )
    node_id: NodeId = Field(description="IMEI, MAC address or serial number.")
    device_name: DeviceName | None = None
    product_id: ProductId
    auth_info: AuthInfo | None = None
    description: Description | None = None
    gateway_id: DeviceId | None = Field(
        default=None, description="Parent device id; defaults to the gateway itself."
    )
    app_id: AppId | None = None
    extension_info: dict[str, Any] | None = Field(default=None, description="At most 1 KB.")
    shadow: list[InitialDesired] | None = None

    _ext = field_validator("extension_info")(_extension_info_size)

    @property
    def effective_device_id(self) -> str:
        """The id given, or the default `{product_id}_{node_id}`."""
        return self.device_id or f"{self.product_id}_{self.node_id}"


class DeviceUpdate(_Request):
    """A request to change a device: only these fields may change."""

    device_name: DeviceName | None = None
    description: Description | None = None
    extension_info: dict[str, Any] | None = None
    auth_info: AuthInfoUpdate | None = None

    _ext = field_validator("extension_info")(_extension_info_size)


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device, as stored."""

    device_id: str
    node_id: str
    product_id: str
    gateway_id: str  # the parent's device_id; the gateway's own id for the gateway
    node_type: NodeType
    level: int  # 0 the gateway, 1 its children, 2 their children
    status: DeviceStatus
    create_time: datetime
    auth_type: AuthType = AuthType.SECRET
    secret: str | None = None
    fingerprint: str | None = None
    secure_access: bool = True
    timeout: int = 0
    device_name: str | None = None
    description: str | None = None
    app_id: str | None = None
    fw_version: str | None = None
    sw_version: str | None = None
    device_sdk_version: str | None = None
    active_time: datetime | None = None
    connection_status_update_time: datetime | None = None
    tags: tuple[tuple[str, str], ...] = ()
    extension_info: dict[str, Any] | None = field(default=None, hash=False)
    origin: Literal["gateway", "config", "api"] = "api"
    seq: int = 0  # insertion order: the paging marker


def compact_time(at: datetime) -> str:
    """`yyyyMMdd'T'HHmmss'Z'`, e.g. 20151212T121212Z (create_time, event_time)."""
    return at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def precise_time(at: datetime | None) -> str | None:
    """`yyyy-MM-dd'T'HH:mm:ss.SSS'Z'` (active_time, connection_status_update_time)."""
    if at is None:
        return None
    utc = at.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def mask(secret: str | None) -> str | None:
    """Show only the ends of a secret: a quarter at most, four characters at most each side."""
    if secret is None:
        return None
    keep = min(4, len(secret) // 8)
    if keep == 0:
        return "****"
    return f"{secret[:keep]}****{secret[-keep:]}"
