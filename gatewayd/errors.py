"""The error tree: crash for bugs, back off for weather, never retry a refusal."""

from __future__ import annotations

__all__ = [
    "EX_CONFIG",
    "EX_LISTEN",
    "EX_LOCKED",
    "EX_STATE_ACCESS",
    "EX_STATE_NEWER",
    "ConfigError",
    "ConnectionLost",
    "DeviceUnavailable",
    "GatewaydError",
    "ListenFailed",
    "StartupError",
    "StateAccessDenied",
    "StateDirLocked",
    "StateTooNew",
    "TransientError",
    "UplinkUnavailable",
    "WriteRejected",
]

# Exit statuses (sysexits.h names). 78 is the only one the unit keeps down for good
# (RestartPreventExitStatus=78): the others are conditions that can clear without an edit of
# the configuration, so systemd retries them. docs/operations.md lists them all.
EX_CONFIG = 78  # EX_CONFIG: the configuration is invalid
EX_STATE_ACCESS = 77  # EX_NOPERM: a state file the service user may not read or write
EX_LOCKED = 75  # EX_TEMPFAIL: another gatewayd holds the state directory
EX_LISTEN = 69  # EX_UNAVAILABLE: the local API cannot listen (address in use)
EX_STATE_NEWER = 65  # EX_DATAERR: a state file written by a newer gatewayd (a downgrade)


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


class StartupError(GatewaydError):
    """The daemon cannot start for a reason that is not a bug; it exits with `exit_status`."""

    exit_status: int = 1


class StateAccessDenied(StartupError):
    """A state file exists but this user may not open it: permissions, never corruption."""

    exit_status = EX_STATE_ACCESS


class StateDirLocked(StartupError):
    """Another gatewayd process holds the state directory's lock."""

    exit_status = EX_LOCKED


class ListenFailed(StartupError):
    """The local API could not bind its address (in use, or not on this host)."""

    exit_status = EX_LISTEN


class StateTooNew(StartupError):
    """A state file's schema is newer than this gatewayd knows: the package was downgraded.

    Not a configuration error (78): nothing in the YAML can fix it. The file is left as it is,
    so upgrading again finds every record.
    """

    exit_status = EX_STATE_NEWER
