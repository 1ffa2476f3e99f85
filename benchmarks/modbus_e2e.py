"""End to end: Modbus registers polled by the real daemon, published to a loopback mosquitto.

Three processes besides this one: a pymodbus TCP simulator (`modbus_poll --serve`, values
changing every 100 ms so every reading is new), mosquitto, and `python -m gatewayd run` with
one `modbus-tcp` connection per device, every holding register its own named point. This
process subscribes to `v1/device/+/telemetry` and counts the values that reach the broker;
the latency of a record is its arrival here minus its `timestamp` (the time of the read).
The daemon's CPU and memory are read from /proc every few seconds.

The delivered rate is counted from the records' read times: for each device, the values
read within the window after its first record, over the span between its first and last
record, so the window's edges add no error; records still arriving a few seconds after the
window closes are counted.

    python -m benchmarks modbus_e2e                       # 100 x 50 every 100 ms for 60 s
    python -m benchmarks modbus_e2e --duration-s 300 --record
    python -m benchmarks modbus_e2e --ceiling             # raise the rate until it falls behind
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from benchmarks._util import cpu_of, free_port, pct, speed_reference_ms, status_kb, wait_port

ROOT = Path(__file__).resolve().parent.parent
GRACE_S = 3.0  # records read inside the window may still arrive this long after it


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks modbus_e2e")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--registers", type=int, default=50)
    parser.add_argument("--interval-s", type=float, default=0.1)
    parser.add_argument("--duration-s", "--duration", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=10.0)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--ceiling", action="store_true", help="find the highest rate kept")
    args = parser.parse_args(list(argv))
    if args.ceiling:
        return _ceiling(args)
    result = asyncio.run(
        _run(args.devices, args.registers, args.interval_s, args.duration_s, args.warmup_s)
    )
    lines = _report(result)
    print("\n".join(lines))
    if args.record:
        _append(f"modbus_e2e: {args.devices} x {args.registers} registers to MQTT", lines)
    return 0 if result["ok"] else 1


def _ceiling(args: argparse.Namespace) -> int:
    """Shorten the interval until fewer than 99.9 % of the values reach the broker."""
    lines = ["", "Ceiling search, 20 s per step (`python -m benchmarks modbus_e2e --ceiling`):", ""]
    lines += [
        "| interval | target values/s | delivered values/s | delivered | p95 latency | CPU |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    interval = args.interval_s
    best = None
    while interval >= 0.005:
        r = asyncio.run(_run(args.devices, args.registers, interval, 20.0, args.warmup_s))
        row = (
            f"| {interval * 1000:.0f} ms | {r['target']:,.0f} | {r['rate']:,.0f} | "
            f"{r['ratio'] * 100:.2f} % | {r['lat_p95'] * 1000:.0f} ms | {r['cpu']:.2f} cores |"
        )
        print(row, flush=True)
        lines.append(row)
        if r["ratio"] < 0.999:
            break
        best = r
        interval /= 1.25
    lines.append("")
    if best is not None:
        lines.append(
            f"Ceiling: {best['rate']:,.0f} values/s ({best['target'] / args.registers:,.0f} "
            f"records/s) delivered at >= 99.9 %."
        )
    print("\n".join(lines[-1:]))
    if args.record:
        _append("modbus_e2e --ceiling", lines)
    return 0


class _Counter:
    """Counts telemetry values by read time and bins their latency; memory stays flat."""

    def __init__(self) -> None:
        self.window: tuple[float, float] = (float("inf"), float("inf"))
        self.first: dict[str, tuple[float, int]] = {}  # device -> (read time, values)
        self.last: dict[str, float] = {}
        self.values: dict[str, int] = {}
        self.latency: Counter[int] = Counter()  # 1 ms bins
        self.records = 0
        self.seen_any = asyncio.Event()
        self.bad = 0

    def message(self, topic: str, payload: bytes, now: float) -> None:
        self.seen_any.set()
        try:
            body = json.loads(payload)
            read = datetime.fromisoformat(body["timestamp"]).timestamp()
            count = len(body["telemetries"])
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            return
        start, end = self.window
        if not start <= read <= end:
            return
        self.records += 1
        self.latency[int((now - read) * 1000)] += 1
        device = topic.split("/")[2]
        if device not in self.first:
            self.first[device] = (read, count)
            self.values[device] = 0
        else:
            self.values[device] += count
        self.last[device] = max(self.last.get(device, read), read)

    def rate(self) -> float:
        """Values/s: each device's values after its first record over its own span."""
        total = 0.0
        for device, (first, _) in self.first.items():
            span = self.last[device] - first
            if span > 0:
                total += self.values[device] / span
        return total


async def _run(
    devices: int, registers: int, interval: float, duration: float, warmup: float
) -> dict[str, Any]:
    import aiomqtt  # noqa: PLC0415

    sys.path.insert(0, str(ROOT))
    from tests.mqtt_broker import Broker  # noqa: PLC0415

    speed_ms = speed_reference_ms()  # before anything else runs
    with tempfile.TemporaryDirectory(prefix="gatewayd-e2e-") as tmp:
        work = Path(tmp)
        sim_port = free_port()
        sim = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.modbus_poll", "--serve", str(sim_port),
             "--devices", str(devices), "--registers", str(registers), "--changing"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        broker = Broker(work / "broker", max_inflight=100)
        daemon: subprocess.Popen[bytes] | None = None
        try:
            broker.start()
            await wait_port(sim_port)
            config = work / "gatewayd.yaml"
            config.write_text(
                yaml.safe_dump(
                    _config(
                        work,
                        broker_port=broker.port,
                        sim_port=sim_port,
                        devices=devices,
                        registers=registers,
                        interval=interval,
                    )
                )
            )
            counter = _Counter()
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-e2e") as sub:
                await sub.subscribe("v1/device/+/telemetry", qos=0)
                log = (work / "gatewayd.log").open("wb")
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "gatewayd", "run", "-c", str(config)],
                    cwd=ROOT, env=_daemon_env(), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
                log.close()
                reader = asyncio.create_task(_receive(sub, counter))
                try:
                    result = await _measure(daemon, counter, duration, warmup)
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
            errors = _log_errors(work / "gatewayd.log")
        finally:
            if daemon is not None:
                _stop(daemon)
            _stop(sim)
            broker.stop()
    target = devices * registers / interval
    rate = counter.rate()
    result.update(
        devices=devices,
        registers=registers,
        interval=interval,
        target=target,
        rate=rate,
        ratio=rate / target,
        records=counter.records,
        bad=counter.bad,
        lat_p50=pct(counter.latency, 50) / 1000,
        lat_p95=pct(counter.latency, 95) / 1000,
        lat_p99=pct(counter.latency, 99) / 1000,
        lat_max=max(counter.latency, default=0) / 1000,
        log_errors=errors,
        speed_ms=speed_ms,
    )
    result["ok"] = (
        result["ratio"] >= 0.999
        and result["lat_p95"] <= 0.1
        and result["cpu"] <= 0.5
        and result["rss_peak_mb"] <= 80
    )
    return result


async def _receive(sub: Any, counter: _Counter) -> None:
    async for message in sub.messages:
        counter.message(str(message.topic), bytes(message.payload), time.time())


async def _measure(
    daemon: subprocess.Popen[bytes], counter: _Counter, duration: float, warmup: float
) -> dict[str, Any]:
    """Warm up after the first record arrives, then sample /proc while the window runs."""
    async with asyncio.timeout(60):
        await counter.seen_any.wait()
    await asyncio.sleep(warmup)
    _check_alive(daemon)
    start = time.time()
    counter.window = (start, start + duration)
    cpu0, sys0, wall0 = cpu_of(daemon.pid), cpu_of(daemon.pid, system=True), time.monotonic()
    main0 = cpu_of(daemon.pid, thread=daemon.pid)
    samples: list[tuple[float, int]] = []  # (seconds into the window, VmRSS kB)
    while (elapsed := time.monotonic() - wall0) < duration:
        await asyncio.sleep(min(2.0, max(0.0, duration - elapsed)))
        _check_alive(daemon)
        samples.append((time.monotonic() - wall0, status_kb(daemon.pid, "VmRSS")))
    cpu, wall = cpu_of(daemon.pid) - cpu0, time.monotonic() - wall0
    system = cpu_of(daemon.pid, system=True) - sys0
    main = cpu_of(daemon.pid, thread=daemon.pid) - main0
    hwm = status_kb(daemon.pid, "VmHWM")
    await asyncio.sleep(GRACE_S)
    minute = min(60.0, duration / 2)
    first = [kb for t, kb in samples if t <= minute] or [samples[0][1]]
    last = [kb for t, kb in samples if t >= duration - minute] or [samples[-1][1]]
    return {
        "duration": wall,
        "cpu": cpu / wall,
        "cpu_system": system / wall,
        "cpu_main": main / wall,
        "rss_peak_mb": hwm / 1024,
        "rss_max_window_mb": max(kb for _, kb in samples) / 1024,
        "rss_first_mb": statistics.mean(first) / 1024,
        "rss_last_mb": statistics.mean(last) / 1024,
        "load": os.getloadavg(),
    }


def _config(
    work: Path, *, broker_port: int, sim_port: int, devices: int, registers: int, interval: float
) -> dict[str, Any]:
    points = {f"r{i}": {"address": i} for i in range(registers)}
    connections = {
        f"c{unit}": {
            "driver": "modbus-tcp",
            "host": "127.0.0.1",
            "port": sim_port,
            "timeout_s": 1.0,
            "devices": {f"m{unit}": {"unit_id": unit, "interval_s": interval, "points": points}},
        }
        for unit in range(1, devices + 1)
    }
    return {
        "gateway": {"node_id": "bench-gw"},
        "state_dir": str(work / "state"),
        "api": {"enabled": False},
        "logging": {"level": "INFO", "journal": "no"},
        "cloud": {
            "host": "127.0.0.1",
            "port": broker_port,
            "rate_limit_msg_s": 5000,
            "keepalive_s": 30,
            "connect_timeout_s": 5,
        },
        "connections": connections,
    }


def _report(r: dict[str, Any]) -> list[str]:
    load = ", ".join(f"{x:.2f}" for x in r["load"])

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    flat = abs(r["rss_last_mb"] - r["rss_first_mb"]) <= 2.0
    return [
        "",
        (
            f"Command: `python -m benchmarks modbus_e2e --duration-s {r['duration']:.0f}`; "
            f"{r['devices']} devices x {r['registers']} holding registers, each its own point, "
            f"every {r['interval'] * 1000:.0f} ms; one modbus-tcp connection per device to a "
            "pymodbus simulator in its own process; the real daemon publishing to mosquitto on "
            "loopback; subscriber in the benchmark process. "
            f"Load average at the end: {load}. Speed reference (`sum(range(10**6))`, best of "
            f"5, before the run): {r['speed_ms']:.0f} ms."
        ),
        "",
        "| measure | result | target | |",
        "| --- | ---: | ---: | --- |",
        (
            f"| values/s reaching the broker | {r['rate']:,.0f} of {r['target']:,.0f} "
            f"({r['ratio'] * 100:.2f} %) | >= 99.9 % | {verdict(r['ratio'] >= 0.999)} |"
        ),
        (
            f"| read-to-broker latency p50 / p95 / p99 / max | {r['lat_p50'] * 1000:.0f} / "
            f"{r['lat_p95'] * 1000:.0f} / {r['lat_p99'] * 1000:.0f} / {r['lat_max'] * 1000:.0f} ms "
            f"| p95 <= 100 ms | {verdict(r['lat_p95'] <= 0.1)} |"
        ),
        (
            f"| daemon CPU (of it in the kernel) | {r['cpu']:.2f} ({r['cpu_system']:.2f}) cores "
            f"| <= 0.5 | {verdict(r['cpu'] <= 0.5)} |"
        ),
        (
            f"| daemon peak RSS (VmHWM) | {r['rss_peak_mb']:.1f} MB | <= 80 MB | "
            f"{verdict(r['rss_peak_mb'] <= 80)} |"
        ),
        (
            f"| daemon RSS, first vs last minute | {r['rss_first_mb']:.1f} -> "
            f"{r['rss_last_mb']:.1f} MB | flat | {verdict(flat)} |"
        ),
        "",
        (
            f"{r['records']:,} telemetry records counted in {r['duration']:.0f} s; "
            f"{r['bad']} malformed; errors in the daemon's log: {r['log_errors']}. "
            f"CPU of the daemon's event loop thread: {r['cpu_main']:.2f} cores; the rest is "
            "its SQLite worker threads (state database, outbox)."
        ),
    ]


def _append(title: str, lines: list[str]) -> None:
    from benchmarks._record import append  # noqa: PLC0415

    append(title, lines)


def _log_errors(path: Path) -> int:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if "ERROR" in line or "Traceback" in line)


def _daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAYD_")}
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        env.pop(key, None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _check_alive(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        msg = f"gatewayd exited with {proc.returncode}"
        raise RuntimeError(msg)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
