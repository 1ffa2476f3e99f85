"""Modbus TCP, RTU on a serial port, and RTU over TCP (pymodbus).

Device quirks handled here, and where:
- 0-based addresses in the configuration (a manual's "40001" is holding address 0).
- Byte and word order per point (`byte_order`, `word_order`): ABCD, CDAB, BADC, DCBA.
- Devices that allow fewer than 125 registers per read: `max_block_registers`.
- Holes in a register map that answer "illegal data address": keep `max_gap` below the hole
  or set it to 0 so reads never span unmapped registers.
- RTU has no transaction ids: a reply that arrives after its timeout could be taken for the
  next request's; a `request_gap_s` of a few character times avoids it on slow devices.
"""

from __future__ import annotations

from drivers.modbus.config import (
    ModbusDevice,
    ModbusPoint,
    ModbusRtuConnection,
    ModbusRtuTcpConnection,
    ModbusTcpConnection,
)
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.session import ExceptionReply, ModbusSession
from gatewayd.driver import DriverSpec

__all__ = [
    "RTU_SPEC",
    "RTU_TCP_SPEC",
    "SPEC",
    "ExceptionReply",
    "ModbusDevice",
    "ModbusDriver",
    "ModbusPoint",
    "ModbusRtuConnection",
    "ModbusRtuTcpConnection",
    "ModbusSession",
    "ModbusTcpConnection",
]

SPEC = DriverSpec(
    kind="modbus-tcp",
    config=ModbusTcpConnection,
    device=ModbusDevice,
    point=ModbusPoint,
    build=ModbusDriver,
)
RTU_SPEC = DriverSpec(
    kind="modbus-rtu",
    config=ModbusRtuConnection,
    device=ModbusDevice,
    point=ModbusPoint,
    build=ModbusDriver,
)
RTU_TCP_SPEC = DriverSpec(
    kind="modbus-rtu-tcp",
    config=ModbusRtuTcpConnection,
    device=ModbusDevice,
    point=ModbusPoint,
    build=ModbusDriver,
)
