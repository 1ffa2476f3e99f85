"""What an SQLite error at open means: damage, no permission, a lock, or a disk that is full.

Only damage may move a file aside. A file the service user may not open is an operator's
mistake (a `gatewayd run` as root once leaves root-owned 0600 files behind): moving it would
throw away every record it holds, so the daemon stops and says whose file it is instead. A
lock is another process's, and a full disk clears by itself: neither is damage either.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import sqlite3
import stat
from enum import Enum
from pathlib import Path

from gatewayd.errors import EX_LOCKED, StartupError, StateAccessDenied

__all__ = [
    "StateLocked",
    "Trouble",
    "check_access",
    "classify",
    "denied",
    "running_user",
]

SIDE_FILES = ("-wal", "-shm")


class StateLocked(StartupError):
    """Another process holds an SQLite lock on a state file; systemd retries later."""

    exit_status = EX_LOCKED


class Trouble(Enum):
    """What kind of error SQLite reported."""

    DAMAGE = "damage"  # not a database, or malformed: the only kind that moves a file
    ACCESS = "access"  # permissions, a read-only file or file system
    LOCKED = "locked"  # another process holds a lock
    DISK = "disk"  # full, or an I/O error: weather for the disk
    OTHER = "other"


_DAMAGE = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
_ACCESS = {"SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_READONLY", "SQLITE_AUTH"}
_LOCKED = {"SQLITE_BUSY", "SQLITE_LOCKED"}
_DISK = {"SQLITE_FULL", "SQLITE_IOERR"}


def classify(exc: sqlite3.Error) -> Trouble:
    """The kind of an SQLite error, from its primary result code (`SQLITE_IOERR_SHMSIZE` is I/O)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    for kind, names in (
        (Trouble.DAMAGE, _DAMAGE),
        (Trouble.ACCESS, _ACCESS),
        (Trouble.LOCKED, _LOCKED),
        (Trouble.DISK, _DISK),
    ):
        if any(name == n or name.startswith(n + "_") for n in names):
            return kind
    if type(exc) is sqlite3.DatabaseError:  # "file is not a database" without a code
        return Trouble.DAMAGE
    return Trouble.OTHER


def running_user() -> str:
    """The effective user and group, by name where they have one."""
    uid, gid = os.geteuid(), os.getegid()
    return f"{_user(uid)} (uid {uid}, gid {gid} {_group(gid)})"


def describe(path: Path) -> str:
    """`path (owner user:group, mode 0600)` for an error message."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"{path} ({exc.strerror})"
    mode = stat.S_IMODE(st.st_mode)
    return f"{path} (owner {_user(st.st_uid)}:{_group(st.st_gid)}, mode {mode:04o})"


def denied(path: Path, why: str) -> StateAccessDenied:
    """The error for a state file this process may not use."""
    return StateAccessDenied(
        f"{describe(path)} cannot be opened for reading and writing by {running_user()}: "
        f"{why}. It was left as it is; give it to the service user "
        f"(chown) or run gatewayd as its owner."
    )


def check_access(path: Path) -> None:
    """Refuse to open a database whose files this user cannot read and write.

    Checked before SQLite opens anything: SQLite reports a file it may not open as
    "unable to open database file", or opens it read-only and fails at the first write, and
    neither is damage. Root passes every check (as the kernel lets it).

    Raises:
        StateAccessDenied: naming the file, its owner and mode, and this user.
    """
    files = [path, *(Path(f"{path}{suffix}") for suffix in SIDE_FILES)]
    missing = False
    for file in files:
        if not file.exists():
            missing = True
            continue
        if not os.access(file, os.R_OK | os.W_OK):
            raise denied(file, _why(file))
    folder = path.parent
    if missing and not os.access(folder, os.W_OK | os.X_OK):
        raise denied(folder, "its directory is not writable, so SQLite cannot create its files")


def _why(path: Path) -> str:
    with contextlib.suppress(OSError):
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "its file system is mounted read-only"
    return "permission denied"


def _user(uid: int) -> str:
    with contextlib.suppress(KeyError):
        return pwd.getpwuid(uid).pw_name
    return str(uid)


def _group(gid: int) -> str:
    with contextlib.suppress(KeyError):
        return grp.getgrgid(gid).gr_name
    return str(gid)
