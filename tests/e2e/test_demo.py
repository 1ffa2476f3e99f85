"""`gatewayd demo` as a person runs it: broker, simulated meter, daemon; then Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
import urllib.request
from queue import Empty, Queue

from tests.helpers import gatewayd

METER = "demo-meter_energy-meter"
TOKEN = "demo-admin-token"


def _lines(stream, queue: Queue) -> None:
    for line in stream:
        queue.put(line)


def _call(url: str, method: str = "GET", body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "X-Auth-Token": TOKEN, "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.load(resp)


def test_demo_meter_reaches_the_broker_and_a_desired_limit_lands(tmp_path):
    proc = gatewayd("demo", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: Queue[str] = Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    seen = ""
    try:
        deadline = time.monotonic() + 30
        while "Modbus simulator:" not in seen:
            try:
                seen += lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except Empty:
                raise AssertionError(f"the demo did not start:\n{seen}") from None
        broker = re.search(r"mosquitto_sub -h 127.0.0.1 -p (\d+)", seen)
        api = re.search(r"curl (http://127.0.0.1:\d+)/healthz", seen)
        assert broker, seen
        assert api, seen

        telemetry = subprocess.run(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                broker.group(1),
                "-C",
                "1",
                "-W",
                "15",
                "-t",
                f"v1/device/{METER}/telemetry",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        values = json.loads(telemetry.stdout)["telemetries"]
        assert values["voltage"] == 230.1

        shadow = f"{api.group(1)}/v5/iot/local/devices/{METER}/shadow"
        limit = {"shadow": [{"service_id": "Meter", "desired": {"power_limit": 3500}}]}
        _call(shadow, "PUT", limit)
        deadline = time.monotonic() + 15
        while _call(shadow)["shadow"][0]["reported"]["properties"].get("power_limit") != 3500:
            assert time.monotonic() < deadline, "the power limit was not reported"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
        proc.stdout.close()
    assert code == 0
