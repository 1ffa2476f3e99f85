"""/metrics over real HTTP: components and the outbox, in Prometheus text format."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from tests.store_fixtures import READER, running_app, store_settings

SAMPLE = re.compile(r'^([a-z_]+)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+$')


async def test_metrics_show_components_and_a_growing_outbox(tmp_path):
    settings = store_settings(tmp_path, connections={"virtual": {"driver": "memory", "devices": {
        "d1": {"interval_s": 0.02, "points": {"n": {"initial": 0, "step": 1}}}}}})  # fmt: skip
    async with (
        running_app(settings) as (base, _app),
        aiohttp.ClientSession(headers={"X-Auth-Token": READER}) as http,
    ):

        async def metrics() -> dict[str, float]:
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                assert resp.content_type == "text/plain"
                text = await resp.text()
            values = {}
            for line in text.splitlines():
                if line.startswith("#"):
                    continue
                assert SAMPLE.match(line), line
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
            return values

        first = await metrics()
        assert first['gatewayd_component_up{component="api"}'] == 1
        assert first['gatewayd_component_up{component="connection[virtual]"}'] == 1
        async with asyncio.timeout(10):
            while (await metrics())["gatewayd_outbox_records"] < 5:  # no cloud: records wait
                await asyncio.sleep(0.05)
        last = await metrics()
        assert last["gatewayd_outbox_bytes"] > 0
        assert last["gatewayd_outbox_unwritten_total"] == 0  # no broker: everything written

    async with (
        aiohttp.ClientSession() as anonymous,
        running_app(settings) as (base, _app),
        anonymous.get(f"{base}/metrics") as resp,
    ):
        assert resp.status == 401
