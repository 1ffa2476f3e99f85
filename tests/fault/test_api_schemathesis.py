"""`/openapi.json` is the truth: schemathesis, every check, against the real daemon.

The daemon runs as its own process with the shipped products, linked to a real mosquitto
with the reference cloud, which first sends the gateway a config, a command, a license,
space info and firmware info, so the `/v1/devices/{device_id}/cloud/*` routes answer from
stored state (schemathesis is given the gateway's id for those routes; the IoTDA routes get
their ids from schemathesis' own generation and from the devices it creates). schemathesis
runs every phase (coverage, fuzzing, stateful) with every check, deterministically (the same
cases on every run) and bounded in examples; any failure of any check fails this test.

One allowance, per operation: schemathesis expects a schema-valid request to be accepted, but
three rules of the device API depend on what is stored, which no schema can state (a
`gateway_id` must name a registered device; a shadow's `service_id` and properties must be in
that device's product; `secret` and `fingerprint` each belong to one `auth_type` of the
device being changed). Those operations may also answer 400, as docs/api.md says.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gatewayd.api.auth import hash_token
from tests.fault.daemon_setup import TOKEN, Daemon
from tests.helpers import ROOT, eventually, free_port, write_yaml
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud

MAX_EXAMPLES = 25
STATEFUL_STEPS = 20
# A bound that only a hang reaches: the cases are counted, not timed (schemathesis' own
# --max-time would repeat phases until it is spent), so every run sends the same requests.
BACKSTOP_S = 70
GATEWAY = "gatewayd_gw-schema"

CONFIG = """
generation.database = "none"
generation.deterministic = true
workers = 1
phases.stateful.max-steps = {steps}

[[operations]]
include-path-regex = "^/v5/iot/\\\\{{project_id\\\\}}/devices"
include-method = ["POST", "PUT"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

[[operations]]
include-path-regex = "^/v1/devices/"
parameters = {{ device_id = "{gateway}" }}
"""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def daemon(tmp_path: Path, broker: Broker) -> Iterator[Daemon]:
    port = free_port()
    shutil.copytree(ROOT / "config" / "products", tmp_path / "products")
    config = write_yaml(
        tmp_path / "gw.yaml",
        {
            "gateway": {"node_id": "gw-schema"},
            "state_dir": str(tmp_path / "state"),
            "products": str(tmp_path / "products"),
            "api": {"port": port, "tokens": {"t": {"sha256": hash_token(TOKEN), "scope": "admin"}}},
            "cloud": {"host": "127.0.0.1", "port": broker.port, "connect_timeout_s": 2},
        },
    )
    gw = Daemon(config, port, tmp_path / "daemon.log")
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


async def seed_cloud_state(gw: Daemon, broker: Broker) -> None:
    """What the cloud sends the gateway, stored before schemathesis starts."""
    base = f"http://127.0.0.1:{gw.api_port}/v1/devices/{GATEWAY}/cloud"
    async with (
        RefCloud(broker.port).running() as cloud,
        aiohttp.ClientSession(headers={"X-Auth-Token": TOKEN}) as http,
    ):
        await eventually(lambda: _uplink(http, gw), "up")
        await cloud.push(GATEWAY, "config", {"version": 1, "last_updated": "20260101T000000Z"})
        await cloud.push(GATEWAY, "commands", {"id": "c1", "name": "ping"})
        await cloud.push(GATEWAY, "license", {"id": "L1", "data": "d", "add": True})
        await cloud.push(GATEWAY, "space_info", {"name": "Lab"})
        await cloud.push(GATEWAY, "firmware", {"latest_fw_version": "2.0"})
        for route in ("config", "space-info", "firmware"):
            await eventually(lambda r=route: _status(http, f"{base}/{r}"), 200)
        await eventually(lambda: _count(http, f"{base}/commands", "commands"), 1)
        await eventually(lambda: _count(http, f"{base}/licenses", "licenses"), 1)


async def _uplink(http: aiohttp.ClientSession, gw: Daemon) -> str:
    async with http.get(f"http://127.0.0.1:{gw.api_port}/healthz") as resp:
        return str((await resp.json())["components"].get("uplink", {}).get("state"))


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as resp:
        return resp.status


async def _count(http: aiohttp.ClientSession, url: str, key: str) -> int:
    async with http.get(url) as resp:
        return len((await resp.json())[key]) if resp.status == 200 else -1


@pytest.mark.timeout(BACKSTOP_S + 20)
async def test_schemathesis_finds_no_failure_of_any_check(
    daemon: Daemon, broker: Broker, tmp_path: Path
) -> None:
    await seed_cloud_state(daemon, broker)
    toml = tmp_path / "schemathesis.toml"
    toml.write_text(CONFIG.format(steps=STATEFUL_STEPS, gateway=GATEWAY))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(toml),
        "--no-color",
        "run",
        f"http://127.0.0.1:{daemon.api_port}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--header",
        f"X-Auth-Token: {TOKEN}",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(BACKSTOP_S):
            stdout, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = stdout.decode()
    assert proc.returncode == 0, out[-8000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert cases is not None, out[-3000:]
    assert int(cases.group(1)) > 1000, out[-3000:]
    assert "Missing test data" not in out, out[-3000:]
    assert "Traceback" not in daemon.log.read_text()
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
    print(out[out.find("Coverage (") :])
