"""The local API routes for the outbox and the cloud's downlink state, over real HTTP."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.test_utils import TestServer

from gatewayd.api.auth import TokenAuth, hash_token
from gatewayd.api.server import build_app
from gatewayd.cloud.routes import mount_cloud
from gatewayd.health import Health
from gatewayd.settings import ApiToken
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud
from tests.uplink_harness import running_gateway, settings_for

TOKEN = "link-api-token-0123"


async def until_ok(session: aiohttp.ClientSession, url: str, timeout_s: float = 10.0):
    async with asyncio.timeout(timeout_s):
        while True:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return await resp.json()
            await asyncio.sleep(0.02)


async def test_routes_show_stats_dead_letters_children_and_downlink_state(tmp_path):
    acl = "topic deny v1/device/memory_a/update\ntopic readwrite v1/#\n"
    with Broker(tmp_path / "broker", acl=acl) as broker:
        settings = settings_for(tmp_path, broker.port, ["a"])
        async with RefCloud(broker.port).running() as cloud, running_gateway(settings) as gw:
            async with asyncio.timeout(10):
                while gw.uplink.connects < 1:
                    await asyncio.sleep(0.01)
            app = build_app(
                Health(),
                lambda a: mount_cloud(a, gw.outbox, gw.state),
                auth=TokenAuth({"t": ApiToken(sha256=hash_token(TOKEN))}),
            )
            async with (
                TestServer(app, host="127.0.0.1") as server,
                aiohttp.ClientSession(headers={"X-Auth-Token": TOKEN}) as http,
            ):
                base = str(server.make_url(""))
                dev = f"{base}/v1/devices/memory_a/cloud"
                async with http.get(f"{dev}/config") as resp:
                    assert resp.status == 404
                    assert "no desired config" in (await resp.json())["error_msg"]

                await cloud.push("memory_a", "config", {"version": 4, "mode": "eco"})
                await cloud.push("memory_a", "commands", {"id": "k1", "name": "ping"})
                await cloud.push("memory_a", "space_info", {"name": "Lab"})
                await cloud.push("memory_a", "firmware", {"latest_fw_version": "2.0"})
                await cloud.push("memory_a", "license", {"id": "L", "data": "d", "add": True})

                config = await until_ok(http, f"{dev}/config")
                assert (config["version"], config["fields"]) == ("4", {"mode": "eco"})
                assert (await until_ok(http, f"{dev}/space-info"))["name"] == "Lab"
                assert (await until_ok(http, f"{dev}/firmware"))["latest_fw_version"] == "2.0"
                async with asyncio.timeout(10):
                    while True:
                        cmds = (await until_ok(http, f"{dev}/commands"))["commands"]
                        lics = (await until_ok(http, f"{dev}/licenses"))["licenses"]
                        if cmds and cmds[0]["status"] == "done" and lics:
                            break
                        await asyncio.sleep(0.05)
                # mosquitto 2.0.11 answers a denied publish with 0x87, then drops the client
                await gw.outbox.append("memory_a", "update", b'{"firmware_version":"1"}')
                async with asyncio.timeout(10):
                    while True:
                        dead = await until_ok(http, f"{base}/v1/outbox/dead-letters")
                        if dead["dead_letters"]:
                            break
                        await asyncio.sleep(0.05)
                assert cmds[0]["id"] == "k1"
                assert lics[0]["state"] == "inuse"
                letter = dead["dead_letters"][0]
                assert (letter["kind"], letter["reason_code"]) == ("update", 0x87)
                assert letter["payload"] == '{"firmware_version":"1"}'

                stats = await until_ok(http, f"{base}/v1/outbox/stats")
                assert stats["dead_letters"] == 1
                assert set(stats) >= {"records", "bytes", "oldest_age_s", "drops", "devices"}
                children = (await until_ok(http, f"{base}/v1/cloud/children"))["children"]
                assert children["memory_a"]["state"] == "registered"
                async with http.get(f"{base}/v1/outbox/dead-letters?limit=0") as resp:
                    assert resp.status == 400
                    assert "limit" in await resp.text()
