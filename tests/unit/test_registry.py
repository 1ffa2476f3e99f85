"""The registry over a real SQLite file: tree rules, statuses, paging, migrations."""

from __future__ import annotations

import re
import sqlite3

import pytest

from gatewayd.devices import (
    DeviceCreate,
    DeviceStatus,
    DeviceUpdate,
    NodeType,
    compact_time,
    precise_time,
)
from gatewayd.errors import ConfigError, StateTooNew
from gatewayd.store import STATE_FILE, open_store
from gatewayd.store.db import MIGRATIONS, open_database
from gatewayd.store.errors import (
    DeviceExists,
    DeviceNotFound,
    HasChildren,
    InvalidField,
    ParentNotFound,
    ProtectedDevice,
    TooDeep,
)
from gatewayd.store.registry import DeviceQuery
from tests.store_fixtures import WATER, store_settings

GW = "gatewayd_gw1"


def _req(node: str, **kw) -> DeviceCreate:
    return DeviceCreate(node_id=node, product_id=WATER, **kw)


async def test_gateway_registers_itself_once(tmp_path):
    settings = store_settings(tmp_path)
    for _ in range(2):
        async with open_store(settings) as store:
            gateway = await store.registry.get(GW)
            assert gateway.node_type is NodeType.GATEWAY
            assert gateway.gateway_id == GW
            assert gateway.level == 0
            assert gateway.status is DeviceStatus.INACTIVE
            assert [d.device_id for d in await store.registry.devices()] == [GW]


async def test_defaults_of_a_new_device(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        device = await store.registry.create(_req("n1"))
        assert device.device_id == f"{WATER}_n1"
        assert device.gateway_id == GW
        assert device.node_type is NodeType.ENDPOINT
        assert device.status is DeviceStatus.INACTIVE
        assert device.active_time is None
        assert device.connection_status_update_time is None
        assert device.secure_access is True
        assert device.timeout == 0


async def test_two_levels_below_the_gateway_and_no_more(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        reg = store.registry
        child = await reg.create(_req("child"))
        grandchild = await reg.create(_req("grand", gateway_id=child.device_id))
        assert (child.level, grandchild.level) == (1, 2)
        assert grandchild.gateway_id == child.device_id
        with pytest.raises(TooDeep) as info:
            await reg.create(_req("great", gateway_id=grandchild.device_id))
        assert info.value.field == "gateway_id"
        assert "at most 2 levels of child devices" in str(info.value)
        assert await reg.find(f"{WATER}_great") is None


async def test_unknown_parent_and_duplicate_id_are_distinct_errors(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        await store.registry.create(_req("n1"))
        with pytest.raises(DeviceExists) as dup:
            await store.registry.create(_req("n1"))
        with pytest.raises(ParentNotFound) as orphan:
            await store.registry.create(_req("n2", gateway_id="nobody"))
        assert (dup.value.code, orphan.value.code) == ("DEVICE_EXISTS", "PARENT_NOT_FOUND")
        assert dup.value.field == "device_id"
        assert orphan.value.field == "gateway_id"


async def test_delete_refuses_children_unless_cascade(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        reg = store.registry
        child = await reg.create(_req("child"))
        grand = await reg.create(_req("grand", gateway_id=child.device_id))
        other = await reg.create(_req("other"))
        with pytest.raises(HasChildren):
            await reg.delete(child.device_id)
        assert await reg.find(grand.device_id) is not None
        deleted = await reg.delete(child.device_id, cascade=True)
        assert deleted == [grand.device_id, child.device_id]
        assert await reg.find(child.device_id) is None
        assert await reg.find(grand.device_id) is None
        assert await reg.find(other.device_id) is not None
        with pytest.raises(DeviceNotFound):
            await store.shadows.get(grand.device_id)
        left = await store.db.run(
            lambda c: c.execute(
                "SELECT COUNT(*) FROM shadows WHERE device_id IN (?, ?)",
                (grand.device_id, child.device_id),
            ).fetchone()[0]
        )
        assert left == 0
        with pytest.raises(ProtectedDevice):
            await reg.delete(GW, cascade=True)
        with pytest.raises(DeviceNotFound):
            await reg.delete("nobody")


async def test_status_follows_the_field_with_times(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        reg = store.registry
        device = await reg.create(_req("n1"))
        online = await reg.set_status(device.device_id, DeviceStatus.ONLINE)
        assert online.active_time is not None
        assert online.connection_status_update_time == online.active_time
        offline = await reg.set_status(device.device_id, DeviceStatus.OFFLINE)
        assert offline.status is DeviceStatus.OFFLINE
        assert offline.active_time == online.active_time
        assert offline.connection_status_update_time >= online.connection_status_update_time
        again = await reg.set_status(device.device_id, DeviceStatus.OFFLINE)
        assert again.connection_status_update_time == offline.connection_status_update_time
        with pytest.raises(InvalidField):
            await reg.set_status(device.device_id, DeviceStatus.INACTIVE)


async def test_abnormal_before_any_data_does_not_activate(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        device = await store.registry.create(_req("n1"))
        abnormal = await store.registry.set_status(device.device_id, DeviceStatus.ABNORMAL)
        assert abnormal.active_time is None
        assert abnormal.connection_status_update_time is not None


async def test_update_changes_only_given_fields(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        reg = store.registry
        device = await reg.create(
            _req("n1", device_name="old", description="keep", auth_info={"secret": "s" * 8})
        )
        changed = await reg.update(
            device.device_id,
            DeviceUpdate(device_name="new", extension_info={"a": 1}, auth_info={"timeout": 30}),
        )
        assert (changed.device_name, changed.description) == ("new", "keep")
        assert changed.extension_info == {"a": 1}
        assert (changed.secret, changed.timeout) == ("s" * 8, 30)
        cert = await reg.update(
            device.device_id,
            DeviceUpdate(auth_info={"auth_type": "CERTIFICATES", "fingerprint": "a" * 64}),
        )
        assert (cert.secret, cert.fingerprint) == (None, "a" * 64)
        with pytest.raises(InvalidField) as info:
            await reg.update(device.device_id, DeviceUpdate(auth_info={"secret": "t" * 8}))
        assert info.value.field == "auth_info.secret"


async def test_paging_is_stable_newest_first_with_filters(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        reg = store.registry
        made = [await reg.create(_req(f"n{i:02d}", device_name=f"m{i % 3}")) for i in range(25)]
        seen = []
        marker = None
        while True:
            page = await reg.page(DeviceQuery(limit=10, marker=marker))
            assert page.count == 26  # with the gateway
            if not page.devices:
                break
            seen += [d.device_id for d in page.devices]
            marker = page.marker
        expected = [d.device_id for d in reversed(made)] + [GW]
        assert seen == expected
        skipped = await reg.page(DeviceQuery(limit=5, offset=3))
        assert [d.device_id for d in skipped.devices] == expected[3:8]
        named = await reg.page(DeviceQuery(device_name="m1", limit=100))
        assert named.count == 8
        assert {d.device_name for d in named.devices} == {"m1"}
        children = await reg.page(DeviceQuery(gateway_id=GW, limit=100))
        assert children.count == 25
        by_node = await reg.page(DeviceQuery(node_id="n07"))
        assert [d.device_id for d in by_node.devices] == [f"{WATER}_n07"]
        await reg.set_status(made[0].device_id, DeviceStatus.ONLINE)
        online = await reg.page(DeviceQuery(status=DeviceStatus.ONLINE))
        assert [d.device_id for d in online.devices] == [made[0].device_id]
        assert (await reg.page(DeviceQuery(product_id="other"))).count == 0


async def test_schema_is_versioned_and_reopened(tmp_path):
    settings = store_settings(tmp_path)
    async with open_store(settings) as store:
        assert await store.db.schema_version() == len(MIGRATIONS)
        await store.registry.create(_req("n1"))
    async with open_store(settings) as store:
        assert await store.registry.find(f"{WATER}_n1") is not None
    path = settings.state_dir / STATE_FILE
    assert path.stat().st_mode & 0o777 == 0o600


async def test_forward_migration_keeps_data_and_newer_files_are_refused(tmp_path):
    path = tmp_path / "x.db"
    first = ("CREATE TABLE a (x INTEGER);",)
    second = (*first, "ALTER TABLE a ADD COLUMN y INTEGER NOT NULL DEFAULT 7;")
    async with open_database(path, first) as db:
        await db.run(lambda c: c.execute("INSERT INTO a (x) VALUES (3)"))
    async with open_database(path, second) as db:
        assert await db.schema_version() == 2
        rows = await db.run(lambda c: c.execute("SELECT x, y FROM a").fetchall())
        assert rows == [(3, 7)]
    with pytest.raises(StateTooNew, match="downgrades are not supported"):
        async with open_database(path, first):
            pass


async def test_a_failing_migration_leaves_the_file_at_its_version(tmp_path):
    path = tmp_path / "x.db"
    async with open_database(path, MIGRATIONS) as db:
        pass
    with pytest.raises(sqlite3.OperationalError):
        async with open_database(path, (*MIGRATIONS, "CREATE TABLE t (a); SELECT nope FROM t;")):
            pass
    async with open_database(path, MIGRATIONS) as db:
        assert await db.schema_version() == len(MIGRATIONS)
        tables = await db.run(
            lambda c: c.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchall()
        )
        assert tables == []


async def test_bad_gateway_identity_is_a_config_error(tmp_path):
    settings = store_settings(tmp_path, gateway={"node_id": "gw1", "device_id": "gw.1"})
    with pytest.raises(ConfigError, match=r"gateway\.device_id"):
        async with open_store(settings):
            pass


async def test_times_use_the_seed_formats(tmp_path):
    async with open_store(store_settings(tmp_path)) as store:
        device = await store.registry.create(_req("n1"))
        device = await store.registry.set_status(device.device_id, DeviceStatus.ONLINE)
        assert re.fullmatch(r"\d{8}T\d{6}Z", compact_time(device.create_time))
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", precise_time(device.active_time) or ""
        )


async def test_a_damaged_file_is_moved_aside_and_the_registry_rebuilt(tmp_path):
    settings = store_settings(tmp_path)
    async with open_store(settings) as store:
        await store.registry.create(_req("n1"))
    path = settings.state_dir / STATE_FILE
    path.write_bytes(b"this is not a database" * 100)
    async with open_store(settings) as store:
        aside = store.db.moved_aside
        assert aside is not None
        assert aside.read_bytes().startswith(b"this is not a database")
        assert [d.device_id for d in await store.registry.devices()] == [GW]
    async with open_store(settings) as store:
        assert store.db.moved_aside is None
