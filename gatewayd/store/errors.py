"""Why the registry or the shadow store refused a request; each names the field at fault."""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gatewayd.errors import GatewaydError

__all__ = [
    "DeviceExists",
    "DeviceNotFound",
    "HasChildren",
    "InvalidField",
    "ParentNotFound",
    "ProtectedDevice",
    "RegistryError",
    "TooDeep",
    "UnknownProduct",
    "VersionConflict",
    "invalid_request",
]


class RegistryError(GatewaydError):
    """A refused registry or shadow operation.

    Args:
        field: the request field at fault (dotted path), or "" when none is.
        reason: what is wrong, for a human.
    """

    code = "REGISTRY_ERROR"

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class InvalidField(RegistryError):
    """A field breaks a validation rule."""

    code = "INVALID_FIELD"


class UnknownProduct(InvalidField):
    """The product_id names no loaded product."""

    code = "UNKNOWN_PRODUCT"


class ParentNotFound(InvalidField):
    """The gateway_id (parent) names no registered device."""

    code = "PARENT_NOT_FOUND"


class TooDeep(InvalidField):
    """The new device would sit more than two levels below the gateway."""

    code = "TOO_DEEP"


class DeviceNotFound(RegistryError):
    """No device has that id."""

    code = "DEVICE_NOT_FOUND"


class DeviceExists(RegistryError):
    """A device with that id is already registered."""

    code = "DEVICE_EXISTS"


class HasChildren(RegistryError):
    """The device has children and cascade was not asked for."""

    code = "HAS_CHILDREN"


class ProtectedDevice(RegistryError):
    """The gateway itself cannot be deleted through the registry."""

    code = "PROTECTED_DEVICE"


class VersionConflict(RegistryError):
    """A conditional shadow update named a version that is no longer current."""

    code = "VERSION_CONFLICT"


def invalid_request(exc: ValidationError, prefix: str = "") -> InvalidField:
    """The first problem of a pydantic error as an InvalidField; the message lists them all."""
    problems = [_problem(err, prefix) for err in exc.errors()]
    field, reason = problems[0]
    if len(problems) > 1:
        reason += "; also " + "; ".join(f"{f}: {r}" if f else r for f, r in problems[1:])
    return InvalidField(field, reason)


def _problem(error: ErrorDetails, prefix: str) -> tuple[str, str]:
    parts = [str(p) for p in error["loc"]]
    reason = str(error["msg"]).removeprefix("Value error, ")
    # A model-level rule says which of its fields it checks as "field: reason".
    head, sep, rest = reason.partition(": ")
    if sep and head.isidentifier() and " " not in head:
        parts.append(head)
        reason = rest
    if prefix:
        parts.insert(0, prefix)
    return ".".join(parts), reason
