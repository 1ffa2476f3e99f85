"""Real pymodbus servers for the Modbus tests: TCP on loopback, RTU over a socat pty pair."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from tests.helpers import async_wait_for


@dataclass
class Requests:
    """Every request the simulator served, per unit; and exception codes to answer with."""

    seen: list[tuple[int, int, int, int]] = field(default_factory=list)  # unit, fc, addr, count
    refuse: dict[tuple[int, int], ExcCodes] = field(default_factory=dict)  # (unit, fc) -> code

    def count(self, unit: int, fc: int | None = None) -> int:
        return sum(1 for u, f, _, _ in self.seen if u == unit and (fc is None or f == fc))

    async def action(
        self,
        unit: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: Any,
    ) -> ExcCodes | None:
        del start_address, registers, values
        self.seen.append((unit, function_code, address, count))
        return self.refuse.get((unit, function_code))


def registers_device(unit: int, requests: Requests, size: int = 200) -> SimDevice:
    """A unit with holding/input sharing `size` registers (all zero) at address 0."""
    return SimDevice(
        id=unit,
        simdata=[SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
        action=functools.partial(requests.action, unit),
    )


def split_device(unit: int, requests: Requests, size: int = 200) -> SimDevice:
    """A unit with four separate tables: coils, discrete inputs, holding, input registers."""
    return SimDevice(
        id=unit,
        simdata=(
            [SimData(0, values=[False] * 64, datatype=DataType.BITS)],
            [SimData(0, values=[False] * 64, datatype=DataType.BITS)],
            [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
        ),
        action=functools.partial(requests.action, unit),
    )


@contextlib.asynccontextmanager
async def tcp_server(devices: list[SimDevice], port: int) -> AsyncIterator[Any]:
    server = ModbusTcpServer(devices, address=("127.0.0.1", port), ignore_missing_devices=True)
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two linked ptys made by socat; unique names, removed and socat stopped afterwards."""
    assert shutil.which("socat"), "socat is required"
    tag = uuid.uuid4().hex[:8]
    a, b = tmp_path / f"pty-{tag}-a", tmp_path / f"pty-{tag}-b"
    for link in (a, b):
        link.unlink(missing_ok=True)
    proc = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import time

        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            assert proc.poll() is None, "socat exited"
            assert time.monotonic() < deadline, "socat did not create the pty links"
            time.sleep(0.01)
        yield str(a), str(b)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for link in (a, b):
            with contextlib.suppress(OSError):
                os.unlink(link)


@contextlib.asynccontextmanager
async def rtu_server(devices: list[SimDevice], port: str) -> AsyncIterator[Any]:
    server = ModbusSerialServer(
        devices, framer=FramerType.RTU, port=port, ignore_missing_devices=True, baudrate=115200
    )
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


async def wait_listening(port: int) -> None:
    async def ok() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    async with asyncio.timeout(5):
        while not await ok():
            await asyncio.sleep(0.02)
    del async_wait_for
