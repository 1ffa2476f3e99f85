"""The real daemon keeps the newest config and runs a command once, across a restart."""

from __future__ import annotations

import asyncio

from tests.fault.daemon_setup import Daemon, daemon_config, free_port
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud


async def wait_api(daemon: Daemon, path: str, check, timeout_s: float = 10.0):
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                body = await asyncio.to_thread(daemon.get, path)
            except OSError:
                body = None
            if body is not None and check(body):
                return body
            await asyncio.sleep(0.05)


async def test_older_config_ignored_and_command_run_once_across_restart(tmp_path):
    with Broker(tmp_path / "broker") as broker:
        port = free_port()
        config = daemon_config(tmp_path, broker.port, port, producing=False)
        daemon = Daemon(config, port, tmp_path / "daemon.log")
        gw = "gatewayd_gw-fault"
        command = {"id": "cmd-1", "status": "pending", "name": "ping", "parameters": {}}
        try:
            async with RefCloud(broker.port).running() as cloud:
                for run in range(2):
                    await asyncio.to_thread(daemon.start)
                    await cloud.wait(lambda n=run: len(cloud.of("get", gw)) > n)
                    await cloud.push("memory_d0", "commands", command)
                    await cloud.push("memory_d0", "commands", command)
                    if run == 0:
                        await cloud.push("memory_d0", "config", {"version": 5, "mode": "eco"})
                        await cloud.push("memory_d0", "config", {"version": 4, "mode": "old"})
                    marker = {"id": f"marker-{run}", "name": "ping"}
                    await cloud.push("memory_d0", "commands", marker)
                    await cloud.wait(
                        lambda m=marker["id"]: any(
                            u.body == {"id": m, "status": "done", "message": "pong"}
                            for u in cloud.of("commands/update")
                        )
                    )
                    await asyncio.to_thread(daemon.stop)
                await asyncio.to_thread(daemon.start)
                base = "/v1/devices/memory_d0/cloud"
                commands = await wait_api(daemon, f"{base}/commands", lambda b: True)
        finally:
            daemon.stop()
    updates = [(u.body["id"], u.body["status"]) for u in cloud.of("commands/update")]
    assert updates.count(("cmd-1", "in_progress")) == 1
    assert updates.count(("cmd-1", "done")) == 1
    # Version 5 is answered (its device has no product model: the field is refused by name,
    # so nothing is stored as applied); version 4, older, is ignored and never answered.
    answers = [u.body for u in cloud.of("config/update", "memory_d0")]
    assert [(a["version"], list(a["refused"])) for a in answers] == [(5, ["mode"])]
    assert {c["id"]: c["status"] for c in commands["commands"]} == {
        "cmd-1": "done",
        "marker-0": "done",
        "marker-1": "done",
    }
    log = daemon.log.read_text()
    assert "Traceback" not in log
    assert "never retrieved" not in log
