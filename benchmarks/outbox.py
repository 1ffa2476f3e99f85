"""Outbox append rate, batched and full durability.

    python -m benchmarks outbox [--records N] [--producers P]

Producers are concurrent tasks each awaiting its own appends (as connection runners do); the
group commit shares one transaction among all appends waiting at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from pathlib import Path

from gatewayd.settings import OutboxConfig
from gatewayd.store.outbox import open_outbox

PAYLOAD = (
    b'{"status":"online","timestamp":"2026-01-01T00:00:00.000Z",'
    b'"telemetries":{"seq":12345,"t":21.5}}'
)


async def rate(durability: str, records: int, producers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = OutboxConfig(durability=durability, max_bytes=10**10)  # type: ignore[arg-type]
        async with open_outbox(Path(tmp) / "outbox.db", config) as outbox:
            per = records // producers

            async def produce(device: str) -> None:
                for _ in range(per):
                    await outbox.append(device, "telemetry", PAYLOAD)

            start = time.perf_counter()
            await asyncio.gather(*(produce(f"dev{i}") for i in range(producers)))
            elapsed = time.perf_counter() - start
        return per * producers / elapsed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks outbox")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--producers", type=int, default=100)
    args = parser.parse_args(argv)
    print(f"# outbox append, {platform.machine()}, {platform.python_version()}")
    for durability, records in (("batched", args.records), ("full", args.records // 4)):
        for producers in (1, args.producers):
            n = records if producers > 1 else records // 10
            r = asyncio.run(rate(durability, n, producers))
            print(f"{durability:8} producers={producers:4} records={n:7}: {r:10,.0f} records/s")
    return 0
