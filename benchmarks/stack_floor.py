"""The libraries' own CPU at the Modbus end-to-end workload, with none of gatewayd's code.

`modbus_e2e` measures the daemon at 100 devices x 50 registers every 100 ms: 1,000 Modbus
requests, 1,000 durable records and 1,000 QoS 1 publishes a second. This benchmark measures
what the chosen libraries alone cost for the same traffic, each in a fresh process on
uvloop (as the daemon runs), so the daemon's figure can be split into the floor the stack
sets and the part our code adds:

- modbus: 100 pymodbus TCP clients, each reading 50 holding registers every 100 ms from the
  simulator of `modbus_poll` in its own process; the registers are taken as a list.
- mqtt: 1,000 publishes/s of a 1,100-byte payload at QoS 1 through paho under aiomqtt (as
  the daemon publishes) to a loopback mosquitto, at most 100 in flight, each PUBACK awaited.
- sqlite: 1,000 records/s of 1,100 bytes inserted into a WAL file (synchronous=NORMAL) from
  a worker thread, three per transaction, and deleted again 100 ms later, as the outbox does.

    python -m benchmarks stack_floor                  # 20 s per part
    python -m benchmarks stack_floor --record
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._util import free_port, speed_reference_ms, wait_port

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"x" * 1100
PARTS = ("modbus", "mqtt", "sqlite")


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks stack_floor")
    parser.add_argument("--duration-s", "--duration", type=float, default=20.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # the child's side
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv))
    if args.part is not None:
        print(json.dumps(_child(args.part, args.port, args.duration_s, args.warmup_s)))
        return 0
    speed = speed_reference_ms()
    results = {part: _measure(part, args.duration_s, args.warmup_s) for part in PARTS}
    lines = _report(results, speed, args.duration_s)
    print("\n".join(lines))
    if args.record:
        from benchmarks._record import append  # noqa: PLC0415

        append("stack_floor: the libraries alone at the modbus_e2e workload", lines)
    return 0


def _measure(part: str, duration: float, warmup: float) -> dict[str, Any]:
    """Run one part in a child process next to the peer it needs; returns its numbers."""
    with tempfile.TemporaryDirectory(prefix="gatewayd-floor-") as tmp:
        peer: subprocess.Popen[bytes] | None = None
        broker = None
        port = 0
        try:
            if part == "modbus":
                port = free_port()
                peer = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.modbus_poll", "--serve", str(port),
                     "--devices", "100", "--registers", "50", "--changing"],
                    cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                asyncio.run(wait_port(port))
            elif part == "mqtt":
                sys.path.insert(0, str(ROOT))
                from tests.mqtt_broker import Broker  # noqa: PLC0415

                broker = Broker(Path(tmp) / "broker", max_inflight=100)
                broker.start()
                port = broker.port
            else:
                port = 0
            env = {**os.environ, "TMPDIR": tmp}
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks", "stack_floor", "--part", part,
                 "--port", str(port), "--duration-s", str(duration),
                 "--warmup-s", str(warmup)],
                cwd=ROOT, env=env, capture_output=True, check=True, timeout=duration * 4 + 60,
            )  # fmt: skip
            result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
            return result
        finally:
            if peer is not None:
                peer.terminate()
                peer.wait(timeout=10)
            if broker is not None:
                broker.stop()


def _child(part: str, port: int, duration: float, warmup: float) -> dict[str, Any]:
    import uvloop  # noqa: PLC0415

    work = {"modbus": _modbus, "mqtt": _mqtt, "sqlite": _sqlite}[part]
    result: dict[str, Any] = uvloop.run(_window(work, port, duration, warmup))
    return result


async def _window(work: Any, port: int, duration: float, warmup: float) -> dict[str, Any]:
    """Run `work` for warmup + duration; CPU of this process and operations in the window."""
    counter = [0]
    task = asyncio.create_task(work(port, counter))
    try:
        await asyncio.sleep(warmup)
        cpu0, wall0, n0 = time.process_time(), time.monotonic(), counter[0]
        await asyncio.sleep(duration)
        cpu1, wall1, n1 = time.process_time(), time.monotonic(), counter[0]
    finally:
        task.cancel()
        # pymodbus may swallow a cancellation (Python 3.11's wait_for): don't wait forever
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 5)
    return {"cpu": (cpu1 - cpu0) / (wall1 - wall0), "rate": (n1 - n0) / (wall1 - wall0)}


async def _modbus(port: int, counter: list[int]) -> None:
    from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415

    async def device(unit: int) -> None:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        await client.connect()
        loop = asyncio.get_running_loop()
        due = loop.time() + unit / 1000
        try:
            while True:
                reply = await client.read_holding_registers(0, count=50, device_id=unit)
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise asyncio.CancelledError  # pymodbus swallowed it
                values = list(reply.registers)
                counter[0] += len(values) // 50
                due += 0.1
                await asyncio.sleep(max(0.0, due - loop.time()))
        finally:
            client.close()

    async with asyncio.TaskGroup() as tg:
        for unit in range(1, 101):
            tg.create_task(device(unit))


async def _mqtt(port: int, counter: list[int]) -> None:
    """Publish through the paho client under aiomqtt, one future per message id, as the
    daemon's publish seam does (aiomqtt's own `publish()` costs more per message)."""
    import aiomqtt  # noqa: PLC0415

    slots = asyncio.Semaphore(100)
    loop = asyncio.get_running_loop()
    waiting: dict[int, asyncio.Future[None]] = {}
    client = aiomqtt.Client("127.0.0.1", port, identifier="floor")
    paho = client._client  # noqa: SLF001 - the same seam the daemon publishes through

    def on_publish(c: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        del c, userdata, rc, props
        future = waiting.pop(mid, None)
        if future is not None:
            future.set_result(None)

    def settled(_: asyncio.Future[None]) -> None:
        counter[0] += 1
        slots.release()

    paho.on_publish = on_publish
    async with client:
        due = loop.time()
        while True:  # 10 publishes every 10 ms
            for i in range(10):
                await slots.acquire()
                info = paho.publish(f"v1/device/d{i}/telemetry", PAYLOAD, qos=1)
                future = loop.create_future()
                future.add_done_callback(settled)
                waiting[info.mid] = future
            due += 0.01
            await asyncio.sleep(max(0.0, due - loop.time()))


async def _sqlite(port: int, counter: list[int]) -> None:
    del port
    path = Path(tempfile.gettempdir()) / "floor.db"
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE records (id INTEGER PRIMARY KEY, record_id TEXT, device TEXT, "
        "kind TEXT, payload BLOB, created REAL)"
    )
    conn.execute("CREATE INDEX records_device ON records (device, id)")
    acked: list[int] = []
    sequence = 0

    def commit(rows: list[tuple[str, str, str, bytes, float]], gone: list[int]) -> int:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO records (record_id, device, kind, payload, created) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
        if gone:
            marks = ",".join("?" * len(gone))
            conn.execute(f"DELETE FROM records WHERE id IN ({marks})", gone)
        conn.execute("COMMIT")
        return last

    loop = asyncio.get_running_loop()
    due = loop.time()
    try:
        while True:  # three records every 3 ms; each deleted 100 ms later
            rows = [(f"1-{sequence + i}", f"d{(sequence + i) % 100}", "telemetry", PAYLOAD,
                     time.time()) for i in range(3)]  # fmt: skip
            sequence += 3
            gone = acked[:3] if len(acked) > 100 else []
            del acked[: len(gone)]
            last = await loop.run_in_executor(None, commit, rows, gone)
            acked.extend(range(last - 2, last + 1))
            counter[0] += 3
            due += 0.003
            await asyncio.sleep(max(0.0, due - loop.time()))
    finally:
        conn.close()


def _report(results: dict[str, dict[str, Any]], speed: float, duration: float) -> list[str]:
    total = sum(r["cpu"] for r in results.values())
    what = {
        "modbus": "Modbus TCP reads of 50 registers (pymodbus)",
        "mqtt": "QoS 1 publishes of 1,100 bytes, PUBACK awaited (paho under aiomqtt)",
        "sqlite": "records inserted and deleted, 3 per transaction (sqlite3, WAL)",
    }
    lines = [
        "",
        (
            f"Command: `python -m benchmarks stack_floor --duration-s {duration:.0f}`; each "
            "part in its own process on uvloop, its peer in another. Speed reference "
            f"(`sum(range(10**6))`, best of 5): {speed:.0f} ms."
        ),
        "",
        "| part | operations/s | CPU |",
        "| --- | ---: | ---: |",
    ]
    for part, r in results.items():
        lines.append(f"| {what[part]} | {r['rate']:,.0f} | {r['cpu']:.2f} cores |")
    lines.append(f"| all three (sum) | | {total:.2f} cores |")
    return lines
