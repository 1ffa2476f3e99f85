#!/usr/bin/python3
"""Start a command the way systemd would, and check that it reaches READY=1.

Used by packaging/check.sh on the installed package: the daemon runs as the service user with
a NOTIFY_SOCKET and a WATCHDOG_USEC, must send READY=1 and then WATCHDOG=1, and on SIGTERM
must send STOPPING=1 and exit 0. Standard library only: it runs with the system's python3.

Usage: notify_ready.py [--user NAME] [--timeout-s N] -- COMMAND [ARG...]
"""

from __future__ import annotations

import argparse
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_WATCHDOG_USEC = 1_000_000


class Notifications:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        path.chmod(0o666)  # the service user must be able to send
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
        """Return once a datagram holds `line`; fail on timeout or if the process ends."""
        deadline = time.monotonic() + timeout_s
        while not any(line in m.split("\n") for m in self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"no {line} within {timeout_s} s; got {self.messages}")
            if proc.poll() is not None:
                raise SystemExit(f"exited with {proc.returncode} before {line}")
            self._sock.settimeout(min(left, 0.2))
            try:
                self.messages.append(self._sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


def _as_user(name: str | None) -> dict[str, object]:
    if name is None:
        return {}
    entry = pwd.getpwnam(name)
    return {
        "user": entry.pw_uid,
        "group": entry.pw_gid,
        "extra_groups": os.getgrouplist(name, entry.pw_gid),
    }


def main() -> int:
    """Run the check; the exit status says whether it passed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", help="run the command as this user, with its groups")
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gatewayd-notify.") as tmp:
        Path(tmp).chmod(0o755)
        notify = Notifications(Path(tmp) / "notify.sock")
        env = {k: v for k, v in os.environ.items() if k not in {"WATCHDOG_PID", "LISTEN_FDS"}}
        env |= {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(_WATCHDOG_USEC)}
        log = Path(tmp) / "stderr"
        with log.open("wb") as err:
            proc = subprocess.Popen(  # noqa: S603 - the command is the caller's
                args.command,
                env=env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                **_as_user(args.user),  # type: ignore[call-overload]
            )
        started = time.monotonic()
        try:
            notify.wait_for("READY=1", args.timeout_s, proc)
            ready_s = time.monotonic() - started
            notify.wait_for("WATCHDOG=1", 5 * _WATCHDOG_USEC / 1e6, proc)
            proc.send_signal(signal.SIGTERM)
            notify.wait_for("STOPPING=1", 10.0, proc)
            status = proc.wait(timeout=30)
        except (SystemExit, subprocess.TimeoutExpired) as exc:
            print(f"notify_ready: {exc}", file=sys.stderr)
            print(log.read_text(errors="replace"), file=sys.stderr)
            return 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            notify.close()
        if status != 0:
            print(f"notify_ready: exit status {status} after SIGTERM", file=sys.stderr)
            print(log.read_text(errors="replace"), file=sys.stderr)
            return 1
    print(f"READY=1 after {ready_s:.2f} s, WATCHDOG=1, STOPPING=1, exit 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
