"""The `native` dialect: the device MQTT API's `v1/device/{id}/...` topics, plus children.

Pure: topics, payload encoding and downlink validation, no I/O. Records in the outbox carry a
dialect-neutral `kind` that is also the topic suffix here (`telemetry`, `commands/update`, ...).
Telemetry carries its record id as the payload field `record_id` (docs/protocol.md).

A downlink comes from the network, so it is decoded under limits before anything trusts it:
its size, its nesting depth (counted on the bytes before the JSON parser recurses into them),
the digits of its integers, finite numbers only, and text that SQLite can store (UTF-8, no
lone surrogate). Whatever the payload, `decode` either returns or raises `DownlinkInvalid`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from gatewayd.cloud.children import Child, ChildStatus

__all__ = [
    "DEVICE_DOWNLINKS",
    "GATEWAY_DOWNLINKS",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_PAYLOAD_BYTES",
    "ChildrenAddResponse",
    "ChildrenDeleteResponse",
    "ChildrenNotify",
    "CommandDown",
    "ConfigDown",
    "Downlink",
    "DownlinkInvalid",
    "FirmwareDown",
    "LicenseDown",
    "SpaceInfoDown",
    "children_add",
    "children_delete",
    "children_status",
    "cloud_settings_update",
    "command_update",
    "decode",
    "encode_json",
    "iso_timestamp",
    "license_update",
    "nesting_depth",
    "parse_topic",
    "subscriptions",
    "telemetry",
    "topic",
    "update",
    "with_record_id",
]

PREFIX = "v1/device/"
DEVICE_DOWNLINKS = ("config", "commands", "license", "space_info", "firmware")
GATEWAY_DOWNLINKS = ("children/add/response", "children/delete/response", "children/notify")
MAX_CHILDREN_PER_ADD = 50
MAX_PAYLOAD_BYTES = 256 * 1024  # the largest downlink decoded; a config or license is far less
MAX_DEPTH = 32  # arrays and objects inside one another; config per service needs 3 or 4
MAX_INT_DIGITS = 40  # 128-bit integers fit; Python's own bound (4300) is per process
_SHOWN_CHARS = 120  # of a topic or a field name in an error message
_SHOWN_PROBLEMS = 3  # validation errors named in one message


class DownlinkInvalid(ValueError):
    """A downlink that does not match the dialect; it is logged and dropped."""


def topic(device_id: str, kind: str) -> str:
    """`v1/device/{id}/{kind}`."""
    return f"{PREFIX}{device_id}/{kind}"


def subscriptions(gateway_id: str, device_ids: Iterable[str]) -> list[str]:
    """Every downlink topic of the gateway and its children."""
    topics = [topic(gateway_id, kind) for kind in (*DEVICE_DOWNLINKS, *GATEWAY_DOWNLINKS)]
    for device_id in device_ids:
        if device_id != gateway_id:
            topics.extend(topic(device_id, kind) for kind in DEVICE_DOWNLINKS)
    return topics


def parse_topic(name: str) -> tuple[str, str]:
    """(device_id, kind) of a downlink topic.

    Raises:
        DownlinkInvalid: not a topic of this dialect.
    """
    if not name.startswith(PREFIX):
        msg = f"topic {shown(name)} is not under {PREFIX}"
        raise DownlinkInvalid(msg)
    device_id, _, kind = name[len(PREFIX) :].partition("/")
    if not device_id or kind not in (*DEVICE_DOWNLINKS, *GATEWAY_DOWNLINKS):
        msg = f"topic {shown(name)}: unknown device or kind"
        raise DownlinkInvalid(msg)
    return device_id, kind


def encode_json(body: Mapping[str, Any]) -> bytes:
    """Compact JSON, the wire form of every payload."""
    return _ENCODER.encode(body).encode()


def iso_timestamp(at: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and `Z`, as that API's examples."""
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return at.isoformat(timespec="milliseconds")[:-6] + "Z"  # drop "+00:00"


def telemetry(at: datetime, telemetries: Mapping[str, Any]) -> bytes:
    """Body of a telemetry record (the record id is added at publish time)."""
    return encode_json(
        {"status": "online", "timestamp": iso_timestamp(at), "telemetries": telemetries}
    )


def with_record_id(payload: bytes, record_id: str) -> bytes:
    """The payload object with `record_id` as its first field, without re-encoding it."""
    head = b'{"record_id":' + json.dumps(record_id).encode()
    if payload.strip() == b"{}":
        return head + b"}"
    return head + b"," + payload.lstrip()[1:]


def command_update(
    command_id: str, status: str, message: str, response: dict[str, Any] | None = None
) -> bytes:
    """`commands/update`: status in_progress, done or error; a bound command's `response`."""
    body: dict[str, Any] = {"id": command_id, "status": status, "message": message}
    if response:
        body["response"] = response
    return encode_json(body)


def license_update(license_id: str, state: str, error: str = "") -> bytes:
    """`license/update`: state inuse, removed or error."""
    body: dict[str, Any] = {"id": license_id, "state": state}
    if error:
        body["error"] = error
    return encode_json(body)


def update(firmware_version: str, name: str) -> bytes:
    """`update`: the device's firmware version and display name."""
    return encode_json({"firmware_version": firmware_version, "name": name})


def cloud_settings_update(prop: str, value: Any) -> bytes:
    """`cloud_settings/update`: a setting the gateway applies, as it applies it."""
    return encode_json({"property": prop, "value": value})


def children_status(statuses: Mapping[str, ChildStatus]) -> bytes:
    """`children/status` for the given children."""
    return encode_json(
        {"devices": [{"device_id": d, "status": s} for d, s in sorted(statuses.items())]}
    )


def children_add(request_id: str, children: Sequence[Child]) -> bytes:
    """`children/add`: at most MAX_CHILDREN_PER_ADD per request."""
    devices = []
    for child in children:
        entry: dict[str, Any] = {
            "node_id": child.node_id,
            "product_id": child.product_id,
            "device_id": child.device_id,
        }
        if child.name:
            entry["device_name"] = child.name
        if child.parent_device_id:
            entry["parent_device_id"] = child.parent_device_id
        devices.append(entry)
    return encode_json({"request_id": request_id, "devices": devices})


def children_delete(request_id: str, device_ids: Sequence[str]) -> bytes:
    """`children/delete`."""
    return encode_json({"request_id": request_id, "devices": list(device_ids)})


class _Down(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ConfigDown(BaseModel):
    """Desired config: `version`, `last_updated` and the fields."""

    model_config = ConfigDict(frozen=True, extra="allow")

    version: str = Field(min_length=1)
    last_updated: str | None = None

    _sent_version: int | str = PrivateAttr(default="")

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="wrap")
    @classmethod
    def _keep_sent_version(cls, data: Any, handler: ModelWrapValidatorHandler[ConfigDown]) -> Any:
        model = handler(data)
        sent = data.get("version") if isinstance(data, dict) else None
        model._sent_version = sent if type(sent) is int else model.version  # noqa: SLF001
        return model

    @property
    def sent_version(self) -> int | str:
        """The version as the cloud sent it (an integer stays one): what `config/update` echoes.

        `version` is its text, which orders and logs.
        """
        return self._sent_version

    def fields(self) -> dict[str, Any]:
        """The configuration fields (everything but version and last_updated)."""
        return dict(self.model_extra or {})


class CommandDown(_Down):
    """A command for the device."""

    id: str = Field(min_length=1, max_length=128)
    status: str = "pending"
    name: str = Field(min_length=1, max_length=128)
    parameters: Any = Field(default_factory=dict)


class LicenseDown(_Down):
    """A license to add, update or remove."""

    id: str = Field(min_length=1)
    data: str | None = None
    signature: str | None = None
    add: bool = False
    update: bool = False
    remove: bool = False


class SpaceInfoDown(BaseModel):
    """Where the device is: location, units, maintenance flag, local time."""

    model_config = ConfigDict(frozen=True, extra="allow")

    location: dict[str, Any] | None = None
    temperature_units: str | None = None
    maintenance: bool | None = None
    name: str | None = None
    local_time: str | None = None


class FirmwareDown(_Down):
    """The latest firmware the cloud has for the device."""

    latest_fw_version: str = Field(min_length=1)
    latest_fw_file_id: str | None = None


class _Added(_Down):
    device_id: str = Field(min_length=1)
    node_id: str | None = None
    product_id: str | None = None
    access_key: str | None = None


class _Failed(_Down):
    node_id: str | None = None
    product_id: str | None = None
    device_id: str | None = None
    error_code: str | int | None = None
    error_msg: str = ""


class ChildrenAddResponse(_Down):
    """The cloud's answer to `children/add`."""

    request_id: str = Field(min_length=1)
    successful_devices: list[_Added] = Field(default_factory=list)
    failed_devices: list[_Failed] = Field(default_factory=list)


class ChildrenDeleteResponse(_Down):
    """The cloud's answer to `children/delete`."""

    request_id: str = Field(min_length=1)
    successful_devices: list[str] = Field(default_factory=list)
    failed_devices: list[_Failed] = Field(default_factory=list)


class ChildrenNotify(_Down):
    """A cloud-side change of children: `add` or `delete`, with a version."""

    version: int | str
    event: Literal["add", "delete"]
    devices: list[_Added] = Field(default_factory=list)


_MODELS: dict[str, type[BaseModel]] = {
    "config": ConfigDown,
    "commands": CommandDown,
    "license": LicenseDown,
    "space_info": SpaceInfoDown,
    "firmware": FirmwareDown,
    "children/add/response": ChildrenAddResponse,
    "children/delete/response": ChildrenDeleteResponse,
    "children/notify": ChildrenNotify,
}


@dataclass(frozen=True, slots=True)
class Downlink:
    """A validated downlink message."""

    device_id: str
    kind: str
    body: BaseModel


def decode(name: str, payload: bytes) -> Downlink:
    """Validate a downlink message under the limits above.

    Raises:
        DownlinkInvalid: unknown topic, too large or too deep, not UTF-8 JSON, a number out of
            bounds, or a field that does not fit (named).
    """
    device_id, kind = parse_topic(name)
    data = _load(payload)
    try:
        body = _MODELS[kind].model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(
            f"{'.'.join(_cut(str(p)) for p in err['loc']) or '(payload)'}: {err['msg']}"
            for err in errors[:_SHOWN_PROBLEMS]
        )
        more = len(errors) - _SHOWN_PROBLEMS
        msg = problems + (f" (and {more} more)" if more > 0 else "")
        raise DownlinkInvalid(msg) from None
    return Downlink(device_id, kind, body)


def shown(text: str) -> str:
    """`text` as it goes into a log line: quoted, and cut short if long."""
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return f"{text[:_SHOWN_CHARS]!r}... ({len(text)} chars)"


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}..."


def nesting_depth(payload: bytes) -> int:
    """How deep arrays and objects nest in a JSON text, without parsing it.

    Strings (escapes included, an unterminated one up to the end) are cut out by one linear
    regex, every byte but brackets is deleted, and the depth is the highest running sum of
    +1 per opening and -1 per closing bracket. Linear in the size, no recursion; a text that
    is not JSON gets some number, and the parser refuses it afterwards.
    """
    brackets = _STRING.sub(b"", payload).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _load(payload: bytes) -> Any:
    if len(payload) > MAX_PAYLOAD_BYTES:
        msg = f"payload of {len(payload)} bytes is larger than {MAX_PAYLOAD_BYTES}"
        raise DownlinkInvalid(msg)
    depth = nesting_depth(payload)
    if depth > MAX_DEPTH:
        msg = f"payload nests {depth} deep, more than {MAX_DEPTH}"
        raise DownlinkInvalid(msg)
    try:
        text = payload.decode()
    except UnicodeDecodeError as exc:
        msg = f"payload is not UTF-8: byte {exc.start} ({payload[exc.start]:#04x})"
        raise DownlinkInvalid(msg) from None
    try:
        data = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: only if MAX_DEPTH were huge
        msg = f"payload is not JSON: {exc}"
        raise DownlinkInvalid(msg) from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            msg = "payload holds a lone UTF-16 surrogate (\\ud800-\\udfff): not storable text"
            raise DownlinkInvalid(msg) from None
    return data


def _int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        msg = f"an integer of {digits} digits (at most {MAX_INT_DIGITS})"
        raise ValueError(msg)
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        msg = f"the number {shown(text)} is out of range"
        raise ValueError(msg)
    return value


def _no_constant(text: str) -> Any:
    msg = f"{text} is not a JSON number"
    raise ValueError(msg)


# A JSON string from its opening quote to its closing one, or to the end when unterminated;
# possessive, so it never backtracks (the whole scan stays linear).
_STRING = re.compile(rb'"(?>[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return iso_timestamp(value)
    msg = f"cannot encode {type(value).__name__} as JSON"
    raise TypeError(msg)


# One encoder for every payload: `json.dumps` with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default)
