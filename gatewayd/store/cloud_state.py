"""What the cloud told the gateway, per device, kept in `outbox.db` beside the outbox.

Desired config, commands, licenses, space info, firmware info, and the registration state of
children.

Desired config is versioned twice over: the newest version received (`config_seen`) orders
what comes in (a version not newer than it is ignored), and the latest version applied
(`desired_config`, with the fields taken) is what `config/update` echoes. A config whose every
field was refused is received but never applied. Command ids are idempotency keys (a command
id seen once is never executed again, across restarts).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from gatewayd.store.sqlite_worker import SqliteWorker

__all__ = ["CloudState", "StoredCommand", "cloud_state_schema", "newer_version"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS desired_config (
    device TEXT PRIMARY KEY, version TEXT NOT NULL, last_updated TEXT,
    body TEXT NOT NULL, received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY, device TEXT NOT NULL, name TEXT NOT NULL, parameters TEXT NOT NULL,
    status TEXT NOT NULL, message TEXT NOT NULL DEFAULT '', received REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_by_device ON commands (device, received);
CREATE TABLE IF NOT EXISTS licenses (
    device TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, state TEXT NOT NULL,
    updated REAL NOT NULL, PRIMARY KEY (device, id)
);
CREATE TABLE IF NOT EXISTS device_info (
    device TEXT NOT NULL, topic TEXT NOT NULL, body TEXT NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (device, topic)
);
CREATE TABLE IF NOT EXISTS children (
    device_id TEXT PRIMARY KEY, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    access_key TEXT, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cloud_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS config_seen (
    device TEXT PRIMARY KEY, version TEXT NOT NULL, received REAL NOT NULL
);
"""


def cloud_state_schema(conn: sqlite3.Connection) -> None:
    """Create the downlink tables (idempotent); add columns a file from an older gatewayd lacks."""
    conn.executescript(_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(desired_config)")}
    if "sent_version" not in columns:
        # The version as sent (JSON: 1 or "1"), echoed on config/update; `version` orders.
        conn.execute("ALTER TABLE desired_config ADD COLUMN sent_version TEXT")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(commands)")}
    if "history" not in columns:
        # Every status with its time ([status, message, unix time]), oldest first.
        conn.execute("ALTER TABLE commands ADD COLUMN history TEXT NOT NULL DEFAULT '[]'")
    if "response" not in columns:  # the response fields of a command that ended done
        conn.execute("ALTER TABLE commands ADD COLUMN response TEXT")


def newer_version(candidate: str, stored: str) -> bool:
    """Whether a config version supersedes the stored one.

    Versions that are both integers compare as numbers; otherwise as strings (ISO timestamps
    and zero-padded counters order correctly that way). An equal version is not newer.
    """
    if candidate.isdigit() and stored.isdigit():
        return int(candidate) > int(stored)
    return candidate > stored


@dataclass(frozen=True, slots=True)
class StoredCommand:
    """A command as received from the cloud and its latest status."""

    id: str
    device: str
    name: str
    parameters: Any
    status: str
    message: str
    received: float
    updated: float
    history: tuple[tuple[str, str, float], ...] = ()
    response: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """The API's view."""
        return {
            "id": self.id,
            "device_id": self.device,
            "name": self.name,
            "parameters": self.parameters,
            "status": self.status,
            "message": self.message,
            "received": self.received,
            "updated": self.updated,
            "response": self.response,
            "history": [
                {"status": status, "message": message, "at": at}
                for status, message, at in self.history
            ],
        }


class CloudState:
    """Reads and writes the downlink tables on the outbox file's worker.

    Args:
        worker: the open `outbox.db` (with `cloud_state_schema` applied).
    """

    def __init__(self, worker: SqliteWorker) -> None:
        self._worker = worker

    async def see_config(self, device: str, version: str) -> bool:
        """Note a config version as received; False when it is not newer than one received.

        A file from an older gatewayd has no received versions: its applied one stands in.
        """

        def write(conn: sqlite3.Connection) -> bool:
            seen = conn.execute(
                "SELECT version FROM config_seen WHERE device = ? UNION ALL "
                "SELECT version FROM desired_config WHERE device = ?",
                (device, device),
            ).fetchall()
            if any(not newer_version(version, row[0]) for row in seen):
                return False
            conn.execute(
                "INSERT OR REPLACE INTO config_seen VALUES (?, ?, ?)",
                (device, version, time.time()),
            )
            return True

        return await self._worker.call(write)

    async def restore_config(
        self, device: str, previous: dict[str, Any] | None, *, unsee: str | None = None
    ) -> None:
        """Put back the applied config `desired_config()` gave before a failed apply.

        With `unsee`, that received version is forgotten too, so its redelivery is applied.
        """

        def write(conn: sqlite3.Connection) -> None:
            if unsee is not None:
                conn.execute(
                    "DELETE FROM config_seen WHERE device = ? AND version = ?", (device, unsee)
                )
            if previous is None:
                conn.execute("DELETE FROM desired_config WHERE device = ?", (device,))
                return
            conn.execute(
                "INSERT OR REPLACE INTO desired_config "
                "(device, version, last_updated, body, received, sent_version) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    device,
                    previous["version"],
                    previous["last_updated"],
                    json.dumps(previous["fields"], separators=(",", ":")),
                    previous["received"],
                    json.dumps(previous["sent_version"]),
                ),
            )

        await self._worker.call(write)

    async def accept_config(
        self,
        device: str,
        version: str,
        last_updated: str | None,
        body: dict[str, Any],
        *,
        sent_version: int | str | None = None,
    ) -> bool:
        """Store a config as the device's applied one, unless the applied version is as new.

        Args:
            device: the device it is for.
            version: its version as text (what orders versions).
            last_updated: the cloud's time of the change, if given.
            body: the config fields taken (refused ones are left out).
            sent_version: the version as the cloud sent it (an integer or text), echoed on
                `config/update` as it came; `version` when not given.
        """
        text = json.dumps(body, separators=(",", ":"))
        sent = json.dumps(version if sent_version is None else sent_version)

        def write(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT version FROM desired_config WHERE device = ?", (device,)
            ).fetchone()
            if row is not None and not newer_version(version, row[0]):
                return False
            conn.execute(
                "INSERT OR REPLACE INTO desired_config "
                "(device, version, last_updated, body, received, sent_version) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (device, version, last_updated, text, time.time(), sent),
            )
            return True

        return await self._worker.call(write)

    async def desired_config(self, device: str) -> dict[str, Any] | None:
        """The latest applied desired config of a device.

        `version` is its text; `sent_version` the version as the cloud sent it (1 or "1").
        """

        def read(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT version, last_updated, body, received, sent_version "
                "FROM desired_config WHERE device = ?",
                (device,),
            ).fetchone()
            if row is None:
                return None
            return {
                "version": row[0],
                "sent_version": row[0] if row[4] is None else json.loads(row[4]),
                "last_updated": row[1],
                "fields": json.loads(row[2]),
                "received": row[3],
            }

        return await self._worker.call(read)

    async def claim_command(self, device: str, command_id: str, name: str, parameters: Any) -> bool:
        """Record a new command; False when its id was seen before (never execute twice)."""
        now = time.time()
        params = json.dumps(parameters, separators=(",", ":"))

        def write(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO commands "
                "(id, device, name, parameters, status, message, received, updated, history) "
                "VALUES (?, ?, ?, ?, 'pending', '', ?, ?, "
                "json_array(json_array('pending', '', ?)))",
                (command_id, device, name, params, now, now, now),
            )
            return cur.rowcount == 1

        return await self._worker.call(write)

    async def set_command_status(
        self, command_id: str, status: str, message: str, response: dict[str, Any] | None = None
    ) -> None:
        """Record the latest status of a command, appended to its history."""
        now = time.time()
        text = None if response is None else json.dumps(response, separators=(",", ":"))
        await self._worker.call(
            lambda conn: conn.execute(
                "UPDATE commands SET status = ?, message = ?, updated = ?, "
                "response = COALESCE(?, response), "
                "history = json_insert(history, '$[#]', json_array(?, ?, ?)) WHERE id = ?",
                (status, message, now, text, status, message, now, command_id),
            )
        )

    async def unfinished_commands(self) -> list[tuple[str, str]]:
        """(id, device) of commands claimed but never finished (pending or in_progress)."""

        def read(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = conn.execute(
                "SELECT id, device FROM commands WHERE status IN ('pending', 'in_progress') "
                "ORDER BY received"
            ).fetchall()
            return [(str(r[0]), str(r[1])) for r in rows]

        return await self._worker.call(read)

    async def commands(self, device: str, limit: int = 100) -> list[StoredCommand]:
        """A device's commands, newest first."""

        def read(conn: sqlite3.Connection) -> list[StoredCommand]:
            rows = conn.execute(
                "SELECT id, device, name, parameters, status, message, received, updated, "
                "history, response FROM commands WHERE device = ? ORDER BY received DESC LIMIT ?",
                (device, limit),
            ).fetchall()
            return [
                StoredCommand(
                    r[0],
                    r[1],
                    r[2],
                    json.loads(r[3]),
                    r[4],
                    r[5],
                    r[6],
                    r[7],
                    tuple(tuple(h) for h in json.loads(r[8])),
                    None if r[9] is None else json.loads(r[9]),
                )
                for r in rows
            ]

        return await self._worker.call(read)

    async def put_license(
        self, device: str, license_id: str, body: dict[str, Any], state: str
    ) -> None:
        """Store (or mark removed) one license of a device."""
        text = json.dumps(body, separators=(",", ":"))
        await self._worker.call(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO licenses VALUES (?, ?, ?, ?, ?)",
                (device, license_id, text, state, time.time()),
            )
        )

    async def licenses(self, device: str) -> list[dict[str, Any]]:
        """A device's licenses with their state."""

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT id, body, state, updated FROM licenses WHERE device = ? ORDER BY id",
                (device,),
            ).fetchall()
            return [
                {"id": r[0], "license": json.loads(r[1]), "state": r[2], "updated": r[3]}
                for r in rows
            ]

        return await self._worker.call(read)

    async def put_info(self, device: str, topic: str, body: dict[str, Any]) -> None:
        """Store the latest space info or firmware info of a device."""
        text = json.dumps(body, separators=(",", ":"))
        await self._worker.call(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO device_info VALUES (?, ?, ?, ?)",
                (device, topic, text, time.time()),
            )
        )

    async def info(self, device: str, topic: str) -> dict[str, Any] | None:
        """The latest space info or firmware info of a device."""

        def read(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT body, received FROM device_info WHERE device = ? AND topic = ?",
                (device, topic),
            ).fetchone()
            return None if row is None else {**json.loads(row[0]), "received": row[1]}

        return await self._worker.call(read)

    async def set_child(
        self, device_id: str, state: str, reason: str = "", access_key: str | None = None
    ) -> None:
        """Record a child's registration state: pending, registered, refused or deleted."""
        await self._worker.call(
            lambda conn: conn.execute(
                "INSERT INTO children VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE"
                " SET state = excluded.state, reason = excluded.reason, updated = excluded.updated,"
                " access_key = COALESCE(excluded.access_key, children.access_key)",
                (device_id, state, reason, access_key, time.time()),
            )
        )

    async def children(self) -> dict[str, dict[str, Any]]:
        """Registration state of every child the cloud was told about (no secrets)."""

        def read(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            rows = conn.execute("SELECT device_id, state, reason, updated FROM children")
            return {r[0]: {"state": r[1], "reason": r[2], "updated": r[3]} for r in rows}

        return await self._worker.call(read)

    async def get_meta(self, key: str) -> str | None:
        """A small value remembered across restarts (e.g. the children notify version)."""

        def read(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM cloud_meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._worker.call(read)

    async def set_meta(self, key: str, value: str) -> None:
        """Remember a small value across restarts."""
        await self._worker.call(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO cloud_meta VALUES (?, ?)", (key, value)
            )
        )
