"""Modbus polling throughput: N devices x M holding registers, each its own point.

The driver + runner half of the end-to-end benchmark: a pymodbus TCP simulator runs in a
child process (so its CPU is not counted), and this process runs one ConnectionRunner per
device (each a Modbus TCP device of its own, as on a site network) delivering readings into
a sink that records them. The broker half is added with the uplink.

Measured over the run: values/s delivered vs the configured rate, poll period per device
(p50/p95/p99 and misses), age of a reading when the sink gets it, CPU of this process
(cores), peak RSS and its trend (first vs last minute).

    python -m benchmarks modbus_poll                      # 100 x 50 every 100 ms for 60 s
    python -m benchmarks modbus_poll --duration 300 --record
    python -m benchmarks modbus_poll --ceiling            # raise the rate until it falls behind
    python -m benchmarks modbus_poll --faults             # a slow device, a dead unit on a bus

`--faults` measures, in this process against in-process simulators, what the Modbus tests
only count: a device slower than its interval is polled back to back (one owed poll at once,
not the next free tick: at most 1.3125 x the reply time per poll), and with one unit of five
silent on a shared RTU line (behind a TCP converter) the live units keep >= 90 % of their
poll rate over the window.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._util import cpu_of, free_port, pct, wait_port

ROOT = Path(__file__).resolve().parent.parent


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks modbus_poll")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--registers", type=int, default=50)
    parser.add_argument("--interval-s", type=float, default=0.1)
    parser.add_argument("--duration-s", "--duration", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--ceiling", action="store_true", help="find the highest rate kept")
    parser.add_argument("--faults", action="store_true", help="slow device, dead unit")
    parser.add_argument("--window-s", type=float, default=4.0, help="dead-unit window")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--changing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv))
    if args.serve is not None:
        asyncio.run(_serve(args.serve, args.devices, args.registers, changing=args.changing))
        return 0
    if args.ceiling:
        return _ceiling(args)
    if args.faults:
        faults = asyncio.run(_faults(args.window_s))
        text = _header() + _faults_report(faults)
        print(text)
        if args.record:
            _record(text)
        return 0 if faults["ok"] else 1
    result = asyncio.run(_run(args.devices, args.registers, args.interval_s, args.duration_s,
                              args.warmup_s))  # fmt: skip
    text = _report(result)
    print(text)
    if args.record:
        _record(text)
    return 0


def _ceiling(args: argparse.Namespace) -> int:
    """Shorten the interval until fewer than 99.9 % of the values arrive."""
    lines = []
    interval = args.interval_s
    while interval >= 0.005:
        r = asyncio.run(_run(args.devices, args.registers, interval, 20.0, args.warmup_s))
        line = (
            f"interval {interval * 1000:.0f} ms: target {r['target']:.0f} values/s, "
            f"got {r['rate']:.0f} ({r['ratio'] * 100:.2f} %), CPU {r['cpu']:.2f} cores"
        )
        print(line, flush=True)
        lines.append(f"- {line}")
        if r["ratio"] < 0.999:
            break
        interval /= 1.5
    text = "Ceiling search (20 s per step):\n\n" + "\n".join(lines)
    if args.record:
        _record(_header() + text + "\n")
    return 0


async def _serve(port: int, devices: int, registers: int, *, changing: bool = False) -> None:
    """Serve `devices` units of `registers` holding registers each.

    With `changing`, register k of unit u reads `(u * registers + k + t) % 65536`, t counting
    tenths of a second: every register is distinct and every 100 ms poll sees new values.
    """
    from pymodbus.server import ModbusTcpServer  # noqa: PLC0415
    from pymodbus.simulator import DataType, SimData, SimDevice  # noqa: PLC0415

    def action(unit: int) -> Any:
        async def tick(  # noqa: PLR0917 - pymodbus's action signature
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            current_registers: list[int],
            set_values: Any,
        ) -> None:
            del function_code, address, count, set_values
            base = unit * registers + start_address + int(time.monotonic() * 10)
            for k in range(len(current_registers)):
                current_registers[k] = (base + k) % 65536

        return tick

    sims = [
        SimDevice(
            id=unit,
            simdata=[SimData(0, values=list(range(registers)), datatype=DataType.REGISTERS)],
            action=action(unit) if changing else None,
        )
        for unit in range(1, devices + 1)
    ]
    server = ModbusTcpServer(sims, address=("127.0.0.1", port))
    await server.serve_forever()


class _Sink:
    """Counts values and records ages and per-device poll periods."""

    def __init__(self) -> None:
        self.values = 0
        self.ages: Counter[int] = Counter()  # 10 us bins: memory stays flat
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.polls: dict[str, int] = {}
        self.size: dict[str, int] = {}
        self.periods: Counter[int] = Counter()  # 1 ms bins
        self.measuring = False

    def rate(self) -> float:
        """Values/s from each device's own first and last poll in the window (no edge error)."""
        total = 0.0
        for conn, first in self.first.items():
            span = self.last[conn] - first
            if span > 0:
                total += (self.polls[conn] - 1) * self.size[conn] / span
        return total

    async def readings(self, connection: str, device: str, batch: Sequence[Any]) -> None:
        now = time.monotonic()
        if not self.measuring:
            return
        self.values += len(batch)
        if batch:
            at = batch.at[0] if hasattr(batch, "at") else batch[0].at  # columns, or Readings
            self.ages[int((datetime.now(UTC) - at).total_seconds() * 1e5)] += 1
        prev = self.last.get(connection)
        if prev is not None:
            self.periods[int((now - prev) * 1000)] += 1
        else:
            self.first[connection] = now
            self.size[connection] = len(batch)
        self.last[connection] = now
        self.polls[connection] = self.polls.get(connection, 0) + 1
        del device

    async def availability(self, connection: str, device: str, state: Any, reason: str) -> None:
        up = state == "ONLINE"
        if not up:
            print(f"{connection}/{device} down: {reason}", file=sys.stderr)


async def _run(
    devices: int, registers: int, interval: float, duration: float, warmup: float
) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from drivers.modbus import ModbusDriver, ModbusTcpConnection  # noqa: PLC0415
    from gatewayd.bridge.runner import ConnectionRunner  # noqa: PLC0415
    from gatewayd.health import Health  # noqa: PLC0415

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.modbus_poll", "--serve", str(port),
         "--devices", str(devices), "--registers", str(registers)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    sink = _Sink()
    health = Health()
    try:
        await wait_port(port)
        points = {f"r{i}": {"address": i} for i in range(registers)}
        runners = []
        for unit in range(1, devices + 1):
            conn = ModbusTcpConnection.model_validate(
                {
                    "driver": "modbus-tcp",
                    "host": "127.0.0.1",
                    "port": port,
                    "timeout_s": 1.0,
                    "devices": {
                        f"m{unit}": {"unit_id": unit, "interval_s": interval, "points": points}
                    },
                }
            )
            runners.append(
                ConnectionRunner(
                    f"c{unit}", conn, ModbusDriver(conn), sink, health.component(f"c{unit}")
                )
            )
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(r.run(), name=r.id) for r in runners]
            await asyncio.sleep(warmup)
            sink.measuring = True
            cpu0, wall0 = time.process_time(), time.monotonic()
            sim0 = cpu_of(server.pid)
            rss: list[int] = []
            while time.monotonic() - wall0 < duration:
                await asyncio.sleep(1.0)
                rss.append(_rss_kb())
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            sim_cpu = cpu_of(server.pid) - sim0
            sink.measuring = False
            for task in tasks:
                task.cancel()
    finally:
        server.terminate()
        server.wait(10)
    target = devices * registers / interval
    minute = max(1, min(60, len(rss) // 2))
    return {
        "devices": devices,
        "registers": registers,
        "interval": interval,
        "duration": wall,
        "target": target,
        "rate": sink.rate(),
        "ratio": sink.rate() / target,
        "period_p50": pct(sink.periods, 50) / 1000,
        "period_p95": pct(sink.periods, 95) / 1000,
        "period_p99": pct(sink.periods, 99) / 1000,
        "late": sum(n for ms, n in sink.periods.items() if ms > interval * 1500)
        / max(1, sum(sink.periods.values())),
        "age_p95": pct(sink.ages, 95) / 1e5,
        "cpu": cpu / wall,
        "sim_cpu": sim_cpu / wall,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_first_mb": statistics.mean(rss[:minute]) / 1024,
        "rss_last_mb": statistics.mean(rss[-minute:]) / 1024,
        "skipped": sum(r.polls_skipped for r in runners),
    }


def _report(r: dict[str, Any]) -> str:
    return _header() + (
        f"Modbus poll, driver + runner: {r['devices']} devices x {r['registers']} holding "
        f"registers (each its own point) every {r['interval'] * 1000:.0f} ms, "
        f"{r['duration']:.0f} s, one TCP connection per device, simulator in another process.\n\n"
        f"| metric | value |\n| --- | --- |\n"
        f"| values/s delivered (target {r['target']:.0f}) | {r['rate']:.0f} "
        f"({r['ratio'] * 100:.2f} %) |\n"
        f"| poll period p50 / p95 / p99 | {r['period_p50'] * 1000:.1f} / "
        f"{r['period_p95'] * 1000:.1f} / {r['period_p99'] * 1000:.1f} ms |\n"
        f"| polls later than 1.5 x interval | {r['late'] * 100:.2f} % "
        f"({r['skipped']} skipped) |\n"
        f"| reading age at the sink, p95 | {r['age_p95'] * 1000:.2f} ms |\n"
        f"| CPU of the gateway process | {r['cpu']:.2f} cores |\n"
        f"| CPU of the simulator process | {r['sim_cpu']:.2f} cores |\n"
        f"| peak RSS | {r['rss_peak_mb']:.1f} MB |\n"
        f"| RSS first vs last minute | {r['rss_first_mb']:.1f} -> {r['rss_last_mb']:.1f} MB |\n"
    )


SLOW_REPLY_S, SLOW_INTERVAL_S, SLOW_POLLS = 0.2, 0.1, 20
BACK_TO_BACK = 1.3125  # per poll, in reply times: 8 polls of 0.2 s within 2.1 s


async def _faults(window_s: float) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.drivers.modbus.harness import CountingSink, connection, running  # noqa: PLC0415
    from tests.drivers.modbus.sim import Requests, split_device, tcp_server  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    logging.disable(logging.WARNING)  # the silent unit's timeouts are the point, not news

    # A device slower than its interval.
    port, requests = free_port(), Requests()

    async def slow(*_: object) -> None:
        await asyncio.sleep(SLOW_REPLY_S)

    device = split_device(1, requests)
    device.action = slow
    sink = CountingSink()
    stamps: list[float] = []
    counted = sink.readings

    async def stamped(conn: str, dev: str, batch: Any) -> None:
        stamps.append(loop.time())
        await counted(conn, dev, batch)

    sink.readings = stamped  # type: ignore[method-assign]
    config = connection({"driver": "modbus-tcp", "host": "127.0.0.1", "port": port, "devices": {
        "m": {"interval_s": SLOW_INTERVAL_S, "points": {"v": {"address": 0}}}}})  # fmt: skip
    async with tcp_server([device], port), running(config, sink) as runner:
        async with asyncio.timeout(60):
            while len(stamps) < SLOW_POLLS + 1:
                await asyncio.sleep(0.05)
        skipped = runner.polls_skipped
    periods = [b - a for a, b in itertools.pairwise(stamps[1:])]  # from the first owed poll
    per_poll = statistics.mean(periods)

    # Five units behind one RTU converter, one of them silent.
    port, requests = free_port(), Requests()
    requests.silent.add(5)
    interval = 0.25
    devices: dict[str, Any] = {"conv": {}}
    devices.update({f"u{u}": {"parent": "conv", "unit_id": u, "interval_s": interval,
                              "points": {"v": {"address": 0}}} for u in range(1, 6)})  # fmt: skip
    config = connection({"driver": "modbus-rtu-tcp", "host": "127.0.0.1", "port": port,
                         "timeout_s": 0.1, "retries": 1, "breaker_failures": 2,
                         "breaker_initial_s": 1.0, "breaker_max_s": 4.0,
                         "devices": devices})  # fmt: skip
    sink = CountingSink()
    units = [split_device(u, requests) for u in range(1, 6)]
    async with tcp_server(units, port, requests, rtu=True), running(config, sink):
        async with asyncio.timeout(30):
            while not all(sink.batches.get(f"u{u}") for u in range(1, 5)):
                await asyncio.sleep(0.05)
        before = {u: sink.batches[f"u{u}"] for u in range(1, 5)}
        dead_before, start = requests.count(5), loop.time()
        await asyncio.sleep(window_s)  # the measurement window itself
        got = {u: sink.batches[f"u{u}"] - before[u] for u in range(1, 5)}
        window = loop.time() - start
        dead = requests.count(5) - dead_before
    kept = min(got.values()) / (window / interval)
    return {
        "ok": per_poll <= BACK_TO_BACK * SLOW_REPLY_S and kept >= 0.9,
        "per_poll": per_poll,
        "max_period": max(periods),
        "skipped": skipped,
        "kept": kept,
        "window": window,
        "dead": dead,
        "live": got,
    }


def _faults_report(r: dict[str, Any]) -> str:
    live = ", ".join(f"u{u} {n}" for u, n in sorted(r["live"].items()))
    return (
        f"Modbus faults (driver + runner, simulators in this process): a device answering in "
        f"{SLOW_REPLY_S * 1000:.0f} ms polled every {SLOW_INTERVAL_S * 1000:.0f} ms, "
        f"{SLOW_POLLS} polls; 5 units every 250 ms behind one RTU converter, unit 5 silent "
        f"(timeout 100 ms, 1 retry, breaker 2 failures, 1-4 s), {r['window']:.1f} s.\n\n"
        f"| metric | value | target |\n| --- | --- | --- |\n"
        f"| slow device: time per poll, mean (max) | {r['per_poll'] * 1000:.0f} "
        f"({r['max_period'] * 1000:.0f}) ms | <= {BACK_TO_BACK * SLOW_REPLY_S * 1000:.0f} ms |\n"
        f"| slow device: ticks skipped | {r['skipped']} | > 0 |\n"
        f"| dead unit: live units' polls kept (least) | {r['kept'] * 100:.1f} % ({live}) "
        f"| >= 90 % |\n"
        f"| dead unit: its requests in the window | {r['dead']} | (2 per tick without the "
        f"breaker) |\n"
    )


def _header() -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"\n### modbus_poll, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}.\n\n"
    )


def _record(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    if not path.exists():
        path.write_text(
            "# Benchmarks\n\nResults appended by `python -m benchmarks NAME --record`; "
            "the newest are last.\n"
        )
    with path.open("a") as f:
        f.write(text)


def _rss_kb() -> int:
    with open("/proc/self/status") as f:  # noqa: PTH123
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
