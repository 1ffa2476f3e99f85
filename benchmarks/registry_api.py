"""Registry through the local API: list and create latency with 10,000 devices registered.

Starts the real daemon (`python -m gatewayd run`) on loopback with a fresh state directory,
registers DEVICES children through `POST /v5/iot/{project}/devices`, then measures:
- `GET .../devices?limit=100` at random markers (a page of 100 of the whole registry);
- `POST .../devices` one at a time (the registry already holds DEVICES devices).
Targets: list p95 < 20 ms, create p95 < 5 ms.

    python -m benchmarks registry_api [--record] [--devices=N]
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from benchmarks._record import ROOT, append

TOKEN = "benchmark-admin-token"
PROJECT = "bench"
PRODUCT = "energy-meter"
LIST_TARGET_MS = 20.0
CREATE_TARGET_MS = 5.0


def main(argv: list[str]) -> int:
    devices = 10_000
    for arg in argv:
        if arg.startswith("--devices="):
            devices = int(arg.split("=", 1)[1])
    return asyncio.run(_run(devices, record="--record" in argv))


async def _run(devices: int, *, record: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="gatewayd-bench-") as tmp:
        port = _free_port()
        config = _config(Path(tmp), port)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "run", "-c", str(config)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            headers = {"X-Auth-Token": TOKEN}
            async with aiohttp.ClientSession(
                base_url=base, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
            ) as http:
                await _wait_ready(http, proc)
                fill_s = await _fill(http, devices)
                lists = await _lists(http, 500)
                creates = await _creates(http, 1000)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return _report(devices, fill_s, lists, creates, record=record)


def _config(tmp: Path, port: int) -> Path:
    path = tmp / "gatewayd.yaml"
    data = {
        "gateway": {"node_id": "bench-gw"},
        "state_dir": str(tmp / "state"),
        "products": str(ROOT / "config" / "products"),
        "logging": {"level": "WARNING"},
        "api": {
            "port": port,
            "project_id": PROJECT,
            "tokens": {
                "bench": {"sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "scope": "admin"}
            },
        },
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _free_port() -> int:
    import socket  # noqa: PLC0415 - only here

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_ready(http: aiohttp.ClientSession, proc: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(30):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gatewayd exited with {proc.returncode}")
            try:
                async with http.get("/healthz") as resp:
                    if (await resp.json())["ready"]:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)


def _body(node: str) -> dict[str, object]:
    return {
        "node_id": node,
        "product_id": PRODUCT,
        "device_name": f"meter {node}",
        "auth_info": {"secret": "s3cret-" + node[-8:].rjust(8, "0")},
        "extension_info": {"bus": "rs485-1"},
    }


async def _post(http: aiohttp.ClientSession, node: str) -> None:
    async with http.post(f"/v5/iot/{PROJECT}/devices", json=_body(node)) as resp:
        if resp.status != 201:
            raise RuntimeError(f"create {node}: {resp.status} {await resp.text()}")
        await resp.read()


async def _fill(http: aiohttp.ClientSession, devices: int) -> float:
    started = time.perf_counter()
    queue = iter(range(devices))

    async def worker() -> None:
        for i in queue:
            await _post(http, f"fill{i:06d}")

    async with asyncio.TaskGroup() as tg:
        for _ in range(4):
            tg.create_task(worker())
    return time.perf_counter() - started


async def _lists(http: aiohttp.ClientSession, rounds: int) -> list[float]:
    async with http.get(f"/v5/iot/{PROJECT}/devices?limit=1") as resp:
        newest = int((await resp.json())["page"]["marker"], 16)
    rng = random.Random(4)
    times = []
    for _ in range(rounds):
        marker = f"{rng.randint(101, newest + 1):024x}"
        started = time.perf_counter()
        async with http.get(f"/v5/iot/{PROJECT}/devices?limit=100&marker={marker}") as resp:
            body = await resp.read()
        times.append((time.perf_counter() - started) * 1000)
        if resp.status != 200 or len(json.loads(body)["devices"]) != 100:
            raise RuntimeError(f"list: {resp.status}")
    return times


async def _creates(http: aiohttp.ClientSession, rounds: int) -> list[float]:
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        await _post(http, f"timed{i:06d}")
        times.append((time.perf_counter() - started) * 1000)
    return times


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[94]


def _report(
    devices: int, fill_s: float, lists: list[float], creates: list[float], *, record: bool
) -> int:
    list_p95, create_p95 = _p95(lists), _p95(creates)
    ok = list_p95 < LIST_TARGET_MS and create_p95 < CREATE_TARGET_MS
    lines = [
        "",
        "| measure | median | p95 | target | |",
        "| --- | --- | --- | --- | --- |",
        (
            f"| GET devices?limit=100 ({len(lists)} pages, random markers) | "
            f"{statistics.median(lists):.2f} ms | {list_p95:.2f} ms | "
            f"< {LIST_TARGET_MS:.0f} ms p95 | "
            f"{'ok' if list_p95 < LIST_TARGET_MS else 'MISSED'} |"
        ),
        (
            f"| POST devices ({len(creates)} sequential) | {statistics.median(creates):.2f} ms | "
            f"{create_p95:.2f} ms | < {CREATE_TARGET_MS:.0f} ms p95 | "
            f"{'ok' if create_p95 < CREATE_TARGET_MS else 'MISSED'} |"
        ),
        "",
        (
            f"Registry: {devices:,} devices registered through the API before measuring "
            f"({devices / fill_s:,.0f} creates/s with 4 clients); real daemon process, HTTP on "
            "loopback, client in a second process."
        ),
    ]
    print(f"registry_api: {devices:,} devices")
    print("\n".join(lines))
    if record:
        append(f"registry_api: {devices:,} devices", lines)
    return 0 if ok else 1
