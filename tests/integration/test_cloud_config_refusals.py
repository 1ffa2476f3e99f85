"""Desired config checked field by field, on real files: the downlink handler, the shadows and
the cloud state together (the end-to-end run is tests/integration/test_cloud_loop.py)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gatewayd.bridge.cloud_sync import CloudDesired
from gatewayd.cloud.children import ConfiguredChildren
from gatewayd.cloud.downlinks import BuiltinCommands, CheckedConfig, Downlinks
from gatewayd.devices import DeviceCreate
from gatewayd.store import Store, open_store
from gatewayd.store.cloud_state import CloudState, cloud_state_schema
from gatewayd.store.outbox import Outbox, open_outbox
from tests.store_fixtures import WATER, store_settings

GW = "gatewayd_gw1"
DEV = f"{WATER}_n1"  # two services: WaterMeter and Battery


@contextlib.asynccontextmanager
async def parts(tmp_path: Path) -> AsyncIterator[tuple[Store, Outbox, CloudState]]:
    settings = store_settings(tmp_path)
    async with (
        open_store(settings) as store,
        open_outbox(
            settings.state_dir / "outbox.db", settings.outbox, schema=cloud_state_schema
        ) as outbox,
    ):
        await store.registry.create(DeviceCreate(node_id="n1", product_id=WATER))
        yield store, outbox, CloudState(outbox.worker)


def downlinks(store: Store, outbox: Outbox, state: CloudState, desired: Any = None) -> Downlinks:
    return Downlinks(
        GW,
        state,
        outbox,
        ConfiguredChildren(store_settings(Path("/nonexistent"))),
        BuiltinCommands(),
        desired or CloudDesired(store.registry, store.products, store.shadows),
    )


async def answers(outbox: Outbox) -> list[dict[str, Any]]:
    records = await outbox.fetch({}, 100)
    return [json.loads(r.payload) for r in records if r.kind == "config/update"]


async def config(handler: Downlinks, body: dict[str, Any]) -> None:
    await handler.handle(f"v1/device/{DEV}/config", json.dumps(body).encode())


async def test_several_services_refused_per_service_and_the_rest_applied(tmp_path):
    async with parts(tmp_path) as (store, outbox, state):
        handler = downlinks(store, outbox, state)
        await config(
            handler,
            {
                "version": 2,
                "WaterMeter": {"temperature": 30, "flow": 3, "label": "x" * 20},
                "Battery": {"level": 5},
                "Nope": {"a": 1},
                "WaterMeter2": 7,
            },
        )
        [answer] = await answers(outbox)
        assert answer["version"] == 2
        refused = answer["refused"]
        assert set(refused) == {"WaterMeter", "Battery", "Nope", "WaterMeter2"}
        assert set(refused["WaterMeter"]) == {"flow", "label"}
        assert refused["WaterMeter"]["flow"] == "the property is read-only"
        assert refused["Battery"] == {"level": "the property is read-only"}
        assert "has no service 'Nope'" in refused["Nope"]
        stored = await state.desired_config(DEV)
        assert stored is not None
        assert (stored["version"], stored["fields"]) == ("2", {"WaterMeter": {"temperature": 30}})
        shadows = {s.service_id: s for s in await store.shadows.get(DEV)}
        assert shadows["WaterMeter"].desired["temperature"].value == 30
        assert shadows["WaterMeter"].desired["temperature"].asked

        # Every field refused: answered under its own version, the applied one stays 2.
        await config(handler, {"version": 3, "WaterMeter": {"temperature": 999}})
        # Not newer than one received (3, though refused): ignored, not answered.
        await config(handler, {"version": 3, "WaterMeter": {"temperature": 40}})
        await config(handler, {"version": 1, "WaterMeter": {"temperature": 41}})
        got = await answers(outbox)
        assert [(a["version"], a["refused"]) for a in got[1:]] == [
            (3, {"WaterMeter": {"temperature": "999 is above the maximum 150"}})
        ]
        stored = await state.desired_config(DEV)
        assert stored is not None
        assert stored["version"] == "2"
        shadows = {s.service_id: s for s in await store.shadows.get(DEV)}
        assert shadows["WaterMeter"].desired["temperature"].value == 30
        assert handler.counts == {"ok": 4, "invalid": 0, "failed": 0}


class FailingDesired:
    """Takes every field, then the disk refuses the change (what a full disk does)."""

    def __init__(self, real: CloudDesired) -> None:
        self._real = real

    async def check_config(self, device_id: str, fields: dict[str, Any]) -> CheckedConfig:
        return await self._real.check_config(device_id, fields)

    async def apply_config(self, device_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        del device_id, fields
        raise sqlite3.OperationalError("database or disk is full")


async def test_a_config_whose_apply_failed_is_not_applied_and_its_redelivery_is(tmp_path):
    async with parts(tmp_path) as (store, outbox, state):
        real = CloudDesired(store.registry, store.products, store.shadows)
        body = {"version": 5, "WaterMeter": {"temperature": 33}}
        await config(downlinks(store, outbox, state, FailingDesired(real)), body)
        assert await state.desired_config(DEV) is None  # the version is not stored as applied
        handler = downlinks(store, outbox, state, real)
        await config(handler, body)  # the redelivery is applied
        stored = await state.desired_config(DEV)
        assert stored is not None
        assert (stored["version"], stored["fields"]) == ("5", {"WaterMeter": {"temperature": 33}})
        assert await answers(outbox) == []  # nothing refused


class VanishingDesired(FailingDesired):
    """The device is deleted between the check and the apply: the apply refuses it all."""

    async def apply_config(self, device_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        return {
            sid: dict.fromkeys(props, f"no device {device_id!r}") for sid, props in fields.items()
        }


async def test_an_apply_refused_after_the_check_keeps_every_refusal_and_no_version(tmp_path):
    async with parts(tmp_path) as (store, outbox, state):
        real = CloudDesired(store.registry, store.products, store.shadows)
        handler = downlinks(store, outbox, state, VanishingDesired(real))
        await config(handler, {"version": 9, "WaterMeter": {"temperature": 33, "flow": 1}})
        [answer] = await answers(outbox)
        assert answer["refused"] == {
            "WaterMeter": {
                "flow": "the property is read-only",
                "temperature": f"no device {DEV!r}",
            }
        }
        assert await state.desired_config(DEV) is None
