"""The only module that knows systemd: notifications, the watchdog period, the journal.

systemd-python is used when installed; otherwise a datagram to $NOTIFY_SOCKET does the same,
so the daemon behaves identically in a virtualenv without the C extension.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping

__all__ = ["Notifier", "journal_handler", "stderr_is_journal", "watchdog_period_s"]

log = logging.getLogger(__name__)

try:  # pragma: no cover - depends on the platform
    from systemd import daemon as _sd_daemon
    from systemd import journal as _sd_journal
except ImportError:  # pragma: no cover
    _sd_daemon = None
    _sd_journal = None


class Notifier:
    """Sends sd_notify messages; silent when not started by systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET", "")

    @property
    def enabled(self) -> bool:
        """Whether a notification socket was given."""
        return bool(self._address)

    def ready(self, status: str = "") -> None:
        """Tell systemd the daemon is ready to serve."""
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        """Pet the watchdog."""
        self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """Set the one-line status shown by `systemctl status`."""
        self._send(f"STATUS={text}")

    def stopping(self) -> None:
        """Tell systemd shutdown has begun."""
        self._send("STOPPING=1")

    def _send(self, message: str) -> None:
        if not self._address:
            return
        if _sd_daemon is not None and os.environ.get("NOTIFY_SOCKET") == self._address:
            _sd_daemon.notify(message)
            return
        address = self._address
        if address.startswith("@"):
            address = "\0" + address[1:]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(message.encode(), address)
            except OSError as exc:
                log.debug("sd_notify failed: %s", exc)


def watchdog_period_s(environ: Mapping[str, str] | None = None) -> float | None:
    """Half the watchdog timeout systemd asked for, or None when no watchdog applies."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """Whether stderr is connected to journald ($JOURNAL_STREAM names its device and inode)."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    if ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def journal_handler() -> logging.Handler | None:
    """A handler sending structured records to journald, when systemd-python is present."""
    if _sd_journal is None:
        return None
    handler: logging.Handler = _sd_journal.JournalHandler(SYSLOG_IDENTIFIER="gatewayd")
    return handler
