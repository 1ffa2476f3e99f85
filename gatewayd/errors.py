"""The error tree: crash for bugs, back off for weather, never retry a refusal."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectionLost",
    "DeviceUnavailable",
    "GatewaydError",
    "TransientError",
    "UplinkUnavailable",
    "WriteRejected",
]


class GatewaydError(Exception):
    """Base of every error gatewayd raises on purpose."""


class ConfigError(GatewaydError):
    """The configuration is invalid; never retried, the daemon exits 78."""


class TransientError(GatewaydError):
    """Expected to clear by itself; `supervise()` retries with backoff."""


class DeviceUnavailable(TransientError):
    """A bus or a device did not answer (timeout, port gone, link lost)."""


class ConnectionLost(DeviceUnavailable):
    """The whole resource is gone (port unplugged, socket closed): the session must end."""


class UplinkUnavailable(TransientError):
    """The broker cannot be reached."""


class WriteRejected(GatewaydError):
    """The device answered and refused the write; reported back, not retried."""
