"""Real pymodbus servers for the Modbus tests: TCP on loopback, RTU over a socat pty pair."""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

WRITE_REGISTERS = {6, 16}  # write single register, write multiple registers


@dataclass
class Requests:
    """Every request the simulator served, per unit; and exception codes to answer with."""

    seen: list[tuple[int, int, int, int]] = field(default_factory=list)  # unit, fc, addr, count
    refuse: dict[tuple[int, int], ExcCodes] = field(default_factory=dict)  # (unit, fc) -> code
    silent: set[int] = field(default_factory=set)  # units whose replies are never sent
    # (unit, holding register) -> (min, max): a written value is stored within these limits,
    # as a device with a range clamps a setting; the request is still answered as accepted
    clamp: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)

    def drop_silent(self, unit_at: int) -> Any:
        """A server trace_packet that swallows replies of silent units (a dead slave)."""

        def trace(sending: bool, data: bytes) -> bytes:
            if sending and len(data) > unit_at and data[unit_at] in self.silent:
                return b""
            return data

        return trace

    def count(self, unit: int, fc: int | None = None) -> int:
        return sum(1 for u, f, _, _ in self.seen if u == unit and (fc is None or f == fc))

    async def action(  # noqa: PLR0917 - pymodbus calls it positionally
        self,
        unit: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: Any,
    ) -> ExcCodes | None:
        del start_address, registers
        self.seen.append((unit, function_code, address, count))
        if values is not None and function_code in WRITE_REGISTERS:
            for i in range(count):  # pymodbus stores `values` after this returns
                if (limits := self.clamp.get((unit, address + i))) is not None:
                    values[i] = min(max(values[i], limits[0]), limits[1])
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
async def tcp_server(
    devices: list[SimDevice], port: int, requests: Requests | None = None, *, rtu: bool = False
) -> AsyncIterator[Any]:
    """A Modbus TCP server; with `rtu`, a converter speaking RTU frames over TCP."""
    trace = requests.drop_silent(0 if rtu else 6) if requests else None
    server = ModbusTcpServer(
        devices,
        address=("127.0.0.1", port),
        framer=FramerType.RTU if rtu else FramerType.SOCKET,
        trace_packet=trace,
    )
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
            link.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def rtu_server(
    devices: list[SimDevice], port: str, requests: Requests | None = None
) -> AsyncIterator[Any]:
    trace = requests.drop_silent(0) if requests else None
    server = ModbusSerialServer(
        devices, framer=FramerType.RTU, port=port, baudrate=115200, trace_packet=trace
    )
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]
