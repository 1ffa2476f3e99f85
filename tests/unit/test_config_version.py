"""`config/update` echoes a config's version as the cloud sent it: 1 stays 1, "1" stays "1"."""

from __future__ import annotations

import json
import sqlite3

import pytest

from gatewayd.cloud.dialects import native
from gatewayd.store.cloud_state import cloud_state_schema

TOPIC = "v1/device/dev1/config"


@pytest.mark.parametrize(("sent", "text"), [(1, "1"), ("1", "1"), ("2024-05-01T10:00:00Z", None)])
def test_the_version_keeps_its_type_beside_its_text(sent, text):
    body = native.decode(TOPIC, json.dumps({"version": sent, "x": 1}).encode()).body
    assert isinstance(body, native.ConfigDown)
    assert body.version == (text or sent)  # the text orders versions, as before
    assert body.sent_version == sent
    assert type(body.sent_version) is type(sent)
    assert body.fields() == {"x": 1}


def test_a_file_from_an_older_gatewayd_gains_the_sent_version_column(tmp_path):
    conn = sqlite3.connect(tmp_path / "outbox.db")
    conn.execute(
        "CREATE TABLE desired_config (device TEXT PRIMARY KEY, version TEXT NOT NULL, "
        "last_updated TEXT, body TEXT NOT NULL, received REAL NOT NULL)"
    )
    conn.execute("INSERT INTO desired_config VALUES ('d', '7', NULL, '{}', 0)")
    cloud_state_schema(conn)
    cloud_state_schema(conn)  # idempotent
    columns = [row[1] for row in conn.execute("PRAGMA table_info(desired_config)")]
    assert columns[-1] == "sent_version"
    assert conn.execute("SELECT version, sent_version FROM desired_config").fetchall() == [
        ("7", None)  # an older row: its text is echoed, as before
    ]
    conn.close()
