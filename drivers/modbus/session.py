"""A Modbus session over an open pymodbus client: batched reads, checked writes, unit scan.

pymodbus reports failure in several ways (exceptions, `isError()` responses, a silently
closed transport); this module turns every one of them into the gatewayd error tree at the
boundary: no answer -> DeviceUnavailable, exception response -> WriteRejected (writes) or
DeviceUnavailable (reads), transport gone -> ConnectionLost. Every request is bounded by the
device's timeout; retries, pacing and the circuit breaker belong to the runner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from pymodbus.exceptions import ConnectionException, ModbusException

from drivers.modbus.codec import CodecError, decode, encode
from drivers.modbus.config import (
    MAX_WRITE_REGISTERS,
    ModbusConnection,
    ModbusDevice,
    ModbusPoint,
)
from drivers.modbus.plan import Block, plan_reads
from drivers.modbus.tcp import TcpClient
from gatewayd.batch import SampleBatch
from gatewayd.errors import ConnectionLost, DeviceUnavailable, WriteRejected
from gatewayd.model import Value

__all__ = ["EXCEPTION_NAMES", "ExceptionReply", "ModbusSession"]

log = logging.getLogger(__name__)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
# Exception codes that mean "not now" rather than "no": a write answered with one of these
# was not refused by the device and may be retried.
_BUSY_CODES = frozenset({5, 6, 10, 11})
_PLAN_CACHE = 1024
_EPOCH = datetime.fromtimestamp(0, UTC)
# A TCP gateway answers these for a unit behind it that is absent or silent.
_GATEWAY_CODES = frozenset({10, 11})


class ModbusSession:
    """Reads and writes the devices of one connection through one pymodbus client.

    Args:
        client: a connected pymodbus async client (its own reconnect and retries off).
        config: the connection, for default timeouts.
    """

    def __init__(self, client: Any, config: ModbusConnection) -> None:
        self._client = client
        self._config = config
        # The lean TCP client bounds each request itself, with one timer for many.
        self._times_out = isinstance(client, TcpClient)
        self._plans: dict[tuple[str, tuple[str, ...]], _ReadPlan] = {}
        self._by_list: dict[int, tuple[Sequence[ModbusPoint], ModbusDevice, _ReadPlan]] = {}
        self.requests = 0

    async def read(self, device: ModbusDevice, points: Sequence[ModbusPoint]) -> SampleBatch:
        """Read the points with as few requests as the limits allow; samples in `points` order."""
        plan = self._plan(device, points)
        size = len(plan.ids)
        values: list[Value] = [0] * size
        at: list[datetime] = [_EPOCH] * size
        for block, runs, others in plan.blocks:
            data = await self._read_block(device, block)
            now = datetime.now(UTC)
            for index, offset, length in runs:
                values[index : index + length] = data[offset : offset + length]
                at[index : index + length] = [now] * length
            for index, offset, point in others:
                if point.is_bit_table:
                    values[index] = bool(data[offset])
                else:
                    values[index] = decode(point, data[offset : offset + point.span])
                at[index] = now
        return SampleBatch(plan.ids, values, at)

    def _plan(self, device: ModbusDevice, points: Sequence[ModbusPoint]) -> _ReadPlan:
        """The plan of this point set, looked up by the identity of the poller's list first."""
        held = self._by_list.get(id(points))
        if held is not None and held[0] is points and held[1] is device:
            return held[2]
        key = (device.id, tuple(p.id for p in points))
        plan = self._plans.get(key)
        if plan is None:
            plan = _ReadPlan(key[1], plan_reads(device, points))
            if len(self._plans) < _PLAN_CACHE:  # polls repeat; ad-hoc reads may not
                self._plans[key] = plan
        if len(self._by_list) < _PLAN_CACHE:
            # holding the list keeps its id from being reused by another object
            self._by_list[id(points)] = (points, device, plan)
        return plan

    async def write(self, device: ModbusDevice, point: ModbusPoint, value: Value) -> None:
        """Write one raw value: FC 5 for a coil, FC 6 for one register, FC 16 for more.

        Raises:
            WriteRejected: the value does not fit the point, or the device refused it.
            DeviceUnavailable: no answer.
            ConnectionLost: the transport is gone.
        """
        if not point.writable:
            raise WriteRejected(f"{device.id}/{point.id} is not writable")
        unit = device.unit_id
        try:
            if point.table == "coil":
                flag = encode(point, value)[0] != 0
                await self._call(
                    device, "write coil", point.address, lambda **kw: self._client.write_coil(
                        point.address, flag, device_id=unit, **kw
                    ), write=True
                )  # fmt: skip
                return
            current = 0
            if point.type == "bit":
                current = (
                    await self._read_block(device, Block(point.table, point.address, 1, ()))
                )[0]
            registers = encode(point, value, current)
        except CodecError as exc:
            raise WriteRejected(str(exc)) from exc
        if len(registers) > MAX_WRITE_REGISTERS:
            raise WriteRejected(f"{point.id}: {len(registers)} registers exceed one write")
        if len(registers) == 1:
            await self._call(
                device, "write register", point.address, lambda **kw: self._client.write_register(
                    point.address, registers[0], device_id=unit, **kw
                ), write=True
            )  # fmt: skip
        else:
            await self._call(
                device, "write registers", point.address, lambda **kw: self._client.write_registers(
                    point.address, registers, device_id=unit, **kw
                ), write=True
            )  # fmt: skip

    async def scan(
        self, unit_ids: Iterable[int], *, address: int = 0, timeout_s: float = 0.2
    ) -> list[int]:
        """Unit ids that answer a one-register holding read.

        An exception reply counts (a device is there but has no register at `address`),
        except the gateway codes 10 and 11, which a TCP gateway sends for an absent unit.

        For discovery on a bus: each silent id costs `timeout_s` of bus time.
        """
        found = []
        for unit in unit_ids:
            probe = ModbusDevice(id=f"unit-{unit}", unit_id=unit, timeout_s=timeout_s)
            try:
                await self._read_block(probe, Block("holding", address, 1, ()))
            except ExceptionReply as exc:
                if exc.code not in _GATEWAY_CODES:
                    found.append(unit)
            except ConnectionLost:
                raise
            except DeviceUnavailable:
                continue
            else:
                found.append(unit)
        return found

    async def _read_block(self, device: ModbusDevice, block: Block) -> list[Any]:
        client, unit = self._client, device.unit_id
        start, count = block.start, block.count
        if block.table == "holding":
            method = client.read_holding_registers
        elif block.table == "input":
            method = client.read_input_registers
        elif block.table == "coil":
            method = client.read_coils
        else:
            method = client.read_discrete_inputs

        def call(**kw: float) -> Awaitable[Any]:
            return method(start, count=count, device_id=unit, **kw)  # type: ignore[no-any-return]

        what = f"read {block.table} {start}+{count}"
        response = await self._call(device, what, start, call, write=False)
        data = response.bits if block.table in {"coil", "discrete"} else response.registers
        if len(data) < count:
            raise DeviceUnavailable(f"{device.id}: {what}: short reply ({len(data)} values)")
        return list(data[:count])

    async def _call(
        self,
        device: ModbusDevice,
        what: str,
        address: int,
        call: Callable[..., Awaitable[Any]],
        *,
        write: bool,
    ) -> Any:
        if not self._client.connected:
            raise ConnectionLost(f"{self._config.target}: connection closed")
        timeout = device.timeout_s or self._config.timeout_s
        self.requests += 1
        try:
            if self._times_out:
                response = await call(timeout_s=timeout)
            else:
                async with asyncio.timeout(timeout):
                    response = await call()
        except TimeoutError:
            raise self._silence(device, f"{what}: no answer within {timeout:g} s") from None
        except ConnectionException as exc:
            raise ConnectionLost(f"{self._config.target}: {exc}") from exc
        except ModbusException as exc:
            raise self._silence(device, f"{what}: {exc}") from exc
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown")
            text = f"{device.id}: {what} at {address}: exception {code} ({name})"
            if write and code not in _BUSY_CODES:
                raise WriteRejected(text)
            raise ExceptionReply(text, code)
        return response

    def _silence(self, device: ModbusDevice, text: str) -> DeviceUnavailable:
        if not self._client.connected:
            return ConnectionLost(f"{self._config.target}: connection lost ({device.id}: {text})")
        return DeviceUnavailable(f"{device.id}: {text}")


class _ReadPlan:
    """The requests of one poll and where each decoded value goes: made once per point set.

    Plain registers (uint16, big-endian) that sit side by side both in the reply and in the
    requested order are copied as one slice (a run); every other point is decoded alone.
    """

    __slots__ = ("blocks", "ids")

    def __init__(self, ids: tuple[str, ...], blocks: list[Block]) -> None:
        self.ids = ids
        where = {point_id: i for i, point_id in enumerate(ids)}
        self.blocks: list[_Slots] = []
        for block in blocks:
            runs: list[list[int]] = []  # [index, offset, length]
            others: list[tuple[int, int, ModbusPoint]] = []
            for p in block.points:
                index, offset = where[p.id], p.address - block.start
                if p.is_bit_table or p.type != "uint16" or p.byte_order != "big":
                    others.append((index, offset, p))
                elif (
                    runs
                    and runs[-1][0] + runs[-1][2] == index
                    and (runs[-1][1] + runs[-1][2] == offset)
                ):
                    runs[-1][2] += 1
                else:
                    runs.append([index, offset, 1])
            self.blocks.append((block, [(i, o, n) for i, o, n in runs], others))


_Slots = tuple[Block, list[tuple[int, int, int]], list[tuple[int, int, ModbusPoint]]]


class ExceptionReply(DeviceUnavailable):
    """The device answered a read with a Modbus exception (it is there, but said no).

    Args:
        text: what was asked and the exception's name.
        code: the Modbus exception code.
    """

    def __init__(self, text: str, code: int) -> None:
        super().__init__(text)
        self.code = code
