"""The driver contract: the whole interface a field protocol implements.

A driver knows one wire protocol and nothing of MQTT, shadows or SQLite. The core owns
scheduling, reconnection, scaling, reporting and buffering.

Sessions are opened per *connection* (one physical resource: a serial port, a TCP
endpoint, a BLE adapter), so `read` and `write` name the device on that connection. This is
what lets one runner own a shared RS-485 bus with many devices behind it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gatewayd.model import Sample, Value

__all__ = [
    "CommandBinding",
    "CommandStep",
    "ConnectionConfig",
    "DeviceConfig",
    "Driver",
    "DriverSpec",
    "PointConfig",
    "Session",
    "Watchable",
]

_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
MIN_INTERVAL_S = 0.001  # no field bus answers faster; below it a poll period is a busy loop


class PointConfig(BaseModel):
    """Fields every point has; drivers subclass it to add addressing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default="", description="Filled from the key under `points`.")
    unit: str | None = Field(default=None, description="Engineering unit sent with the value.")
    scale: float = Field(default=1.0, description="Reported value = raw * scale + offset.")
    offset: float = Field(default=0.0, description="Added after scaling.")
    decimals: int | None = Field(
        default=None,
        ge=0,
        le=12,
        description=(
            "Decimal places numeric values are rounded to. By default a scaled raw integer "
            "keeps the places its scale and offset imply (raw 217 with scale 0.1 is sent as "
            "21.7, not 21.700000000000003; at most 12), a scaled raw decimal keeps its own "
            "places without the float noise (45.5 with scale 0.01 is 0.455), and an "
            "unscaled value is sent as read."
        ),
    )
    writable: bool = Field(
        default=False,
        description=(
            "Desired state may write this point. Only a value someone asked for is written: "
            "the cloud's config, a shadow or properties change through the local API, a "
            "command, or the device's `desired:` in this file. A product's `default` only "
            "fills the shadow's desired state for the cloud's view and is never written: the "
            "device keeps its own setting, and once the point is read, desired shows what the "
            "device reports. First start, restart and a lost state directory write nothing."
        ),
    )
    interval_s: float | None = Field(
        default=None,
        ge=MIN_INTERVAL_S,
        description="Poll period of this point; defaults to the device's interval_s.",
    )
    property: str | None = Field(
        default=None,
        description="Product property this point reports; defaults to the point id.",
    )
    deadband: float | None = Field(
        default=None,
        ge=0,
        description="Report a change only when it is at least this big (in `unit`).",
    )
    deadband_percent: float | None = Field(
        default=None,
        ge=0,
        description="Report a change only when it is at least this % of the last reported value.",
    )
    heartbeat_s: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Report an unchanged value again after this long. With none of deadband, "
            "deadband_percent and heartbeat_s set, every reading is reported."
        ),
    )


P = TypeVar("P", bound=PointConfig)
P_contra = TypeVar("P_contra", bound=PointConfig, contravariant=True)
D_contra = TypeVar("D_contra", bound="DeviceConfig[Any]", contravariant=True)
D = TypeVar("D", bound="DeviceConfig[Any]")
C = TypeVar("C", bound="ConnectionConfig")


class CommandStep(BaseModel):
    """One step of a bound command: a point write (read back), or a wait."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    write: str | None = Field(
        default=None, description="Writable point to write, then read back (its read-back "
        "value is what the command's responses may report)."
    )  # fmt: skip
    value: Any = Field(default=None, description="Constant value to write.")
    parameter: str | None = Field(
        default=None, description="Command parameter whose (checked) value is written."
    )
    wait_s: float | None = Field(
        default=None, ge=0, le=3600, description="Seconds to wait before the next step."
    )
    wait_parameter: str | None = Field(
        default=None, description="Command parameter giving the seconds to wait."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> CommandStep:
        waits = (self.wait_s is not None) + (self.wait_parameter is not None)
        if self.write is None:
            if waits != 1 or self.value is not None or self.parameter is not None:
                msg = "a step is either `write` (with `value` or `parameter`) or one wait"
                raise ValueError(msg)
        elif waits or (self.value is None) == (self.parameter is None):
            msg = f"write {self.write}: give exactly one of `value` and `parameter`, no wait"
            raise ValueError(msg)
        return self


class CommandBinding(BaseModel):
    """What a declared command does on this device: point writes and waits, in order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: tuple[CommandStep, ...] = Field(min_length=1, description="Run in order.")
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Bound on the whole command (default: the engine's 20 s); past it the "
        'command is answered `error` "timeout".',
    )
    responses: dict[str, str] = Field(
        default_factory=dict,
        description="Response field -> point written by a step: the field is filled with "
        "the value read back after that point's last write.",
    )


class DeviceConfig(BaseModel, Generic[P]):
    """One field device on a connection; drivers subclass it to add addressing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default="", description="Filled from the key under `devices`.")
    node_id: str | None = Field(
        default=None,
        pattern=_ID_PATTERN,
        description="Node id in the registry; defaults to the device key.",
    )
    product_id: str | None = Field(default=None, description="Product model of the device.")
    name: str | None = Field(default=None, description="Display name.")
    fw_version: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description=(
            "Firmware version of the device, as its maker names it. When set, it is sent to "
            "the cloud on `update` at every connect (with the display name); change it here "
            "after a firmware upgrade and restart. Unset: no `update` for this device."
        ),
    )
    parent: str | None = Field(
        default=None,
        description="Key of another device on this connection that this one sits behind.",
    )
    interval_s: float = Field(
        default=10.0,
        ge=MIN_INTERVAL_S,
        description="Default poll period (at least 0.001 s: a faster poll is a busy loop).",
    )
    enabled: bool = Field(default=True, description="A disabled device is kept but not polled.")
    points: dict[str, P] = Field(default_factory=dict, description="Points keyed by id.")
    desired: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Values to write, keyed by writable point id: they become the desired state of "
            "the point's product property and are written, then read back. Applied when the "
            "device is registered and whenever a value here changes; a value set later "
            "through the API or the cloud stands until then."
        ),
    )
    commands: dict[str, CommandBinding] = Field(
        default_factory=dict,
        description=(
            "Commands of the device's product bound to point writes, keyed by command name "
            "(docs/protocol.md, Commands). Parameters are checked against the product first; "
            "each write is read back, like desired state."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _ids_from_keys(cls, data: Any) -> Any:
        return _fill_ids(data, "points")

    @model_validator(mode="after")
    def _desired_points(self) -> DeviceConfig[P]:
        for key in self.desired:
            point = self.points.get(key)
            if point is None:
                msg = f"desired.{key}: the device has no point {key!r}"
                raise ValueError(msg)
            if not point.writable:
                msg = f"desired.{key}: the point is not writable"
                raise ValueError(msg)
        for name, binding in self.commands.items():
            written = set()
            for step in binding.steps:
                if step.write is None:
                    continue
                point = self.points.get(step.write)
                if point is None or not point.writable:
                    msg = f"commands.{name}: {step.write!r} is not a writable point of the device"
                    raise ValueError(msg)
                written.add(step.write)
            for field_name, point_id in binding.responses.items():
                if point_id not in written:
                    msg = f"commands.{name}.responses.{field_name}: no step writes {point_id!r}"
                    raise ValueError(msg)
        return self


class ConnectionConfig(BaseModel):
    """Fields every connection has; each driver's model adds `driver: Literal[...]`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=True, description="A disabled connection is not opened.")

    @model_validator(mode="before")
    @classmethod
    def _ids_from_keys(cls, data: Any) -> Any:
        return _fill_ids(data, "devices")


def _fill_ids(data: Any, key: str) -> Any:
    """Copy each mapping key into its entry's `id`, so drivers can name what they read."""
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        return data
    filled: dict[str, Any] = {}
    for entry_id, entry in data[key].items():
        if isinstance(entry, dict):
            if entry.get("id", entry_id) != entry_id:
                msg = f"id {entry.get('id')!r} differs from its key {entry_id!r}"
                raise ValueError(msg)
            filled[entry_id] = {**entry, "id": entry_id}
        else:
            filled[entry_id] = entry
    return {**data, key: filled}


class Session(Protocol[D_contra, P_contra]):
    """An open connection to one physical resource; valid only inside `Driver.connect()`."""

    async def read(self, device: D_contra, points: Sequence[P_contra]) -> Sequence[Sample]:
        """Read once, batched. Raise DeviceUnavailable when the device does not answer.

        A list of Samples will do; a busy driver returns a `gatewayd.batch.SampleBatch`, which
        the runner passes on as columns without making an object per value.
        """
        ...

    async def write(self, device: D_contra, point: P_contra, value: Value) -> None:
        """Write one value. Raise WriteRejected when the device refuses it."""
        ...


@runtime_checkable
class Watchable(Protocol[D_contra, P_contra]):
    """Optional: sessions whose devices push values (BLE notify, serial streams)."""

    def watch(self, device: D_contra, points: Sequence[P_contra]) -> AsyncIterator[Sample]:
        """Yield samples as the device pushes them; end or raise when the link drops."""
        ...


class Driver(Protocol[D_contra, P_contra]):
    """Knows one wire protocol; opens sessions on one connection."""

    def connect(self) -> AbstractAsyncContextManager[Session[D_contra, P_contra]]:
        """Open the resource. Raise DeviceUnavailable when it cannot be opened."""
        ...


@dataclass(frozen=True, slots=True)
class DriverSpec(Generic[C, D, P]):
    """How a driver registers itself: `SPEC = DriverSpec(...)` in its package.

    Args:
        kind: the `driver:` value in YAML.
        config: the connection model, with `driver: Literal[kind]`.
        device: the device model, a DeviceConfig subclass.
        point: the point model, a PointConfig subclass.
        build: makes a driver for one connection.
    """

    kind: str
    config: type[C]
    device: type[D]
    point: type[P]
    build: Callable[[C], Driver[D, P]]
