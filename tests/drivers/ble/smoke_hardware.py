"""Hardware smoke test of the BLE driver on a real adapter (BlueZ); not run by CI.

Usage (on a gateway with BlueZ and the devices of the config in range):

    python -m tests.drivers.ble.smoke_hardware config/ble-gatt.example.yaml --seconds 120
    python -m tests.drivers.ble.smoke_hardware CONFIG --write valve-kitchen/setpoint=215

It opens every `ble` connection of the config with the real runner and bleak's platform
backend, prints discovery results, every reading and availability change, optionally
writes values and reads them back, and exits non-zero if a configured device never
answered. docs/drivers/ble.md says what to check.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drivers.ble import BleConnection, BleDriver
from gatewayd.backoff import Backoff
from gatewayd.bridge.runner import ConnectionRunner
from gatewayd.config_load import load_settings
from gatewayd.errors import DeviceUnavailable
from gatewayd.health import Component
from gatewayd.model import Reading


class PrintingSink:
    """Prints what the runner delivers and remembers who answered."""

    def __init__(self) -> None:
        self.answered: set[tuple[str, str]] = set()

    async def readings(self, connection: str, device: str, batch: Sequence[Reading]) -> None:
        self.answered.add((connection, device))
        for r in batch:
            print(f"{r.at:%H:%M:%S} {r.ref} = {r.value!r} {r.unit or ''} [{r.quality}]")

    async def availability(self, connection: str, device: str, state: Any, reason: str) -> None:
        up = state == "ONLINE"
        print(f"--- {connection}/{device} {'UP' if up else 'DOWN'} {reason}")


async def main(config_path: Path, seconds: float, writes: list[str]) -> int:
    settings = load_settings(config_path)
    sink = PrintingSink()
    runners: list[ConnectionRunner] = []
    drivers: list[BleDriver] = []
    for conn_id, conn in settings.connections.items():
        if isinstance(conn, BleConnection):
            driver = BleDriver(conn)
            drivers.append(driver)
            runners.append(
                ConnectionRunner(
                    conn_id, conn, driver, sink, Component(conn_id), backoff=Backoff(max_s=10)
                )
            )
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(r.run(), name=r.id) for r in runners]
        await asyncio.sleep(min(10.0, seconds / 4))
        for driver in drivers:
            try:
                discovered = await driver.discover(5.0)
            except DeviceUnavailable as exc:
                print(f"!!! discovery: {exc}")
                discovered = []
            for found in discovered:
                print(
                    f"+++ unmanaged {found.address} {found.name!r} {found.rssi} dBm "
                    f"{list(found.service_uuids)}"
                )
        for spec in writes:
            target, value = spec.split("=", 1)
            device, point = target.split("/", 1)
            for runner in runners:
                try:
                    await runner.write(device, point, float(value))
                    print(
                        f"*** wrote {target} = {value}; read back:",
                        await runner.read(device, [point]),
                    )
                except KeyError:
                    continue
                except Exception as exc:
                    print(f"!!! write {target}: {exc!r}")
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
    expected = {
        (cid, did)
        for cid, conn in settings.connections.items()
        if isinstance(conn, BleConnection)
        for did in conn.devices
    }
    missing = sorted(expected - sink.answered)
    print("never answered:", missing or "none")
    return 1 if missing else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--write", action="append", default=[], metavar="DEVICE/POINT=VALUE")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    sys.exit(asyncio.run(main(args.config, args.seconds, args.write)))
