"""Configuration of Modbus connections, devices and points (validated at the edge).

Three connection kinds share one device and point model: `modbus-tcp` (a TCP device or a
TCP gateway), `modbus-rtu` (a serial RS-485 bus) and `modbus-rtu-tcp` (RTU frames tunnelled
through a serial-to-Ethernet converter).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from gatewayd.driver import ConnectionConfig, DeviceConfig, PointConfig

__all__ = [
    "DataType",
    "ModbusConnection",
    "ModbusDevice",
    "ModbusPoint",
    "ModbusRtuConnection",
    "ModbusRtuTcpConnection",
    "ModbusTcpConnection",
    "Order",
    "Table",
]

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal[
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
    "bool",
    "bit",
]
Order = Literal["big", "little"]

REGISTER_TABLES = frozenset({"holding", "input"})
BIT_TABLES = frozenset({"coil", "discrete"})
MAX_READ_REGISTERS = 125  # Modbus application protocol, function codes 3 and 4
MAX_READ_BITS = 2000  # function codes 1 and 2
MAX_WRITE_REGISTERS = 123  # function code 16

_WIDTH = {
    "int16": 1,
    "uint16": 1,
    "bool": 1,
    "bit": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}


class ModbusPoint(PointConfig):
    """One value in a device's register or bit tables."""

    table: Table = Field(
        default="holding",
        description="holding (FC 3/6/16), input (FC 4), coil (FC 1/5/15) or discrete (FC 2).",
    )
    address: int = Field(ge=0, le=65535, description="0-based address of the first register.")
    type: DataType = Field(
        default="uint16",
        description="How registers decode; coil and discrete points are bool (the default).",
    )
    byte_order: Order = Field(
        default="big", description="Byte order inside each register (little swaps AB -> BA)."
    )
    word_order: Order = Field(
        default="big", description="Register order of multi-register values (little: CDAB)."
    )
    bit: int | None = Field(
        default=None, ge=0, le=15, description="Bit of the register for type `bit` (0 = LSB)."
    )
    length: int | None = Field(
        default=None, ge=1, le=MAX_READ_REGISTERS, description="Registers of a `string` point."
    )

    @model_validator(mode="before")
    @classmethod
    def _bits_are_bool(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("table") in BIT_TABLES and "type" not in data:
            return {**data, "type": "bool"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModbusPoint:
        if self.table in BIT_TABLES and self.type != "bool":
            msg = f"a {self.table} point is a single bit: type must be bool, not {self.type}"
            raise ValueError(msg)
        if self.type == "bit" and self.bit is None:
            raise ValueError("type bit needs `bit` (0-15)")
        if self.type != "bit" and self.bit is not None:
            raise ValueError("`bit` is only for type bit")
        if self.type == "string" and self.length is None:
            raise ValueError("type string needs `length` (registers)")
        if self.type != "string" and self.length is not None:
            raise ValueError("`length` is only for type string")
        if self.address + self.span > 65536:
            raise ValueError(f"address {self.address} + {self.span} runs past 65535")
        if self.writable and self.table in {"input", "discrete"}:
            raise ValueError(f"{self.table} points are read-only")
        return self

    @property
    def span(self) -> int:
        """Registers (or bits, in bit tables) this point occupies."""
        if self.table in BIT_TABLES:
            return 1
        if self.type == "string":
            return self.length or 1
        return _WIDTH[self.type]

    @property
    def is_bit_table(self) -> bool:
        """Whether the point lives in the coil or discrete table."""
        return self.table in BIT_TABLES


class ModbusDevice(DeviceConfig[ModbusPoint]):
    """One Modbus slave (unit) on a connection."""

    unit_id: int = Field(default=1, ge=0, le=255, description="Unit (slave) id; 1-247 on RS-485.")
    timeout_s: float | None = Field(
        default=None, gt=0, description="Bound on one request; defaults to the connection's."
    )
    retries: int | None = Field(
        default=None, ge=0, le=10, description="Retries of a failed request; connection's."
    )
    max_gap: int = Field(
        default=8,
        ge=0,
        le=MAX_READ_REGISTERS,
        description="Unused registers (or bits) a merged read may span to save a request.",
    )
    max_block_registers: int = Field(
        default=MAX_READ_REGISTERS,
        ge=1,
        le=MAX_READ_REGISTERS,
        description="Most registers in one read (some devices allow fewer than 125).",
    )
    max_block_bits: int = Field(
        default=MAX_READ_BITS,
        ge=1,
        le=MAX_READ_BITS,
        description="Most coils or discrete inputs in one read.",
    )

    @model_validator(mode="after")
    def _points_fit(self) -> ModbusDevice:
        for point in self.points.values():
            if not point.is_bit_table and point.span > self.max_block_registers:
                msg = (
                    f"point {point.id}: {point.span} registers exceed "
                    f"max_block_registers {self.max_block_registers}"
                )
                raise ValueError(msg)
        return self


class ModbusConnection(ConnectionConfig):
    """Settings every Modbus connection kind has; the runner reads the bus limits here."""

    timeout_s: float = Field(default=1.0, gt=0, description="Bound on one request.")
    retries: int = Field(default=1, ge=0, le=10, description="Retries of a failed request.")
    request_gap_s: float = Field(
        default=0.0, ge=0, le=10, description="Pause between two requests (bus turnaround)."
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Bound on opening.")
    breaker_failures: int = Field(
        default=3, ge=1, description="Failed polls in a row before a device is skipped."
    )
    breaker_initial_s: float = Field(
        default=2.0, gt=0, description="First skip period of a failing device."
    )
    breaker_max_s: float = Field(
        default=60.0, gt=0, description="Longest skip period (doubles while it stays dead)."
    )
    devices: dict[str, ModbusDevice] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _breaker_bounds(self) -> ModbusConnection:
        if self.breaker_max_s < self.breaker_initial_s:
            raise ValueError("breaker_max_s must be >= breaker_initial_s")
        return self

    @property
    def target(self) -> str:
        """Where the connection goes, for messages."""
        raise NotImplementedError


class ModbusTcpConnection(ModbusConnection):
    """Modbus TCP (MBAP framing) to a device or a Modbus TCP gateway."""

    driver: Literal["modbus-tcp"] = Field(description="Modbus TCP.")
    host: str = Field(description="Device or gateway address.")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port.")

    @property
    def target(self) -> str:
        """host:port."""
        return f"{self.host}:{self.port}"


class ModbusRtuTcpConnection(ModbusConnection):
    """RTU frames over a TCP socket, through a transparent serial-to-Ethernet converter."""

    driver: Literal["modbus-rtu-tcp"] = Field(description="Modbus RTU over TCP.")
    host: str = Field(description="Converter address.")
    port: int = Field(default=502, ge=1, le=65535, description="Converter TCP port.")

    @property
    def target(self) -> str:
        """host:port."""
        return f"{self.host}:{self.port}"


class ModbusRtuConnection(ModbusConnection):
    """Modbus RTU on a serial port (an RS-485 bus with one or more units)."""

    driver: Literal["modbus-rtu"] = Field(description="Modbus RTU on a serial port.")
    port: str = Field(description="Serial device, e.g. /dev/ttyUSB0 (prefer /dev/serial/by-id).")
    baudrate: int = Field(default=9600, gt=0, description="Bits per second.")
    bytesize: Literal[7, 8] = Field(default=8, description="Data bits.")
    parity: Literal["N", "E", "O"] = Field(default="N", description="Parity: none, even, odd.")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits.")

    @property
    def target(self) -> str:
        """The serial port."""
        return self.port
