"""The Modbus TCP client against a scripted peer on a real socket: framing and its failures.

The pymodbus simulator answers correctly; these cases need a peer that answers late, in
pieces, for the wrong unit, or with bytes that are not Modbus TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

import pytest
from pymodbus.exceptions import ConnectionException, ModbusException

from drivers.modbus.config import ModbusDevice, ModbusTcpConnection
from drivers.modbus.plan import Block
from drivers.modbus.session import ModbusSession
from drivers.modbus.tcp import TcpClient
from gatewayd.errors import ConnectionLost, DeviceUnavailable

Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter
CONNECTION = ModbusTcpConnection(driver="modbus-tcp", host="127.0.0.1", port=1)
METER = ModbusDevice(id="meter", unit_id=1, timeout_s=5)


def read_one(client: TcpClient) -> asyncio.Task[list[int]]:
    """One register through the session, which maps the client's failures to gatewayd's."""
    session = ModbusSession(client, CONNECTION)
    return asyncio.create_task(session._read_block(METER, Block("holding", 0, 1, ())))


async def request(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(transaction id, unit, PDU) of the next request the peer receives."""
    tid, protocol, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
    assert protocol == 0
    return tid, unit, await reader.readexactly(length - 1)


def frame(tid: int, unit: int, pdu: bytes, protocol: int = 0) -> bytes:
    return struct.pack(">HHHB", tid, protocol, len(pdu) + 1, unit) + pdu


def registers(*values: int) -> bytes:
    return bytes([3, 2 * len(values)]) + struct.pack(f">{len(values)}H", *values)


@contextlib.asynccontextmanager
async def connected() -> AsyncIterator[tuple[TcpClient, Reader, Writer]]:
    accepted: asyncio.Queue[tuple[Reader, Writer]] = asyncio.Queue()

    async def accept(reader: Reader, writer: Writer) -> None:
        await accepted.put((reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = TcpClient("127.0.0.1", port, connect_timeout_s=2, name=f"tcp://127.0.0.1:{port}")
    try:
        assert await client.connect()
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        try:
            yield client, reader, writer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_request_frame_and_a_reply_in_pieces():
    async with connected() as (client, reader, writer):
        answer = client.read_holding_registers(7, count=3, device_id=9, timeout_s=5)
        tid, unit, pdu = await request(reader)
        assert (unit, pdu) == (9, bytes([3, 0, 7, 0, 3]))
        for byte in frame(tid, 9, registers(1, 65535, 300)):  # one byte per segment
            writer.write(bytes([byte]))
            await writer.drain()
        reply = await asyncio.wait_for(answer, 5)
        assert list(reply.registers) == [1, 65535, 300]
        assert not reply.isError()


async def test_a_late_answer_is_dropped_not_given_to_the_next_request():
    async with connected() as (client, reader, writer):
        first = client.read_holding_registers(0, count=1, device_id=1, timeout_s=0.05)
        second = client.read_holding_registers(0, count=1, device_id=1, timeout_s=5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(first, 5)  # its own deadline, not the one armed later
        assert not second.done()
        tid1, _, _ = await request(reader)
        tid2, _, _ = await request(reader)
        assert tid1 != tid2
        writer.write(frame(tid1, 1, registers(111)) + frame(tid2, 1, registers(222)))
        reply = await asyncio.wait_for(second, 5)
        assert list(reply.registers) == [222]
        assert client.connected


async def test_each_request_times_out_on_its_own_deadline():
    async with connected() as (client, reader, writer):
        slow = client.read_holding_registers(0, count=1, device_id=1, timeout_s=0.3)
        fast = client.read_holding_registers(1, count=1, device_id=1, timeout_s=0.05)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(fast, 5)  # the shorter deadline, armed second, fires first
        assert not slow.done()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow, 5)
        tid1, _, _ = await request(reader)
        tid2, _, _ = await request(reader)
        writer.write(frame(tid1, 1, registers(1)) + frame(tid2, 1, registers(2)))
        answered = client.read_holding_registers(0, count=1, device_id=1, timeout_s=5)
        tid3, _, _ = await request(reader)
        writer.write(frame(tid3, 1, registers(3)))
        assert list((await asyncio.wait_for(answered, 5)).registers) == [3]
        assert client.connected  # a silent device is not a broken connection


async def test_exception_reply_is_an_error_response():
    async with connected() as (client, reader, writer):
        answer = client.write_register(4, 10, device_id=1, timeout_s=5)
        tid, _, pdu = await request(reader)
        assert pdu == bytes([6, 0, 4, 0, 10])
        writer.write(frame(tid, 1, bytes([0x86, 3])))
        reply = await asyncio.wait_for(answer, 5)
        assert reply.isError()
        assert reply.exception_code == 3


@pytest.mark.parametrize(
    ("unit", "pdu", "message"),
    [
        (2, registers(5), "reply from unit 2 to a request for unit 1"),
        (1, bytes([4, 2, 0, 5]), "reply with function 4 to a request with function 3"),
        (1, bytes([3, 4, 0, 5]), "register reply of 4 bytes says it carries 4"),
        (1, bytes([0x83]), "malformed exception reply 83 to function 3"),
    ],
)
async def test_a_reply_that_does_not_fit_fails_its_request_only(unit, pdu, message):
    async with connected() as (client, reader, writer):
        answer = client.read_holding_registers(0, count=1, device_id=1, timeout_s=5)
        tid, _, _ = await request(reader)
        writer.write(frame(tid, unit, pdu))
        with pytest.raises(ModbusException, match=message):
            await asyncio.wait_for(answer, 5)
        again = client.read_holding_registers(0, count=1, device_id=1, timeout_s=5)
        tid, _, _ = await request(reader)
        writer.write(frame(tid, 1, registers(42)))
        assert list((await asyncio.wait_for(again, 5)).registers) == [42]


async def test_bytes_that_are_not_modbus_tcp_close_the_connection():
    async with connected() as (client, reader, writer):
        read = read_one(client)
        tid, _, _ = await request(reader)
        writer.write(frame(tid, 1, registers(1), protocol=7))
        with pytest.raises(ConnectionLost, match="malformed MBAP header"):
            await asyncio.wait_for(read, 5)
        assert not client.connected
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the client hung up
        with pytest.raises(ConnectionLost, match="connection closed"):
            await read_one(client)


async def test_peer_closing_fails_the_waiting_request_as_a_lost_connection():
    async with connected() as (client, reader, writer):
        read = read_one(client)
        await request(reader)
        writer.close()
        with pytest.raises(ConnectionLost, match="connection lost"):
            await asyncio.wait_for(read, 5)
        with pytest.raises(ConnectionException):
            client.read_coils(0, count=1, device_id=1, timeout_s=5)


async def test_wrong_unit_through_the_session_is_device_unavailable():
    async with connected() as (client, reader, writer):
        read = read_one(client)
        tid, _, _ = await request(reader)
        writer.write(frame(tid, 3, registers(1)))
        with pytest.raises(
            DeviceUnavailable, match=r"meter: read holding 0\+1: .*reply from unit 3"
        ):
            await asyncio.wait_for(read, 5)
        assert client.connected


async def test_connect_to_a_closed_port_is_false():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = TcpClient("127.0.0.1", port, connect_timeout_s=2, name="x")
    assert not await client.connect()
    assert not client.connected
