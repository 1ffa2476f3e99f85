"""Devices declared in YAML are synced into the registry at every start."""

from __future__ import annotations

from gatewayd.devices import DeviceCreate, NodeType
from gatewayd.identity import child_identity
from gatewayd.store import open_store
from tests.store_fixtures import WATER, store_settings

GW = "gatewayd_gw1"


def _connections(devices):
    return {"rs485": {"driver": "memory", "devices": devices}}


DEVICES = {
    "conv": {"product_id": WATER, "name": "Converter"},
    "m1": {"parent": "conv", "product_id": WATER, "name": "Meter 1"},
    "plain": {},
}


async def test_sync_creates_the_tree_and_is_idempotent(tmp_path):
    settings = store_settings(tmp_path, connections=_connections(DEVICES))
    conn = settings.connections["rs485"]
    ids = {k: child_identity(conn, d).device_id for k, d in conn.devices.items()}  # type: ignore[attr-defined]
    async with open_store(settings) as store:
        assert sorted(store.sync.created) == sorted(ids.values())
        conv = await store.registry.get(ids["conv"])
        m1 = await store.registry.get(ids["m1"])
        plain = await store.registry.get(ids["plain"])
        assert (conv.level, conv.gateway_id, conv.node_type) == (1, GW, NodeType.ENDPOINT)
        assert (m1.level, m1.gateway_id, m1.device_name) == (2, ids["conv"], "Meter 1")
        assert plain.product_id == "memory"  # no such product file: registered, no shadow
        assert await store.shadows.get(plain.device_id) == []
        # without a product, reported values are taken as they come
        await store.shadows.report(plain.device_id, "points", {"t": 21.5, "ok": True})
        (points,) = await store.shadows.get(plain.device_id)
        assert {k: p.value for k, p in points.reported.items()} == {"t": 21.5, "ok": True}
        assert {s.service_id for s in await store.shadows.get(m1.device_id)} == {
            "WaterMeter",
            "Battery",
        }
        before = await store.registry.devices()
    async with open_store(settings) as store:
        assert store.sync.created == []
        assert sorted(store.sync.unchanged) == sorted(ids.values())
        assert await store.registry.devices() == before


async def test_changed_fields_are_updated_in_place(tmp_path):
    async with open_store(store_settings(tmp_path, connections=_connections(DEVICES))):
        pass
    renamed = {**DEVICES, "m1": {**DEVICES["m1"], "name": "Meter one"}}
    async with open_store(store_settings(tmp_path, connections=_connections(renamed))) as store:
        m1 = await store.registry.get(f"{WATER}_m1")
        assert m1.device_name == "Meter one"
        assert store.sync.updated == [m1.device_id]


async def test_undeclared_devices_are_removed_unless_api_devices_sit_below(tmp_path):
    async with open_store(store_settings(tmp_path, connections=_connections(DEVICES))) as store:
        await store.registry.create(
            DeviceCreate(node_id="api-child", product_id=WATER, gateway_id=f"{WATER}_conv")
        )
    fewer = {"plain": {}}
    async with open_store(store_settings(tmp_path, connections=_connections(fewer))) as store:
        assert store.sync.removed == [f"{WATER}_m1"]
        assert store.sync.kept == [f"{WATER}_conv"]
        assert await store.registry.find(f"{WATER}_m1") is None
        assert await store.registry.find(f"{WATER}_api-child") is not None
        await store.registry.delete(f"{WATER}_api-child")
    async with open_store(store_settings(tmp_path, connections=_connections(fewer))) as store:
        assert store.sync.removed == [f"{WATER}_conv"]


async def test_devices_breaking_the_rules_are_refused_and_the_rest_registered(tmp_path):
    devices = {
        "mac": {"node_id": "aa:bb:cc", "product_id": WATER},
        "behind": {"parent": "mac", "product_id": WATER},
        "ok": {"product_id": WATER},
    }
    async with open_store(store_settings(tmp_path, connections=_connections(devices))) as store:
        assert set(store.sync.refused) == {
            "connections.rs485.devices.mac",
            "connections.rs485.devices.behind",
        }
        assert "device_id" in store.sync.refused["connections.rs485.devices.mac"]
        assert "gateway_id" in store.sync.refused["connections.rs485.devices.behind"]
        assert store.sync.created == [f"{WATER}_ok"]


async def test_a_new_gateway_id_carries_its_children(tmp_path):
    async with open_store(store_settings(tmp_path, connections=_connections(DEVICES))):
        pass
    settings = store_settings(
        tmp_path,
        gateway={"node_id": "gw1", "device_id": "site-7-gw"},
        connections=_connections(DEVICES),
    )
    async with open_store(settings) as store:
        gateway = await store.registry.get("site-7-gw")
        assert gateway.gateway_id == "site-7-gw"
        conv = await store.registry.get(f"{WATER}_conv")
        assert conv.gateway_id == "site-7-gw"
        assert await store.registry.find(GW) is None


async def test_three_levels_in_yaml_are_refused_whatever_the_key_order(tmp_path):
    devices = {
        "a-deepest": {"parent": "b-middle", "product_id": WATER},
        "b-middle": {"parent": "c-top", "product_id": WATER},
        "c-top": {"product_id": WATER},
        "loop1": {"parent": "loop2"},
        "loop2": {"parent": "loop1"},
    }
    async with open_store(store_settings(tmp_path, connections=_connections(devices))) as store:
        assert sorted(store.sync.created) == [f"{WATER}_b-middle", f"{WATER}_c-top"]
        assert "at most 2 levels" in store.sync.refused["connections.rs485.devices.a-deepest"]
        assert set(store.sync.refused) >= {
            "connections.rs485.devices.loop1",
            "connections.rs485.devices.loop2",
        }
