"""Soak: the real daemon under load for an hour, through broker outages, RSS flat, zero loss.

The daemon polls 10 memory devices every 10 ms (1,000 telemetry records/s); each device's
`seq` point counts 0, 1, 2, ... so the counter here can tell a lost record from a late one.
mosquitto (persistent) is stopped for `--outage-s` every `--outage-every-s`, so the outbox
fills and drains again and again. The counter is a persistent MQTT 5 session (QoS 1), so what
the broker accepted while it was away is delivered when it returns.

At the end the daemon is stopped (it commits what it holds), started again without producing
until its outbox is empty, and a marker published after that proves that everything the
broker acknowledged has reached the counter. Zero loss: every device's sequence is complete
from 0 to its highest value. RSS flat: the daemon's RSS in the same state each time, with the
link up and the outbox drained (just before each outage, and at the end), grows by at most
10 % (or 8 MB) from the second such sample to the last; the first outage is what sizes the
in-memory tail of the outbox and SQLite's page cache, once. Through each outage: records
appended per second while the broker is away (target: at least 80 % of the production rate),
and the time from the broker's return to the first telemetry the counter gets (target: under
2 s, the counter's own reconnect included).

    python -m benchmarks soak                           # one hour
    python -m benchmarks soak --duration-s 300 --outage-every-s 60 --outage-s 15 --record
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._util import cpu_of, free_port, speed_reference_ms, status_kb

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "v1/device/"


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks soak")
    parser.add_argument("--duration-s", type=float, default=3600.0)
    parser.add_argument("--outage-every-s", type=float, default=300.0)
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--interval-s", type=float, default=0.01, help="poll interval, 10 devices")
    parser.add_argument("--warmup-s", type=float, default=10.0)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args(list(argv))
    result = asyncio.run(_run(args))
    lines = _report(args, result)
    print("\n".join(lines))
    if args.record:
        from benchmarks._record import append  # noqa: PLC0415

        append(f"soak: {args.duration_s / 60:g} minutes with broker outages", lines)
    return 0 if result["ok"] else 1


class _Counter:
    """Per device: which `seq` values arrived (a bitmap) and how often one came again."""

    def __init__(self) -> None:
        self.seen: dict[str, bytearray] = {}
        self.arrivals = 0
        self.duplicates = 0
        self.markers: set[str] = set()
        self.connects = 0
        self.back: float | None = None  # when the broker came back
        self.first_after: float | None = None  # the first telemetry after that

    def message(self, topic: str, payload: bytes) -> None:
        device, _, kind = topic[len(PREFIX) :].partition("/")
        if kind == "cloud_settings/update":
            self.markers.add(device)
            return
        if kind != "telemetry":
            return
        seq_value = json.loads(payload)["telemetries"].get("seq")
        if seq_value is None:  # the gateway's own report
            return
        seq = int(seq_value)
        if self.back is not None and self.first_after is None:
            self.first_after = time.monotonic()
        bits = self.seen.setdefault(device, bytearray())
        if seq // 8 >= len(bits):
            bits.extend(bytes(seq // 8 + 1 - len(bits) + 4096))
        self.arrivals += 1
        mask = 1 << (seq % 8)
        if bits[seq // 8] & mask:
            self.duplicates += 1
        bits[seq // 8] |= mask

    def gaps(self) -> dict[str, tuple[int, int]]:
        """Per device: (values delivered, highest value + 1)."""
        out = {}
        for device, bits in self.seen.items():
            ones = sum(b.bit_count() for b in bits)
            top = max((i * 8 + b.bit_length() for i, b in enumerate(bits) if b), default=0)
            out[device] = (ones, top)
        return out


async def _subscribe(port: int, counter: _Counter) -> None:
    import aiomqtt  # noqa: PLC0415
    from paho.mqtt.packettypes import PacketTypes  # noqa: PLC0415
    from paho.mqtt.properties import Properties  # noqa: PLC0415

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 7200
    while True:
        try:
            client = aiomqtt.Client(
                "127.0.0.1",
                port,
                identifier="soak-counter",
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=props,
                timeout=5,
            )
            async with client:
                await client.subscribe(f"{PREFIX}#", qos=1)
                counter.connects += 1
                async for message in client.messages:
                    counter.message(message.topic.value, bytes(message.payload))  # type: ignore[arg-type]
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


class _Outages:
    """Per outage: records appended per second while the broker is away, and how soon the
    counter gets telemetry once it is back."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.returns: list[float] = []
        self._down: tuple[float, int] | None = None

    async def down(self, daemon: Any) -> None:
        self._down = (time.monotonic(), await _records(daemon))

    async def up(self, daemon: Any) -> None:
        if self._down is not None:
            at, records = self._down
            self.rates.append((await _records(daemon) - records) / (time.monotonic() - at))
            self._down = None

    def returned(self, counter: _Counter) -> None:
        if counter.back is not None and counter.first_after is not None:
            self.returns.append(counter.first_after - counter.back)
            counter.back = counter.first_after = None


async def _records(daemon: Any) -> int:
    """Records in the daemon's outbox (while the broker is away, only ever growing)."""
    stats = await asyncio.to_thread(daemon.get, "/v1/outbox/stats")
    return int(stats["records"])


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    import aiomqtt  # noqa: PLC0415

    sys.path.insert(0, str(ROOT))
    from tests.fault.daemon_setup import Daemon  # noqa: PLC0415
    from tests.fault.loss import config  # noqa: PLC0415
    from tests.mqtt_broker import Broker  # noqa: PLC0415

    speed_ms = speed_reference_ms()
    counter = _Counter()
    rss: list[tuple[float, int]] = []
    steady: list[tuple[float, int]] = []  # link up, outbox drained: before each outage, at the end
    outages = 0
    seen = _Outages()
    with tempfile.TemporaryDirectory(prefix="gatewayd-soak-") as tmp:
        work = Path(tmp)
        broker = Broker(work / "broker", persistence=True)
        broker.start()
        api = free_port()
        daemon = Daemon(
            config(work, broker.port, api, interval_s=args.interval_s), api, work / "daemon.log"
        )
        reader = asyncio.create_task(_subscribe(broker.port, counter))
        try:
            while counter.connects == 0:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(daemon.start)
            assert daemon.proc is not None
            pid = daemon.proc.pid
            start = time.monotonic()
            cpu0 = cpu_of(pid)
            next_outage = start + args.outage_every_s
            while (now := time.monotonic()) < start + args.duration_s:
                if daemon.proc.poll() is not None:
                    msg = f"gatewayd exited with {daemon.proc.returncode}"
                    raise RuntimeError(msg)
                rss.append((now - start, status_kb(pid, "VmRSS")))
                seen.returned(counter)
                if broker.running and now >= next_outage:
                    steady.append(rss[-1])
                    broker.stop()
                    await seen.down(daemon)
                    outages += 1
                elif not broker.running and now >= next_outage + args.outage_s:
                    await seen.up(daemon)
                    broker.start()
                    counter.back, counter.first_after = time.monotonic(), None
                    next_outage += args.outage_every_s
                await asyncio.sleep(min(5.0, args.outage_s / 3))
            if not broker.running:
                broker.start()
            else:
                steady.append((time.monotonic() - start, status_kb(pid, "VmRSS")))
            elapsed = time.monotonic() - start
            cpu = (cpu_of(pid) - cpu0) / elapsed
            peak = status_kb(pid, "VmHWM")
            await asyncio.to_thread(daemon.stop)
            # Drain: the same state dir, nothing produced, until the outbox is empty.
            api2 = free_port()
            drain = Daemon(
                config(work, broker.port, api2, producing=False, name="drain"),
                api2,
                work / "drain.log",
            )
            await asyncio.to_thread(drain.start)
            try:
                async with asyncio.timeout(600):
                    while (await asyncio.to_thread(drain.get, "/v1/outbox/stats"))["records"]:
                        await asyncio.sleep(0.5)
                stats = await asyncio.to_thread(drain.get, "/v1/outbox/stats")
            finally:
                await asyncio.to_thread(drain.stop)
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="soak-marker") as pub:
                await pub.publish(f"{PREFIX}marker/cloud_settings/update", b"{}", qos=1)
            async with asyncio.timeout(600):
                while "marker" not in counter.markers:
                    await asyncio.sleep(0.2)
            errors = [
                line
                for line in (work / "daemon.log").read_text(errors="replace").splitlines()
                if " ERROR " in line or "Traceback" in line
            ]
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            daemon.stop()
            broker.stop()
    lanes = counter.gaps()
    sent = sum(top for _, top in lanes.values())
    delivered = sum(ones for ones, _ in lanes.values())
    warm = [kb for t, kb in rss if args.warmup_s <= t <= args.warmup_s + 60]
    last = [kb for t, kb in rss if t >= rss[-1][0] - 60]
    first_mb = statistics.median(warm or [rss[0][1]]) / 1024
    last_mb = statistics.median(last) / 1024
    base, end = (steady[1][1], steady[-1][1]) if len(steady) >= 3 else (warm[0], last[-1])
    flat = end <= max(base * 1.10, base + 8 * 1024)
    seen.returned(counter)
    outage_rates, returns = seen.rates, seen.returns
    rate_ok = all(r >= 0.8 * 10 / args.interval_s for r in outage_rates)
    returns_ok = all(r < 2.0 for r in returns)
    return {
        "ok": sent == delivered
        and len(lanes) == 10
        and flat
        and not stats["drops"]
        and rate_ok
        and returns_ok,
        "outage_rates": outage_rates,
        "rate_ok": rate_ok,
        "returns": returns,
        "returns_ok": returns_ok,
        "sent": sent,
        "delivered": delivered,
        "lost": sent - delivered,
        "duplicated": counter.duplicates,
        "devices": len(lanes),
        "outages": outages,
        "drops": stats["drops"],
        "dead_letters": stats["dead_letters"],
        "rss_first_mb": first_mb,
        "rss_last_mb": last_mb,
        "rss_max_mb": max(kb for _, kb in rss) / 1024,
        "rss_peak_mb": peak / 1024,
        "flat": flat,
        "steady": [(round(t), round(kb / 1024, 1)) for t, kb in steady],
        "cpu": cpu,
        "errors": errors,
        "speed_ms": speed_ms,
        "elapsed": elapsed,
    }


def _report(args: argparse.Namespace, r: dict[str, Any]) -> list[str]:
    def verdict(ok: bool) -> str:
        return "ok" if ok else "FAILED"

    rate = 10 / args.interval_s
    return [
        "",
        (
            f"Command: `python -m benchmarks soak --duration-s {args.duration_s:g} "
            f"--outage-every-s {args.outage_every_s:g} --outage-s {args.outage_s:g}`; 10 memory "
            f"devices every {args.interval_s * 1000:g} ms ({rate:,.0f} records/s), the real "
            f"daemon, a persistent mosquitto stopped for {args.outage_s:g} s every "
            f"{args.outage_every_s:g} s ({r['outages']} outages), a persistent QoS 1 subscriber "
            f"counting each device's sequence. Speed reference: {r['speed_ms']:.0f} ms."
        ),
        "",
        "| measure | result | target | |",
        "| --- | ---: | ---: | --- |",
        (
            f"| records sent / delivered / lost | {r['sent']:,} / {r['delivered']:,} / {r['lost']} "
            f"| 0 lost | {verdict(r['lost'] == 0 and r['devices'] == 10)} |"
        ),
        f"| duplicates delivered | {r['duplicated']:,} | (at-least-once) | |",
        (
            f"| outbox drops / dead letters | {r['drops'] or 0} / {r['dead_letters']} | 0 | "
            f"{verdict(not r['drops'])} |"
        ),
        (
            "| daemon RSS with the link up and the outbox drained, by time | "
            + ", ".join(f"{t} s: {mb:.1f}" for t, mb in r["steady"])
            + f" MB | second to last <= +10 % | {verdict(r['flat'])} |"
        ),
        (
            f"| daemon RSS, first vs last minute (median) | {r['rss_first_mb']:.1f} -> "
            f"{r['rss_last_mb']:.1f} MB | | |"
        ),
        (
            f"| daemon RSS max sampled / peak (VmHWM) | {r['rss_max_mb']:.1f} / "
            f"{r['rss_peak_mb']:.1f} MB | | |"
        ),
        (
            "| records appended per second during each outage | "
            + (", ".join(f"{x:,.0f}" for x in r["outage_rates"]) or "-")
            + f" | >= {0.8 * rate:,.0f} | {verdict(r['rate_ok'])} |"
        ),
        (
            "| broker back -> first telemetry at the counter, each outage | "
            + (", ".join(f"{x:.2f}" for x in r["returns"]) or "-")
            + f" s | < 2 s | {verdict(r['returns_ok'])} |"
        ),
        f"| daemon CPU | {r['cpu']:.2f} cores | | |",
        f"| errors in the daemon's log | {len(r['errors'])} | | |",
        *(["", "Error lines (the first five):", ""] if r["errors"] else []),
        *(f"    {line}" for line in r["errors"][:5]),
    ]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
