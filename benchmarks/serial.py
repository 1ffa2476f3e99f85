"""Serial driver throughput: framing and parsing per frame, and request/response over a pty.

Run: `python -m benchmarks.serial` (needs socat). Prints one Markdown table row per figure.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import subprocess
import tempfile
import time
import tty
from datetime import UTC, datetime
from pathlib import Path

from drivers.serial import SerialConnection, SerialDriver
from drivers.serial.framing import LineFraming, make_framer
from drivers.serial.nmea import parse_sentence, sentence_checksum

GGA = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
SENTENCE = f"${GGA}*{sentence_checksum(GGA)}\r\n".encode()


def bench_framing(total_mb: int = 20) -> tuple[float, float]:
    framer = make_framer(LineFraming())
    chunk = SENTENCE * (4096 // len(SENTENCE))
    rounds = total_mb * 1024 * 1024 // len(chunk)
    frames = 0
    start = time.perf_counter()
    for _ in range(rounds):
        frames += len(framer.feed(chunk))
    elapsed = time.perf_counter() - start
    return rounds * len(chunk) / elapsed / 1e6, frames / elapsed


def bench_nmea(count: int = 200_000) -> float:
    frame = SENTENCE.rstrip()
    start = time.perf_counter()
    for _ in range(count):
        parse_sentence(frame)
    return count / (time.perf_counter() - start)


async def bench_round_trip(count: int = 1000) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        gw, dev = Path(tmp) / "gw", Path(tmp) / "dev"
        proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={gw}", f"pty,raw,echo=0,link={dev}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(5):
                while not (gw.exists() and dev.exists()):
                    await asyncio.sleep(0.01)
            return await _round_trips(gw, dev, count)
        finally:
            proc.kill()
            proc.wait()


async def _round_trips(gw: Path, dev: Path, count: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    fd = os.open(dev, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)

    def answer() -> None:
        data = os.read(fd, 4096)
        for _ in range(data.count(b"\n")):
            os.write(fd, b"T=21.50,H=45.5\n")

    loop.add_reader(fd, answer)
    config = SerialConnection.model_validate(
        {
            "driver": "serial",
            "port": str(gw),
            "devices": {
                "th": {
                    "request": "MEAS?",
                    "parser": {
                        "type": "regex",
                        "pattern": r"T=(?P<t>[\d.]+),H=(?P<h>[\d.]+)",
                        "types": {"t": "float", "h": "float"},
                    },
                    "points": {"t": {}, "h": {}},
                }
            },
        }
    )
    device = config.devices["th"]
    points = list(device.points.values())
    times = []
    try:
        async with SerialDriver(config).connect() as session:
            for _ in range(count):
                start = time.perf_counter()
                await session.read(device, points)
                times.append(time.perf_counter() - start)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    times.sort()
    return statistics.median(times) * 1e3, times[int(len(times) * 0.99)] * 1e3


def main(argv: list[str] | None = None) -> int:
    del argv
    mb_s, frames_s = bench_framing()
    nmea_s = bench_nmea()
    median_ms, p99_ms = asyncio.run(bench_round_trip())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"| {stamp} | {machine} | line framing | {mb_s:.0f} MB/s, {frames_s:,.0f} frames/s |")
    print(f"| {stamp} | {machine} | NMEA GGA decode | {nmea_s:,.0f} sentences/s |")
    print(
        f"| {stamp} | {machine} | request/response over a pty | "
        f"median {median_ms:.2f} ms, p99 {p99_ms:.2f} ms |"
    )
    return 0


if __name__ == "__main__":
    main()
