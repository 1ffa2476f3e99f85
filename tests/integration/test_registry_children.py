"""The link's children follow the registry (real SQLite): every surface's devices, parents first."""

from __future__ import annotations

import asyncio
import contextlib

from gatewayd.cloud.children import Child, ConfiguredChildren, RegistryChildren
from gatewayd.devices import DeviceCreate, DeviceUpdate
from gatewayd.store import open_store
from tests.store_fixtures import WATER, store_settings

GW = "gatewayd_gw1"


async def changes(children: RegistryChildren) -> dict[str, Child | None]:
    async with asyncio.timeout(5):
        await children.changed.wait()
    return dict(children.take_changes())


async def test_created_renamed_and_deleted_devices_are_changes_and_parents_come_first(tmp_path):
    settings = store_settings(tmp_path)
    async with open_store(settings) as store:
        registry = store.registry
        await registry.create(DeviceCreate(node_id="early", product_id=WATER))
        children = RegistryChildren(registry, ConfiguredChildren(settings))
        await children.load()
        assert [c.device_id for c in children.children()] == [f"{WATER}_early"]
        task = asyncio.create_task(children.run())
        try:
            hub = await registry.create(DeviceCreate(node_id="hub", product_id=WATER))
            leaf = await registry.create(
                DeviceCreate(node_id="leaf", product_id=WATER, gateway_id=hub.device_id)
            )
            got = await changes(children)
            while leaf.device_id not in got:
                got |= await changes(children)
            assert got == {
                hub.device_id: Child(hub.device_id, "hub", WATER, None, GW),
                leaf.device_id: Child(leaf.device_id, "leaf", WATER, None, hub.device_id),
            }
            ids = [c.device_id for c in children.children()]
            assert ids.index(hub.device_id) < ids.index(leaf.device_id)

            await registry.update(leaf.device_id, DeviceUpdate(device_name="Leaf"))
            assert await changes(children) == {
                leaf.device_id: Child(leaf.device_id, "leaf", WATER, "Leaf", hub.device_id)
            }
            await registry.delete(hub.device_id, cascade=True)
            got = await changes(children)
            while hub.device_id not in got:
                got |= await changes(children)
            assert got == {leaf.device_id: None, hub.device_id: None}
            assert [c.device_id for c in children.children()] == [f"{WATER}_early"]

            # What the link could not send comes back, unless something newer replaced it.
            children.restore({leaf.device_id: None})
            assert await changes(children) == {leaf.device_id: None}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
