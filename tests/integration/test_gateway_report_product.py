"""The gateway's report follows whatever gateway product the site has (real SQLite stores)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from gatewayd.bridge.gateway_report import GatewayReport
from gatewayd.health import Health
from gatewayd.settings import Settings
from gatewayd.store import open_store
from gatewayd.store.cloud_state import cloud_state_schema
from gatewayd.store.outbox import open_outbox
from gatewayd.store.shadows import DesiredUpdate
from tests.helpers import write_yaml

GW = "gatewayd_gw1"


def settings(tmp_path: Path, products: Path | None) -> Settings:
    return Settings(gateway={"node_id": "gw1"}, state_dir=tmp_path / "state", products=products)


async def reports(tmp_path: Path, products: Path | None, then=None) -> tuple[list, GatewayReport]:
    """Run the report until `then` (or the first report) is done; what it put, in order."""
    cfg = settings(tmp_path, products)
    async with (
        open_store(cfg) as store,
        open_outbox(tmp_path / "state" / "outbox.db", cfg.outbox, schema=cloud_state_schema) as ob,
    ):
        health = Health()
        health.component("connection[bus]").down("no answer")
        report = GatewayReport(GW, "gatewayd", store.products, ob, store.shadows, health, lambda: 2)
        task = asyncio.create_task(report.run())
        try:
            async with asyncio.timeout(10):
                while report.reports == 0:
                    await asyncio.sleep(0.01)
                if then is not None:
                    await then(store, report)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        records = await ob.fetch({}, 100)
    return [(r.kind, json.loads(r.payload)) for r in records], report


async def test_without_a_gateway_product_every_field_at_the_default_period(tmp_path):
    sent, report = await reports(tmp_path, None)
    assert report.period_s == 300
    assert sent[0] == ("cloud_settings/update", {"property": "heartbeat_s", "value": 300})
    kind, body = sent[1]
    assert kind == "telemetry"
    values: dict[str, Any] = body["telemetries"]
    assert set(values) == {
        "uptime_s",
        "started_at",
        "outbox_records",
        "outbox_bytes",
        "records_dropped",
        "link_reconnects",
        "connections_down",
    }
    assert (values["link_reconnects"], values["connections_down"]) == (2, 1)


async def test_a_site_product_gets_only_what_it_declares_and_its_default_period(tmp_path):
    products = tmp_path / "products"
    write_yaml(
        products / "gatewayd.yaml",
        {
            "product_id": "gatewayd",
            "name": "site gateway",
            "services": [
                {
                    "service_id": "Status",
                    "properties": [
                        {"name": "uptime_s", "type": "int", "min": 0},
                        {"name": "connections_down", "type": "int", "max": 0},
                        {"name": "heartbeat_s", "type": "int", "min": 1, "default": 5,
                         "access": "RW"},
                    ],
                }
            ],
        },
    )  # fmt: skip

    async def change(store, report):
        # The local API's way: desired state of the gateway, no cloud involved.
        await store.shadows.update_desired(GW, [DesiredUpdate("Status", {"heartbeat_s": 7})])
        async with asyncio.timeout(5):  # applied within RECHECK_S, then reported
            while (await store.shadows.get(GW))[0].reported["heartbeat_s"].value != 7:
                await asyncio.sleep(0.02)
        assert report.period_s == 7

    sent, _ = await reports(tmp_path, products, change)
    settings_sent = [body for kind, body in sent if kind == "cloud_settings/update"]
    assert settings_sent == [
        {"property": "heartbeat_s", "value": 5},
        {"property": "heartbeat_s", "value": 7},
    ]
    telemetry = [body["telemetries"] for kind, body in sent if kind == "telemetry"]
    # connections_down 1 is above the product's max 0: left out, like every undeclared field.
    assert telemetry == [{"uptime_s": 0}]
