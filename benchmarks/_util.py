"""Helpers shared by the benchmarks: ports, percentiles, and /proc readings of a process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import Counter
from pathlib import Path

__all__ = ["cpu_of", "free_port", "pct", "speed_reference_ms", "status_kb", "wait_port"]


def pct(histogram: Counter[int], p: float) -> float:
    """The bin below which p % of the counts fall."""
    total = sum(histogram.values())
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= total * p / 100:
            return float(value)
    return 0.0


def speed_reference_ms() -> float:
    """Best of 5 timings of `sum(range(10**6))`, in ms: how fast this machine runs Python now.

    CPU shares (cores) measured on a shared virtual machine vary with the host's load; this
    number, taken beside them, tells whether two runs ran on equally fast CPUs.
    """
    import timeit  # noqa: PLC0415

    return min(timeit.repeat("sum(range(10**6))", number=1, repeat=5)) * 1000


def cpu_of(pid: int, *, system: bool = False, thread: int | None = None) -> float:
    """User + system CPU seconds of a process (all its threads) or of one thread.

    With `system`, the time in the kernel alone.
    """
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[12]) if system else int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_port(port: int) -> None:
    async with asyncio.timeout(20):
        while True:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                return
            await asyncio.sleep(0.1)
