"""Modbus TCP on one socket: pymodbus' request and response messages over a lean protocol.

pymodbus' async client puts every request through a lock, a second future and `wait_for`,
formats debug text it then discards, and decodes each register with its own struct call. At a
thousand requests a second that bookkeeping costs more CPU than the request itself (measured
in docs/decisions.md), so for Modbus TCP the session talks through this client instead: the
same pymodbus PDU classes and MBAP framer, carried by a plain `asyncio.Protocol`.

Every request carries its own timeout. Transaction ids pair each answer with its request, so
an answer that arrives after its request gave up is dropped instead of being taken for the
answer to the next one. RTU, on a serial line or over TCP, stays on pymodbus'
client: there the bus speed, not the CPU, sets the pace.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from functools import lru_cache

from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu import bit_message as bit
from pymodbus.pdu import register_message as reg

__all__ = ["TcpClient"]

log = logging.getLogger(__name__)

# MBAP length field: unit id + PDU, and a PDU is at most 253 bytes.
_MAX_LENGTH = 254
_HEADER = struct.Struct(">HHHB")
_HEADER_SIZE = 7
# Timers may fire up to a clock tick early (uvloop counts in milliseconds).
_EARLY_S = 0.001
_REGISTER_READS = {3: reg.ReadHoldingRegistersResponse, 4: reg.ReadInputRegistersResponse}
_OTHER_REPLIES: dict[int, type[ModbusPDU]] = {
    1: bit.ReadCoilsResponse,
    2: bit.ReadDiscreteInputsResponse,
    5: bit.WriteSingleCoilResponse,
    6: reg.WriteSingleRegisterResponse,
    15: bit.WriteMultipleCoilsResponse,
    16: reg.WriteMultipleRegistersResponse,
}


@lru_cache(maxsize=128)
def _words(count: int) -> struct.Struct:
    return struct.Struct(f">{count}H")


def decode_reply(function_code: int, pdu: bytes) -> ModbusPDU:
    """The pymodbus response of a reply PDU to a request with `function_code`.

    Raises:
        ModbusException: the reply does not answer that function or does not parse.
    """
    code = pdu[0]
    if code & 0x80:
        if code & 0x7F != function_code or len(pdu) < 2:
            msg = f"malformed exception reply {pdu.hex()} to function {function_code}"
            raise ModbusException(msg)
        error = ExceptionResponse(function_code)
        error.decode(pdu[1:])
        return error
    if code != function_code:
        msg = f"reply with function {code} to a request with function {function_code}"
        raise ModbusException(msg)
    words = _REGISTER_READS.get(code)
    if words is not None:
        # One struct call for the whole block; pymodbus' decode makes one per register.
        size = pdu[1] if len(pdu) > 1 else -1
        if size < 0 or size % 2 or size + 2 > len(pdu):
            msg = f"register reply of {len(pdu)} bytes says it carries {size}"
            raise ModbusException(msg)
        return words(registers=list(_words(size // 2).unpack_from(pdu, 2)))
    reply = _OTHER_REPLIES[code]()
    try:
        reply.decode(pdu[1:])
    except (IndexError, ValueError, struct.error) as exc:
        msg = f"malformed reply to function {function_code}: {exc}"
        raise ModbusException(msg) from exc
    return reply


class _Waiting:
    __slots__ = ("deadline", "function_code", "future", "unit")

    def __init__(
        self, future: asyncio.Future[ModbusPDU], function_code: int, unit: int, deadline: float
    ) -> None:
        self.future = future
        self.function_code = function_code
        self.unit = unit
        self.deadline = deadline


class _Mbap(asyncio.Protocol):
    """Splits the byte stream into MBAP frames and settles the request each one answers.

    Request deadlines share one timer: a request that is answered leaves it armed, and when
    it fires it fails what is overdue and re-arms for the earliest deadline still waiting.
    With one request after another, that is one timer per timeout period, not per request.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.waiting: dict[int, _Waiting] = {}
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def watch(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Make sure the timer fires by `deadline`."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._timer = loop.call_at(deadline, self._expire, loop)
        self._timer_at = deadline

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time() + _EARLY_S
        soonest: float | None = None
        for tid, entry in list(self.waiting.items()):
            if entry.future.done():
                del self.waiting[tid]
            elif entry.deadline <= now:
                del self.waiting[tid]  # an answer that still comes is dropped
                entry.future.set_exception(TimeoutError())
            elif soonest is None or entry.deadline < soonest:
                soonest = entry.deadline
        if soonest is not None:
            self.watch(loop, soonest)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.fail(ConnectionException(f"{self.name}: connection lost{f' ({exc})' if exc else ''}"))

    def fail(self, exc: Exception) -> None:
        waiting, self.waiting = self.waiting, {}
        for entry in waiting.values():
            if not entry.future.done():
                entry.future.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _HEADER_SIZE:
            tid, protocol, length, unit = _HEADER.unpack_from(buffer)
            if protocol != 0 or not 2 <= length <= _MAX_LENGTH:
                self._garbled(f"protocol id {protocol}, length {length}")
                return
            end = 6 + length
            if len(buffer) < end:
                return
            pdu = bytes(buffer[_HEADER_SIZE:end])
            del buffer[:end]
            self._settle(tid, unit, pdu)

    def _settle(self, tid: int, unit: int, pdu: bytes) -> None:
        entry = self.waiting.pop(tid, None)
        if entry is None or entry.future.done():
            log.debug("%s: dropped the late answer to transaction %d", self.name, tid)
            return
        if unit != entry.unit:
            msg = f"reply from unit {unit} to a request for unit {entry.unit}"
            entry.future.set_exception(ModbusException(msg))
            return
        try:
            reply = decode_reply(entry.function_code, pdu)
        except ModbusException as exc:
            entry.future.set_exception(exc)
            return
        reply.dev_id, reply.transaction_id = unit, tid
        entry.future.set_result(reply)

    def _garbled(self, what: str) -> None:
        """Not Modbus TCP, or out of step: nothing after it can be trusted, so hang up."""
        log.warning("%s: malformed MBAP header (%s): closing the connection", self.name, what)
        self._buffer.clear()
        self.fail(ConnectionException(f"{self.name}: malformed MBAP header ({what})"))
        if self.transport is not None:
            self.transport.abort()


class TcpClient:
    """The part of pymodbus' async client API the session uses, for Modbus TCP.

    Requests return pymodbus response objects; failures raise pymodbus exceptions
    (`ConnectionException` when the socket is gone, `ModbusException` for a reply that does
    not fit) or `TimeoutError` after `timeout_s` without an answer; the session maps them to
    gatewayd's errors.

    Args:
        host: the device or gateway.
        port: its Modbus TCP port.
        connect_timeout_s: how long opening the socket may take.
        name: for log lines and errors (`tcp://host:port`).
    """

    def __init__(self, host: str, port: int, *, connect_timeout_s: float, name: str) -> None:
        self._host = host
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._protocol = _Mbap(name)
        self._framer = FramerSocket(DecodePDU(is_server=False))
        self._tid = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        """Whether the socket is open."""
        transport = self._protocol.transport
        return transport is not None and not transport.is_closing()

    async def connect(self) -> bool:
        """Open the socket; False if it cannot be opened in time."""
        # Kept for requests: on Python 3.11 each lookup of the running loop is a system call.
        self._loop = loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await loop.create_connection(lambda: self._protocol, self._host, self._port)
        except (OSError, TimeoutError) as exc:
            log.debug("%s: cannot connect: %s", self._protocol.name, exc)
            return False
        return True

    def close(self) -> None:
        """Close the socket; requests still waiting fail as a lost connection."""
        transport = self._protocol.transport
        if transport is not None:
            transport.close()
        self._protocol.fail(ConnectionException(f"{self._protocol.name}: closed"))

    def read_holding_registers(
        self, address: int, *, count: int, device_id: int, timeout_s: float
    ) -> asyncio.Future[ModbusPDU]:
        """FC 3."""
        request = reg.ReadHoldingRegistersRequest(address=address, count=count, dev_id=device_id)
        return self._execute(request, timeout_s)

    def read_input_registers(
        self, address: int, *, count: int, device_id: int, timeout_s: float
    ) -> asyncio.Future[ModbusPDU]:
        """FC 4."""
        request = reg.ReadInputRegistersRequest(address=address, count=count, dev_id=device_id)
        return self._execute(request, timeout_s)

    def read_coils(
        self, address: int, *, count: int, device_id: int, timeout_s: float
    ) -> asyncio.Future[ModbusPDU]:
        """FC 1."""
        request = bit.ReadCoilsRequest(address=address, count=count, dev_id=device_id)
        return self._execute(request, timeout_s)

    def read_discrete_inputs(
        self, address: int, *, count: int, device_id: int, timeout_s: float
    ) -> asyncio.Future[ModbusPDU]:
        """FC 2."""
        request = bit.ReadDiscreteInputsRequest(address=address, count=count, dev_id=device_id)
        return self._execute(request, timeout_s)

    def write_coil(
        self, address: int, value: bool, *, device_id: int, timeout_s: float
    ) -> asyncio.Future[ModbusPDU]:
        """FC 5."""
        request = bit.WriteSingleCoilRequest(address=address, bits=[value], dev_id=device_id)
        return self._execute(request, timeout_s)

    def write_register(
        self, address: int, value: int, *, device_id: int, timeout_s: float
    ) -> asyncio.Future[ModbusPDU]:
        """FC 6."""
        request = reg.WriteSingleRegisterRequest(
            address=address, registers=[value], dev_id=device_id
        )
        return self._execute(request, timeout_s)

    def write_registers(
        self, address: int, values: list[int], *, device_id: int, timeout_s: float
    ) -> asyncio.Future[ModbusPDU]:
        """FC 16."""
        request = reg.WriteMultipleRegistersRequest(
            address=address, registers=values, dev_id=device_id
        )
        return self._execute(request, timeout_s)

    def _execute(self, request: ModbusPDU, timeout_s: float) -> asyncio.Future[ModbusPDU]:
        protocol = self._protocol
        transport = protocol.transport
        if transport is None or transport.is_closing():
            msg = f"{protocol.name}: not connected"
            raise ConnectionException(msg)
        waiting = protocol.waiting
        if waiting:
            # Requests the session gave up on; their answers will be dropped.
            for tid in [t for t, entry in waiting.items() if entry.future.done()]:
                del waiting[tid]
        tid = self._tid = self._tid % 0xFFFF + 1
        request.transaction_id = tid
        loop = self._loop
        assert loop is not None  # a transport means connect() ran
        future: asyncio.Future[ModbusPDU] = loop.create_future()
        deadline = loop.time() + timeout_s
        waiting[tid] = _Waiting(future, request.function_code, request.dev_id, deadline)
        protocol.watch(loop, deadline)
        transport.write(self._framer.buildFrame(request))
        return future
