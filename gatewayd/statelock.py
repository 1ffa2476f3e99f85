"""One daemon per state directory: an exclusive `flock` on a lock file inside it.

Two daemons on one state directory would share `outbox.db` and `state.db` without knowing of
each other and take the MQTT client id from each other in turn. The lock is taken before any
store is opened or any connection made, and held for the life of the process: the kernel
releases it when the process ends, however it ends (SIGKILL, a crash), so a stale lock file
never keeps a restart down. The file holds the holder's pid, for the message a second
instance prints.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Self

from gatewayd.errors import StateAccessDenied, StateDirLocked

__all__ = ["LOCK_FILE", "StateLock"]

LOCK_FILE = "gatewayd.lock"

log = logging.getLogger(__name__)


class StateLock:
    """The exclusive lock on a state directory, held from `acquire()` to `release()`.

    Args:
        state_dir: the directory to lock; it must exist.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock at once or fail; never waits.

        Raises:
            StateDirLocked: another process holds it (the message names the file and its pid).
            StateAccessDenied: this user may not create or open the lock file.
        """
        writable = True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError as exc:
            # A lock file another user left (`gatewayd run` as root once) still locks when
            # it can be read: flock needs no write access. Only the pid cannot be written.
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise StateAccessDenied(_denied(self.path, exc)) from exc
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}:
                raise
            who = f"pid {holder}" if holder is not None else "a process (pid not written yet)"
            msg = (
                f"the state directory is in use: {self.path} is locked by {who}; "
                "one gatewayd per state directory"
            )
            raise StateDirLocked(msg) from None
        if not writable:
            log.warning(
                "%s belongs to another user: the lock is held, but the pid in it is not this "
                "process's",
                self.path,
            )
            self._fd = fd
            return
        os.ftruncate(fd, 0)
        try:
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: the lock holds all the same, without the pid
            log.warning("%s: pid not written (%s); the lock is held", self.path, exc)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (closing the file releases it); the file stays."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _denied(path: Path, exc: PermissionError) -> str:
    where = path if path.exists() else path.parent
    try:
        info = where.stat()
        detail = f"owner uid {info.st_uid}, mode {info.st_mode & 0o7777:04o}"
    except OSError:
        detail = "not readable"
    return (
        f"cannot open the state directory's lock file {path}: {exc.strerror} "
        f"({where}: {detail}; running as uid {os.geteuid()})"
    )
